"""The network as a float64 function of flat input vectors, for the lower-bound search.

`NetFunction(graph)(x)` runs the graph on the concatenation of all graph inputs
(flattened, in order) and returns the concatenation of all outputs, in float64.
`fn.batch(X)` does the same for each row of X (B, n_in) -> (B, n_out): in one run
of the graph with a leading batch dimension B when the graph allows it (every input
has leading dimension 1, Reshape shapes that start with 1 get B, and a 3-row trial
agrees with the row-by-row results to rounding), row by row otherwise.

With `smoothing` set, kinked activations (Relu, LeakyRelu, PRelu, Abs, Clip) run as
softplus-smoothed versions, so that the Jacobian norm has a useful gradient in x
(it is piecewise constant for the exact network). The softening width is per batch
row, so a row's value does not depend on the other rows. Smoothed values are only
ever used to steer the search; every reported number comes from the exact network.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import cast

import torch
import torch.nn.functional as F

from lipcheck.errors import LipcheckError, UserError
from lipcheck.graph import Graph, Node, OpKind
from lipcheck.interpreter import run_node

Smooth = Callable[[Node, list[torch.Tensor], float | torch.Tensor], torch.Tensor]
TRIAL_ROWS = 3
TRIAL_RTOL = 1e-9


def _width(z: torch.Tensor, sharpness: float | torch.Tensor) -> torch.Tensor:
    """Softening width: the mean |pre-activation| of each batch row over the sharpness
    (a number, or one per batch row)."""
    dims = tuple(range(1, z.dim()))
    mean = z.detach().abs().mean(dim=dims, keepdim=True) if dims else z.detach().abs().mean()
    if isinstance(sharpness, torch.Tensor) and dims:
        sharpness = sharpness.reshape(-1, *([1] * len(dims)))
    return (mean / sharpness).clamp_min(1e-12)


def soft_relu(z: torch.Tensor, sharpness: float | torch.Tensor) -> torch.Tensor:
    w = _width(z, sharpness)
    return F.softplus(z / w) * w


def _leaky(node: Node, args: list[torch.Tensor], k: float | torch.Tensor) -> torch.Tensor:
    alpha = float(node.attrs.get("alpha", 0.01))
    return alpha * args[0] + (1 - alpha) * soft_relu(args[0], k)


def _prelu(node: Node, args: list[torch.Tensor], k: float | torch.Tensor) -> torch.Tensor:
    z, slope = args
    return slope * z + (1 - slope) * soft_relu(z, k)


def _clip(node: Node, args: list[torch.Tensor], k: float | torch.Tensor) -> torch.Tensor:
    z, lo, hi = args[0], node.attrs.get("min"), node.attrs.get("max")
    out = z if lo is None else lo + soft_relu(z - lo, k)
    return out if hi is None else out - soft_relu(out - hi, k)


def _max_pool(node: Node, args: list[torch.Tensor], k: float | torch.Tensor) -> torch.Tensor:
    """w * logsumexp(window / w): a smooth maximum over each pooling window (no
    dilation; with dilation the exact max pool runs)."""
    from lipcheck.rules.pooling import Geometry, _spatial
    x = args[0]
    g = Geometry(node, _spatial(x))
    if any(d != 1 for d in g.dilations):
        return run_node(node, list(args))[0]
    windows = F.pad(x, g.torch_pads(), value=-math.inf)
    for axis, (size, step) in enumerate(zip(g.kernel, g.strides, strict=False)):
        windows = windows.unfold(2 + axis, size, step)
    windows = windows.flatten(start_dim=x.dim())
    w = _width(x, k).reshape(-1, *([1] * (windows.dim() - 1)))
    return torch.logsumexp(windows / w, dim=-1) * w.squeeze(-1)


SMOOTH: dict[OpKind, Smooth] = {
    OpKind.MAX_POOL: _max_pool,
    OpKind.RELU: lambda node, args, k: soft_relu(args[0], k),
    OpKind.LEAKY_RELU: _leaky,
    OpKind.PRELU: _prelu,
    OpKind.ABS: lambda node, args, k: soft_relu(args[0], k) + soft_relu(-args[0], k),
    OpKind.CLIP: _clip,
}


def _batched_nodes(nodes: list[Node], lead: int) -> list[Node] | None:
    """Copies whose Reshape shapes that start with the model's own leading dimension
    `lead` take "B" instead (rows x lead, resolved per call); None when a Reshape fixes
    the leading dimension to anything else."""
    out = []
    for node in nodes:
        if node.op == OpKind.RESHAPE:
            shape = [int(s) for s in node.attrs["shape"]]
            if not shape or shape[0] not in (lead, -1):
                return None
            if shape[0] == lead:
                node = replace(node, attrs={**node.attrs, "shape": ["B", *shape[1:]]})
        out.append(node)
    return out


def _leading(shapes: list[tuple[int, ...]]) -> int | None:
    """The leading dimension every input shares (the model's own batch), if any."""
    leads = {s[0] for s in shapes if s}
    return leads.pop() if len(leads) == 1 and all(shapes) else None


class NetFunction:
    """x (flat, float64) -> concatenated outputs (flat, float64); rows with `batch`.

    A model whose inputs share a fixed leading dimension N (its own batch: 1, or 2 as in
    many exported test models) runs B rows as one batch of B x N; any op that does not
    treat that dimension as a batch fails the trial and the rows run one at a time."""

    def __init__(self, graph: Graph, trial: bool = True) -> None:
        """`trial`: try the batched plan (off for a model too large for the trial's
        dozen forward passes to pay off: its rows then run one at a time)."""
        for info in graph.inputs:
            if not info.dtype.is_floating_point:
                raise NonFloatInput(info.name, info.dtype)
        self.graph = graph
        self.shapes = [tuple(info.shape) for info in graph.inputs]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.n_in = sum(self.sizes)
        self.lead = _leading(self.shapes)
        self.constants = {k: v.double() if v.is_floating_point() else v
                          for k, v in graph.constants.items()}
        self.smoothing: float | torch.Tensor | None = None
        start = time.perf_counter()
        self.n_out = int(self.exact(torch.zeros(self.n_in, dtype=torch.float64)).numel())
        self.forward_s = time.perf_counter() - start   # one exact forward pass, measured
        self.row_numel = self.n_in + self.n_out + sum(
            math.prod(shape) for node in graph.nodes for shape in node.output_shapes)
        self.batched = self._batch_plan() if trial else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._one(x, self.smoothing)

    def batch(self, xs: torch.Tensor) -> torch.Tensor:
        """f for each row of xs (B, n_in) -> (B, n_out); differentiable."""
        if self.batched is None:
            return self._row_by_row(xs, self.smoothing)
        return self._run_rows(self.batched, xs, self.smoothing)

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        """The exact network at one point, without gradients."""
        with torch.no_grad():
            return self._one(x, None)

    def exact_batch(self, xs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.batched is None:
                return self._row_by_row(xs, None)
            return self._run_rows(self.batched, xs, None)

    def _one(self, x: torch.Tensor, smoothing: float | torch.Tensor | None) -> torch.Tensor:
        if isinstance(smoothing, torch.Tensor):
            smoothing = float(smoothing.reshape(-1)[0])
        parts = torch.split(x, self.sizes)
        feeds = [p.reshape(s) for p, s in zip(parts, self.shapes, strict=True)]
        outs = self._run_graph(self.graph.nodes, feeds, 1, smoothing)
        return torch.cat([y.reshape(-1) for y in outs])

    def _row_by_row(self, xs: torch.Tensor,
                    smoothing: float | torch.Tensor | None) -> torch.Tensor:
        """Each row alone, with its own smoothing (a number per row when given per row)."""
        if isinstance(smoothing, torch.Tensor):
            values = smoothing.reshape(-1).expand(len(xs)) if smoothing.numel() == 1 else smoothing
            rows = zip(xs, values, strict=False)
            return torch.stack([self._one(x, float(k)) for x, k in rows])
        return torch.stack([self._one(x, smoothing) for x in xs])

    def _run_rows(self, nodes: list[Node], xs: torch.Tensor,
                  smoothing: float | torch.Tensor | None) -> torch.Tensor:
        rows, lead = xs.shape[0], self.lead
        assert lead is not None, "a batched plan needs the inputs' shared leading dimension"
        parts = torch.split(xs, self.sizes, dim=1)
        feeds = [p.reshape(rows * lead, *s[1:]) for p, s in zip(parts, self.shapes, strict=True)]
        if isinstance(smoothing, torch.Tensor) and smoothing.numel() > 1:
            smoothing = smoothing.repeat_interleave(lead)   # one per row of the model's batch
        outs = self._run_graph(nodes, feeds, rows * lead, smoothing)
        return torch.cat([y.reshape(rows, -1) for y in outs], dim=1)

    def _run_graph(self, nodes: list[Node], feeds: list[torch.Tensor], rows: int,
                   smoothing: float | torch.Tensor | None) -> list[torch.Tensor]:
        env = dict(self.constants)
        env.update((info.name, f) for info, f in zip(self.graph.inputs, feeds, strict=True))
        for node in nodes:
            if node.op == OpKind.RESHAPE and node.attrs["shape"][0] == "B":
                shape = [rows, *node.attrs["shape"][1:]]
                node = replace(node, attrs={**node.attrs, "shape": shape})
            args = [env[v] if v else None for v in node.inputs]
            env.update(zip(node.outputs, self._run(node, args, smoothing), strict=False))
        return [env[name] for name in self.graph.outputs]

    @staticmethod
    def _run(node: Node, args: list[torch.Tensor | None],
             smoothing: float | torch.Tensor | None) -> list[torch.Tensor]:
        smooth = SMOOTH.get(node.op)
        if smoothing is None or smooth is None:
            return run_node(node, args)
        # the smoothed ops read only required inputs (the data, PRelu's slope): never None
        return [smooth(node, cast(list[torch.Tensor], args), smoothing)]


    def _batch_plan(self) -> list[Node] | None:
        """The batched node list when a trial on TRIAL_ROWS rows matches row by row, for
        the exact network and for the smoothed one with a different width per row."""
        nodes = None if self.lead is None else _batched_nodes(self.graph.nodes, self.lead)
        if nodes is None:
            return None
        gen = torch.Generator().manual_seed(0)
        xs = torch.randn(TRIAL_ROWS, self.n_in, generator=gen, dtype=torch.float64)
        sharp = torch.arange(1, TRIAL_ROWS + 1, dtype=torch.float64) * 3.0
        smooths = [None] + ([sharp] if any(n.op in SMOOTH for n in nodes) else [])
        try:
            with torch.no_grad():
                return nodes if all(self._agrees(nodes, xs, s) for s in smooths) else None
        except (LipcheckError, RuntimeError, ValueError, IndexError, TypeError):
            return None

    def _agrees(self, nodes: list[Node], xs: torch.Tensor, smoothing: torch.Tensor | None) -> bool:
        rows = self._run_rows(nodes, xs, smoothing)
        ref = self._row_by_row(xs, smoothing)
        if rows.shape != ref.shape or not bool(torch.isfinite(ref).all()):
            return False
        return float((rows - ref).abs().max()) <= TRIAL_RTOL * float(ref.abs().max())


class NonFloatInput(UserError):
    """A graph input the search cannot vary continuously (integer indices, booleans)."""

    code = "non_float_input"

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.input_name, self.dtype = name, dtype
        super().__init__(f"lower bound: graph input {name!r} has dtype {dtype}, "
                         "the search needs floating-point inputs")
