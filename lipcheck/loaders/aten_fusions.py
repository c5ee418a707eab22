"""Composite torch functions that torch.export spells out op by op, recognised in the FX
graph and lowered as one IR node (so their bound is the op's, not a product of Pow/Div
that are unbounded on their own).

F.local_response_norm(x, size, alpha, beta, k) exports as
x / (k + alpha * avg_pool(pad(x*x over channels)))^beta: matched from the division back;
every intermediate value must have that one consumer. Only odd sizes fuse (torch pads
size//2 channels before, ONNX's LRN (size-1)//2: the same window only when size is odd).

Core ATen's attention guards fully masked rows: where(all(s == -inf, -1), 0, softmax(s)).
For scores s that are finite (no row masked whole: the loader's output check compares
with torch) that is softmax(s): the guard becomes an Identity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import torch.fx as fx

from lipcheck.graph import OpKind
from lipcheck.loaders.aten_registry import args

PASS_THROUGH = {"aten.view.default", "aten.reshape.default", "aten.squeeze.dim",
                "aten.squeeze.dims", "aten.unsqueeze.default"}
PADS = {"aten.pad.default", "aten.constant_pad_nd.default"}
POOLS = {"aten.avg_pool2d.default", "aten.avg_pool3d.default"}


@dataclass
class Fusion:
    op: OpKind
    input: fx.Node
    attrs: dict[str, Any]
    covered: set[str] = field(default_factory=set)  # FX nodes the fused node replaces


def _is(node: Any, *targets: str) -> TypeGuard[fx.Node]:
    return isinstance(node, fx.Node) and node.op == "call_function" and \
        str(node.target) in targets and len(node.users) == 1


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _window(pool: fx.Node, pad: fx.Node) -> int | None:
    """The channel window size when the pool averages `size` channels with stride 1 over a
    zero padding of (size//2, (size-1)//2), else None."""
    a, p = args(pool), args(pad)
    kernel, stride = list(a["kernel_size"]), list(a["stride"] or a["kernel_size"])
    size = int(kernel[0])
    if any(int(k) != 1 for k in kernel[1:]) or any(int(s) != 1 for s in stride) or \
            any(int(v) != 0 for v in ([a["padding"]] if isinstance(a["padding"], int)
                                      else a["padding"])) or not a["count_include_pad"] or \
            a.get("divisor_override") is not None or a["ceil_mode"]:
        return None
    amounts = list(p["pad"])
    if any(int(v) != 0 for v in amounts[:-2]) or amounts[-2:] != [size // 2, (size - 1) // 2]:
        return None
    if p.get("mode", "constant") != "constant" or float(p.get("value") or 0.0) != 0.0:
        return None
    return size if size % 2 else None


def _lrn(div: fx.Node) -> Fusion | None:
    if str(div.target) != "aten.div.Tensor" or len(div.args) != 2:
        return None
    x, power = div.args
    if not isinstance(x, fx.Node) or not _is(power, "aten.pow.Tensor_Scalar") or \
            _number(power.args[1]) is None:
        return None
    add = power.args[0]
    if not _is(add, "aten.add.Tensor") or _number(add.args[1]) is None or add.kwargs:
        return None
    scale = add.args[0]
    if not _is(scale, "aten.mul.Tensor") or _number(scale.args[1]) is None:
        return None
    chain, node = [power, add, scale], scale.args[0]
    while _is(node, *(PASS_THROUGH | PADS | POOLS)):
        chain.append(node)
        node = node.args[0]
    pools = [n for n in chain if str(n.target) in POOLS]
    pads = [n for n in chain if str(n.target) in PADS]
    if not _is(node, "aten.mul.Tensor") or node.args != (x, x) or len(pools) != 1 or \
            len(pads) != 1:
        return None
    size = _window(pools[0], pads[0])
    if size is None:
        return None
    attrs = {"size": size, "alpha": _number(scale.args[1]), "beta": _number(power.args[1]),
             "bias": _number(add.args[1])}
    return Fusion(OpKind.LRN, x, attrs, {n.name for n in chain} | {node.name})


def _masked_row_guard(where: fx.Node) -> Fusion | None:
    if str(where.target) != "aten.where.self" or len(where.args) != 3:
        return None
    condition, zeros, soft = where.args
    if not (_is(condition, "aten.logical_not.default") and _is(zeros, "aten.full_like.default")
            and isinstance(soft, fx.Node) and str(soft.target) == "aten._softmax.default"
            and zeros.args[0] is soft and _number(zeros.args[1]) == 0.0):
        return None
    chain = [condition, zeros]
    node = condition.args[0]
    for target in ("aten.any.dim", "aten.logical_not.default", "aten.eq.Scalar"):
        if not _is(node, target):
            return None
        chain.append(node)
        node = node.args[0]
    eq = chain[-1]
    if eq.args[0] is not soft.args[0] or eq.args[1] != -math.inf:
        return None
    return Fusion(OpKind.IDENTITY, soft, {}, {n.name for n in chain})


def find_fusions(graph: fx.Graph) -> dict[str, Fusion]:
    """The fusions in the graph, by the name of the FX node whose value each produces."""
    found = {}
    for node in graph.nodes:
        if node.op == "call_function":
            fusion = _lrn(node) or _masked_row_guard(node)
            if fusion is not None:
                found[node.name] = fusion
    return found
