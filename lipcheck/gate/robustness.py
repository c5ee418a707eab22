"""Certified L2 robustness radii on data, from logit margins and Lipschitz bounds.

For a sample x with predicted class c and margins m_j = f_c(x) - f_j(x), the prediction
cannot change within the L2 ball of radius min_j m_j / K_cj, where K_cj is an upper bound
of the Lipschitz constant of f_c - f_j:

- global rule: K_cj = sqrt(2) L, with L a bound of the whole network (||e_c - e_j|| = sqrt 2);
- per-class-pair rule: when the output is exactly a last affine layer y = M h + b (only
  identity-like ops after it), f_c - f_j = (M_c - M_j) h + const, so
  K_cj = ||M_c - M_j|| * L(h), with L(h) the certified AutoLip running bound at that
  layer's input. Both are valid; the smaller is used, pair by pair.

A radius is certified only when every bound it uses is; otherwise it is reported as an
estimate. The network is evaluated in float64 on the float32 weights (the function the
bounds are about). A sample counts as certified at eps when it is classified correctly
and its radius is larger than eps.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lipcheck.errors import ShapeError, UserError
from lipcheck.gate.checks import headline
from lipcheck.graph import Graph, Node, OpKind
from lipcheck.interpreter import run_graph
from lipcheck.local_certify import LocalRobustness, certify_local
from lipcheck.report import Report

IDENTITY_LIKE = (OpKind.IDENTITY, OpKind.DROPOUT)
REORDER_FREE = (OpKind.RESHAPE, OpKind.FLATTEN, OpKind.SQUEEZE, OpKind.UNSQUEEZE)


@dataclass
class Robustness:
    """Certified radii of a data set and the accuracies they give."""

    n: int
    clean_accuracy: float
    eps: float | None
    certified_accuracy: float | None
    radii: np.ndarray     # certified radius w.r.t. the label (0 when misclassified)
    method: str           # "per-class-pair" or "global"
    certified: bool       # False: the radii rest on an estimate, not a certified bound
    lipschitz: float      # the global bound used
    seconds: float = 0.0
    certified_accuracy_global: float | None = None  # from the global constants alone
    local: LocalRobustness | None = None            # from local constants on each ball

    @property
    def median_radius(self) -> float:
        return float(np.median(self.radii)) if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "clean_accuracy": self.clean_accuracy, "eps": self.eps,
                "certified_accuracy": self.certified_accuracy, "method": self.method,
                "certified": self.certified, "lipschitz": _finite(self.lipschitz),
                "median_radius": self.median_radius, "seconds": round(self.seconds, 6),
                "radii": [round(float(r), 8) if math.isfinite(r) else None for r in self.radii],
                **({} if self.local is None else {
                    "certified_accuracy_global": self.certified_accuracy_global,
                    "local": self.local.to_dict()})}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def load_data(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays `x` (samples first) and `y` (integer labels) from an .npz file."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise UserError(f"--data {path}: missing array(s) {', '.join(missing)} "
                                f"(found {', '.join(archive.files) or 'none'})")
            x, y = archive["x"], archive["y"]
    except (OSError, ValueError) as exc:
        raise UserError(f"--data {path}: not a readable .npz file ({exc})") from None
    return _validated(x, y, str(path))


def _validated(x: np.ndarray, y: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    if y.ndim != 1 or x.shape[:1] != y.shape or not len(y):
        raise UserError(f"--data {source}: y must be 1-d with one label per row of x "
                        f"(x {x.shape}, y {y.shape})")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise UserError(f"--data {source}: labels y must be integers")
    if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
        raise UserError(f"--data {source}: x must be finite numbers")
    return x.astype(np.float64), y.astype(np.int64)


def predict(graph: Graph, x: np.ndarray) -> torch.Tensor:
    """The first graph output for every sample, (N, outputs per sample), in float64."""
    if len(graph.inputs) != 1:
        raise UserError("--data works with single-input models only")
    info = graph.inputs[0]
    batch, rest = info.shape[0], tuple(info.shape[1:])
    if math.prod(x.shape[1:]) != math.prod(rest):
        raise ShapeError(f"--data: samples of shape {tuple(x.shape[1:])} do not fit the input "
                         f"{info.name!r} of shape {tuple(info.shape)}")
    n = x.shape[0]
    padded = -(-n // batch) * batch
    xs = torch.zeros((padded, *rest), dtype=torch.float64)
    xs[:n] = torch.from_numpy(x).reshape(n, *rest)
    groups = xs.reshape(padded // batch, batch, *rest)

    def one(group: torch.Tensor) -> torch.Tensor:
        out = run_graph(graph, {info.name: group}, dtype=torch.float64)
        return out[graph.outputs[0]].reshape(batch, -1)
    return _batched(one, groups).reshape(padded, -1)[:n]


def _batched(fn, groups: torch.Tensor) -> torch.Tensor:
    """vmap over the groups when every op allows it (checked on the first), else a loop."""
    first = fn(groups[0])
    try:
        out = torch.func.vmap(fn)(groups)
        if torch.allclose(out[0], first, rtol=1e-9, atol=1e-12):
            return out
    except Exception:  # an op that vmap cannot trace: fall back to the plain loop
        pass
    return torch.stack([first] + [fn(g) for g in groups[1:]])


def last_affine(graph: Graph) -> tuple[Node, np.ndarray] | None:
    """The affine node whose output is the graph's first output, and its matrix M (C, n_in)."""
    producers = graph.producers()
    node = producers.get(graph.outputs[0])
    batch_one = graph.inputs[0].shape[:1] == (1,)
    while node is not None and (node.op in IDENTITY_LIKE or
                                (batch_one and node.op in REORDER_FREE)):
        dynamic = graph.dynamic_inputs(node)
        node = producers.get(node.inputs[dynamic[0]]) if len(dynamic) == 1 else None
    if node is None or graph.dynamic_inputs(node) != [0] or len(node.input_shapes[0]) != 2:
        return None
    matrix = _affine_matrix(graph, node)
    return (node, matrix) if matrix is not None else None


