"""Elementwise arithmetic (with ONNX broadcasting), softmax, reductions, and the ops
that run but are not globally Lipschitz.

Broadcasting copies each entry of a smaller input into f = numel(out)/numel(in)
output entries, which multiplies that input's contribution by sqrt(f); every bound
below includes that factor (it is 1 without broadcasting).
"""
from __future__ import annotations

import math

import torch

from lipcheck.graph import Node, OpKind
from lipcheck.rules.registry import (
    BoundContext,
    Merge,
    NodeBound,
    Rule,
    analytic,
    constant_bound,
    constant_input,
    register,
    unary,
    unbounded,
)

FAMILY = "arithmetic"
MARGIN = 1 + 1e-12


def _broadcast_factor(node: Node, positions: list[int]) -> float:
    out = math.prod(node.output_shapes[0])
    worst = max(out // max(1, math.prod(node.input_shapes[i])) for i in positions)
    return math.sqrt(worst)


def _merged(node: Node, ctx: BoundContext, merge: Merge, scale: float = 1.0) -> NodeBound:
    dynamic = ctx.dynamic(node)
    factor = _broadcast_factor(node, dynamic)
    return analytic(scale * factor, merge if len(dynamic) > 1 else Merge.SINGLE,
                    f"{merge.value} of the inputs, broadcast factor {factor:.4g}")


def _variadic(fn):
    def run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = inputs[0]
        for other in inputs[1:]:
            out = fn(out, other)
        return [out]
    return run


def _sum_bound(node: Node, ctx: BoundContext) -> NodeBound:
    return _merged(node, ctx, Merge.SUM)


def _mean_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [_variadic(torch.add)(node, inputs)[0] / len(inputs)]


def _mean_bound(node: Node, ctx: BoundContext) -> NodeBound:
    return _merged(node, ctx, Merge.SUM, 1.0 / len(node.inputs))


def _extremum_bound(node: Node, ctx: BoundContext) -> NodeBound:
    # |max_i a_i - max_i b_i| <= max_i |a_i - b_i| <= sqrt(sum_i (a_i - b_i)^2)
    return _merged(node, ctx, Merge.RSS)


def _reduce_to(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Sum a broadcast tensor back onto `shape` (the adjoint of broadcasting)."""
    lead = t.dim() - len(shape)
    t = t.sum(dim=tuple(range(lead))) if lead > 0 else t
    dims = tuple(i for i, s in enumerate(shape) if s == 1 and t.shape[i] != 1)
    return t.sum(dim=dims, keepdim=True) if dims else t


def _scaling_bound(node: Node, ctx: BoundContext, scale: torch.Tensor) -> NodeBound:
    """y = x * s (broadcast): ||J||^2 = max over x entries of the sum of s_j^2 it meets."""
    (position,) = ctx.dynamic(node)
    s2 = torch.broadcast_to(scale.double(), node.output_shapes[0]) ** 2
    value = math.sqrt(float(_reduce_to(s2, tuple(node.input_shapes[position])).max()))
    if not math.isfinite(value):
        return unbounded("division by a constant that contains 0")
    return NodeBound(value=value * MARGIN, method="analytic", certified=True,
                     detail="elementwise scaling by a constant (exact)")


def _mul_bound(node: Node, ctx: BoundContext) -> NodeBound:
    dynamic = ctx.dynamic(node)
    if len(dynamic) != 1:
        return unbounded("product of two input-dependent signals")
    return _scaling_bound(node, ctx, constant_input(node, ctx, 1 - dynamic[0]))


def _div_bound(node: Node, ctx: BoundContext) -> NodeBound:
    if ctx.dynamic(node) != [0]:
        return unbounded("division by an input-dependent signal")
    return _scaling_bound(node, ctx, 1.0 / constant_input(node, ctx, 1).double())


def _softmax_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.softmax(inputs[0], dim=int(node.attrs.get("axis", -1)))]


def _log_softmax_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.log_softmax(inputs[0], dim=int(node.attrs.get("axis", -1)))]


def _axis_length(node: Node) -> int:
    shape = node.input_shapes[0]
    return int(shape[int(node.attrs.get("axis", -1))]) if shape else 1


def _softmax_bound(node: Node, ctx: BoundContext) -> NodeBound:
    # J = diag(p) - p p^T is symmetric PSD; Gershgorin: row i sums to
    # p_i(1-p_i) + p_i(1-p_i) = 2 p_i(1-p_i) <= 1/2. Attained at p = (1/2, 1/2, 0, ...),
    # where J has eigenvalue 1/2 (eigenvector (1, -1, 0, ...)). Independent slices
    # along other axes give a block-diagonal Jacobian: same norm. n = 1: constant.
    n = _axis_length(node)
    return analytic(0.5 if n > 1 else 0.0, detail="sup ||diag(p) - pp^T|| = 1/2")


def _log_softmax_bound(node: Node, ctx: BoundContext) -> NodeBound:
    # J = I - 1 p^T is affine in p, so ||J|| is convex in p and its sup over the
    # simplex is at a vertex p = e_k: I - 1 e_k^T, whose norm is sqrt(n) (a star-graph
    # Laplacian structure: J^T J = I + (n - 1) e_k e_k^T - e_k (1 - e_k)^T - ...,
    # largest eigenvalue n). Approached as one logit dominates.
    n = _axis_length(node)
    return analytic(math.sqrt(n) * MARGIN if n > 1 else 0.0, detail=f"sqrt(n), n={n}")


def _reduce_axes(node: Node, rank: int) -> tuple[int, ...] | None:
    """Reduced axes; None means no reduction (noop_with_empty_axes)."""
    axes = node.attrs.get("axes")
    if not axes:
        return None if node.attrs.get("noop_with_empty_axes", 0) else tuple(range(rank))
    return tuple(sorted(int(a) + rank if int(a) < 0 else int(a) for a in axes))


def _reduction(fn):
    def run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        x = inputs[0]
        axes = _reduce_axes(node, x.dim())
        if axes is None:
            return [x]
        keep = bool(node.attrs.get("keepdims", 1))
        return [fn(x, axes, keep) if axes else x]
    return run


def _reduced_count(node: Node) -> int:
    shape = node.input_shapes[0]
    axes = _reduce_axes(node, len(shape))
    return 1 if axes is None else math.prod(shape[a] for a in axes)


def _reduce_mean_bound(node: Node, ctx: BoundContext) -> NodeBound:
    n = _reduced_count(node)
    return analytic(1 / math.sqrt(n) * MARGIN if n else 0.0, detail=f"mean of {n}: 1/sqrt(n)")


def _reduce_sum_bound(node: Node, ctx: BoundContext) -> NodeBound:
    n = _reduced_count(node)
    return analytic(math.sqrt(n) * MARGIN, detail=f"sum of {n}: sqrt(n)")


def _reduce_max(x: torch.Tensor, axes: tuple[int, ...], keep: bool) -> torch.Tensor:
    return x.amax(dim=axes, keepdim=keep)


def _reduce_min(x: torch.Tensor, axes: tuple[int, ...], keep: bool) -> torch.Tensor:
    return x.amin(dim=axes, keepdim=keep)


def _reduce_l2(x: torch.Tensor, axes: tuple[int, ...], keep: bool) -> torch.Tensor:
    return torch.sqrt((x * x).sum(dim=axes, keepdim=keep))


register(Rule(OpKind.ADD, FAMILY, _variadic(torch.add), _sum_bound,
              "1 (sum of the inputs' constants when both are dynamic) x sqrt(broadcast factor)",
              affine=True))
register(Rule(OpKind.SUB, FAMILY, _variadic(torch.sub), _sum_bound,
              "as Add", affine=True))
register(Rule(OpKind.SUM, FAMILY, _variadic(torch.add), _sum_bound, "as Add", affine=True))
register(Rule(OpKind.MEAN, FAMILY, _mean_run, _mean_bound, "Add with c = 1/k", affine=True))
register(Rule(OpKind.MAX, FAMILY, _variadic(torch.maximum), _extremum_bound,
              "sqrt(sum L_i^2) (|max a - max b| <= max |a - b|) x sqrt(broadcast factor)"))
register(Rule(OpKind.MIN, FAMILY, _variadic(torch.minimum), _extremum_bound, "as Max"))
register(Rule(OpKind.MUL, FAMILY, _variadic(torch.mul), _mul_bound,
              "by a constant: sqrt(max sum of c^2 met by one entry) = max|c| without "
              "broadcasting (exact); of two dynamic inputs: unbounded", affine=True))
register(Rule(OpKind.DIV, FAMILY, _variadic(torch.div), _div_bound,
              "by a constant: as Mul with 1/c; by a dynamic input: unbounded", affine=True))
register(Rule(OpKind.SOFTMAX, FAMILY, _softmax_run, _softmax_bound, "1/2 (exact sup)"))
register(Rule(OpKind.LOG_SOFTMAX, FAMILY, _log_softmax_run, _log_softmax_bound,
              "sqrt(n) for axis length n (sup at a simplex vertex)"))
register(Rule(OpKind.REDUCE_MEAN, FAMILY,
              _reduction(lambda x, a, k: x.mean(dim=a, keepdim=k)), _reduce_mean_bound,
              "1/sqrt(n) for n reduced entries (exact)", affine=True))
register(Rule(OpKind.REDUCE_SUM, FAMILY,
              _reduction(lambda x, a, k: x.sum(dim=a, keepdim=k)), _reduce_sum_bound,
              "sqrt(n) for n reduced entries (exact)", affine=True))
register(Rule(OpKind.REDUCE_MAX, FAMILY, _reduction(_reduce_max),
              constant_bound(1.0, "max over disjoint groups"), "1"))
register(Rule(OpKind.REDUCE_MIN, FAMILY, _reduction(_reduce_min),
              constant_bound(1.0, "min over disjoint groups"), "1"))
register(Rule(OpKind.REDUCE_L2, FAMILY, _reduction(_reduce_l2),
              constant_bound(1.0, "l2 norm of disjoint groups"), "1 (a norm is 1-Lipschitz)"))

# --- run, but not globally Lipschitz -------------------------------------------------


def _never(reason: str):
    def bound(node: Node, ctx: BoundContext) -> NodeBound:
        return unbounded(reason)
    return bound


def _pow_bound(node: Node, ctx: BoundContext) -> NodeBound:
    exponent = ctx.const(node, 1)
    if ctx.dynamic(node) == [0] and exponent is not None and bool((exponent == 1).all()):
        return _merged(node, ctx, Merge.SUM)
    return unbounded("Pow is not globally Lipschitz (unless the exponent is exactly 1)")


for _op, _fn, _why in [
        (OpKind.EXP, torch.exp, "Exp grows without bound"),
        (OpKind.LOG, torch.log, "Log's slope is unbounded near 0"),
        (OpKind.SQRT, torch.sqrt, "Sqrt's slope is unbounded near 0"),
        (OpKind.RECIPROCAL, torch.reciprocal, "1/x's slope is unbounded near 0")]:
    register(Rule(_op, FAMILY, unary(_fn), _never(_why), _why))
register(Rule(OpKind.POW, FAMILY, _variadic(torch.pow), _pow_bound,
              "unbounded unless the exponent is the constant 1"))