def _affine_matrix(graph: Graph, node: Node) -> np.ndarray | None:
    weight = graph.constant(node, 1)
    if weight is None or weight.dim() != 2:
        return None
    w = weight.detach().double().numpy()
    if node.op == OpKind.MATMUL:
        return w.T
    if node.op != OpKind.GEMM or node.attrs.get("transA", 0):
        return None
    w = w.T if node.attrs.get("transB", 0) else w
    return float(node.attrs.get("alpha", 1.0)) * w.T


def running_at(graph: Graph, report: Report, value: str) -> tuple[float, bool]:
    """AutoLip's running bound of a value, and whether every node it rests on is certified."""
    if value in {v.name for v in graph.inputs}:
        return 1.0, True
    layers = {layer.name: layer for layer in report.layers}
    producers = graph.producers()
    ancestors, stack = set(), [value]
    while stack:
        node = producers.get(stack.pop())
        if node is not None and node.name not in ancestors:
            ancestors.add(node.name)
            stack.extend(node.inputs)
    producer = producers.get(value)
    if producer is None or producer.name not in layers:
        return math.inf, False
    certified = all(layers[n].certified for n in ancestors if n in layers)
    return layers[producer.name].running, certified


def pair_bounds(graph: Graph, report: Report, classes: int) -> tuple[np.ndarray, bool] | None:
    """K_cj = ||M_c - M_j|| * L(input of the last affine layer), when the rule applies."""
    found = last_affine(graph)
    if found is None:
        return None
    node, matrix = found
    if matrix.shape[0] != classes:
        return None
    lip_in, certified = running_at(graph, report, node.inputs[0])
    if not math.isfinite(lip_in):
        return None
    diffs = np.linalg.norm(matrix[:, None, :] - matrix[None, :, :], axis=2)
    return diffs * lip_in * (1 + 1e-12), certified


def lipschitz_matrix(graph: Graph, report: Report,
                     classes: int) -> tuple[np.ndarray, str, bool, float]:
    """(K, method, certified, global L): the tightest valid bound of Lip(f_c - f_j)."""
    lip, certified = headline(report)
    k = np.full((classes, classes), math.sqrt(2) * lip)
    method = "global"
    pairs = pair_bounds(graph, report, classes)
    if pairs is not None and (pairs[1] or not certified):
        k_pair, pair_certified = pairs
        if pair_certified and not certified:
            k, certified = k_pair, True
        else:
            k = np.minimum(k, k_pair)
        method = "per-class-pair"
    return k, method, certified, lip


def radii(logits: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, radius of the prediction) for every row of logits."""
    pred = logits.argmax(axis=1)
    top = logits[np.arange(len(pred)), pred]
    margins = top[:, None] - logits
    bounds = k[pred]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bounds > 0, margins / bounds, np.where(margins > 0, np.inf, 0.0))
    ratio[np.arange(len(pred)), pred] = np.inf
    return pred, np.maximum(ratio.min(axis=1), 0.0)


def certify(graph: Graph, report: Report, x: np.ndarray, y: np.ndarray,
            eps: float | None = None, local: bool = True, bab_domains: int = 0,
            sdp_margins: int = 0) -> Robustness:
    """Clean accuracy, certified radii and (at eps) certified accuracy on (x, y); with
    `local`, a sample also counts when local constants on B(x, eps) certify it, or
    (`bab_domains` > 0) branch and bound on its margins with that many domains each, or
    (`sdp_margins` > 0) sdp-net constants of the margins left on its ball."""
    start = time.perf_counter()
    logits = predict(graph, x).numpy()
    classes = logits.shape[1]
    if y.min() < 0 or y.max() >= classes:
        raise UserError(f"--data: labels must lie in 0..{classes - 1} (the model has "
                        f"{classes} outputs), found {y.min()}..{y.max()}")
    k, method, certified, lip = lipschitz_matrix(graph, report, classes)
    pred, radius = radii(logits, k)
    correct = pred == y
    radius = np.where(correct, radius, 0.0)
    cert_acc = float(np.mean(correct & (radius > eps))) if eps is not None else None
    on_balls = (certify_local(graph, x, y, logits, eps, bab_domains=bab_domains,
                              sdp_margins=sdp_margins)
                if local and eps is not None else None)
    best = cert_acc
    if on_balls is not None and on_balls.certified is not None:
        best = float(np.mean((correct & (radius > eps)) | on_balls.certified))
    return Robustness(len(y), float(correct.mean()), eps, best, radius, method, certified,
                      lip, time.perf_counter() - start, cert_acc, on_balls)
