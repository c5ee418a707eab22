"""Normalisations with statistics computed from the input: Layer-, Instance-, Group- and
RMSNormalization (exact global constants) and LRN (a certified bound).

The centred family. Over one group of d entries (x in R^d), with P = I - 11^T/d the
centring projection, u = Px, sigma = sqrt(|u|^2/d + eps) and G = diag(g):

    y = G u / sigma + b,      J = G (P - z z^T) / sigma,   z = u / (sqrt(d) sigma).

z lies in range(P) and |z|^2 = var / (var + eps) < 1, so A = P - z z^T satisfies
0 <= A <= P <= I; its eigenvalues lie in [0, 1], hence A^2 <= A <= P and
||G A||^2 = lambda_max(G A^2 G) <= lambda_max(G P G) = ||G P||^2. With sigma >= sqrt(eps):
||J|| <= ||G P|| / sqrt(eps), with equality at every constant input (u = 0, z = 0,
sigma = sqrt(eps)). The function is C^1 on a convex domain, so this sup of ||J|| *is* the
Lipschitz constant: exact. RMSNormalization is the same with P replaced by I (no
centring): max|g| / sqrt(eps), attained at x = 0. Groups (samples, channels, positions)
are independent, so the layer's Jacobian is block diagonal and its norm is the max over
groups. eps = 0 makes them unbounded (the slope blows up near constant inputs).

||G P|| itself: the eigenvectors of P G^2 P orthogonal to 1 solve (G^2 - l) v = c 1, so the
eigenvalues are the values a = g_i^2 that repeat (eigenvectors inside their block) and the
roots of the secular equation f(l) = sum_k m_k / (a_k - l) = 0 (a_k the distinct values,
m_k their multiplicities). f increases between poles, so the largest eigenvalue is a_1 if
the largest value repeats, else the root in (a_2, a_1), bracketed by bisection in float64
(the upper end is used, with a relative margin); never above max g^2.
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
    register,
    unbounded,
)

FAMILY = "normalisation"
MARGIN = 1 + 1e-9
BISECTIONS = 200


def centred_scale_norm(g: torch.Tensor) -> float:
    """A certified upper bound on ||diag(g) P|| (P the centring projection), exact up to
    the margin. `g` holds the scale of each of the d entries of one group."""
    if g.numel() <= 1:
        return 0.0
    values, counts = torch.unique(g.double().reshape(-1) ** 2, return_counts=True)
    a, m = values.flip(0), counts.flip(0).double()
    if a.numel() == 1 or m[0] >= 2:
        return math.sqrt(float(a[0])) * MARGIN
    lo, hi = float(a[1]), float(a[0])
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if float((m / (a - mid)).sum()) > 0:
            hi = mid
        else:
            lo = mid
    return math.sqrt(min(hi, float(a[0]))) * MARGIN


def _epsilon(node: Node, default: float = 1e-5) -> float:
    return float(node.attrs.get("epsilon", default))


def _scale_rows(node: Node, ctx: BoundContext, groups_from: int) -> torch.Tensor | None:
    """The scale broadcast to the input shape, one row per normalisation group (distinct
    rows only): dims >= groups_from form a group."""
    scale = ctx.const(node, 1)
    if scale is None:
        return None
    shape = tuple(node.input_shapes[0])
    full = torch.broadcast_to(scale.double(), shape)
    rows = full.reshape(math.prod(shape[:groups_from]), -1)
    return torch.unique(rows, dim=0) if rows.shape[0] > 1 else rows


def _finish(node: Node, ctx: BoundContext, value: float, detail: str) -> NodeBound:
    """Checks the other inputs are constants; an input-dependent bias adds with slope 1."""
    dynamic = ctx.dynamic(node)
    if 1 in dynamic:
        return unbounded(f"{node.op.value} with an input-dependent scale is a product of "
                         "two signals")
    if dynamic == [0]:
        return analytic(value, detail=detail)
    out, bias = math.prod(node.output_shapes[0]), math.prod(node.input_shapes[2])
    factor = math.sqrt(out // max(1, bias))
    return analytic(max(value, factor), Merge.SUM, detail + f"; input-dependent bias x{factor:.4g}")


def _centred_bound(node: Node, ctx: BoundContext, groups_from: int, what: str) -> NodeBound:
    eps = _epsilon(node)
    rows = _scale_rows(node, ctx, groups_from)
    if rows is not None and rows.shape[1] <= 1:
        return _finish(node, ctx, 0.0, f"{what} over groups of 1 entry: constant output")
    if eps <= 0:
        return unbounded(f"{node.op.value} with epsilon = 0 divides by the input's spread")
    if rows is None:
        return _finish(node, ctx, math.inf, "")
    norm = max(centred_scale_norm(row) for row in rows)
    return _finish(node, ctx, norm / math.sqrt(eps) * MARGIN,
                   f"{what}: ||diag(g) P|| / sqrt(eps), d = {rows.shape[1]} (exact)")


# ----- LayerNormalization ----------------------------------------------------------
def _axis(node: Node, rank: int) -> int:
    return int(node.attrs.get("axis", -1)) % rank


def _normalise(x: torch.Tensor, first: int, eps: float) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the dims from `first` on."""
    dims = tuple(range(first, x.dim()))
    centred = x - x.mean(dim=dims, keepdim=True)
    return centred / torch.sqrt((centred * centred).mean(dim=dims, keepdim=True) + eps)


def _layer_norm_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x, scale = inputs[0], inputs[1]
    y = _normalise(x, _axis(node, x.dim()), _epsilon(node)) * scale
    return [y + inputs[2] if len(inputs) > 2 and inputs[2] is not None else y]


def _layer_norm_bound(node: Node, ctx: BoundContext) -> NodeBound:
    axis = _axis(node, len(node.input_shapes[0]))
    return _centred_bound(node, ctx, axis, "LayerNorm")


# ----- InstanceNormalization ----------------------------------------------------------
def _instance_norm_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x, scale, bias = inputs[:3]
    view = (1, -1) + (1,) * (x.dim() - 2)
    return [_normalise(x, 2, _epsilon(node)) * scale.reshape(view) + bias.reshape(view)]


def _instance_norm_bound(node: Node, ctx: BoundContext) -> NodeBound:
    # Group (n, c): the spatial entries, all scaled by g_c: ||g_c P|| = |g_c| for S >= 2.
    shape = node.input_shapes[0]
    scale = ctx.const(node, 1)
    if scale is not None:
        scale = scale.reshape((-1,) + (1,) * (len(shape) - 2))
    spatial = math.prod(shape[2:])
    if spatial <= 1:
        return _finish(node, ctx, 0.0, "InstanceNorm over 1 entry: constant output")
    if _epsilon(node) <= 0:
        return unbounded("InstanceNormalization with epsilon = 0 divides by the input's spread")
    if scale is None:
        return _finish(node, ctx, math.inf, "")
    value = float(scale.double().abs().max()) if scale.numel() else 0.0
    return _finish(node, ctx, value / math.sqrt(_epsilon(node)) * MARGIN,
                   "InstanceNorm: max|g_c| / sqrt(eps) (exact)")


# ----- GroupNormalization (scale and bias per channel: opset 21; the loader converts) --
def _group_norm_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x, scale, bias = inputs[:3]
    groups = int(node.attrs["num_groups"])
    y = _normalise(x.reshape(x.shape[0], groups, -1), 2, _epsilon(node)).reshape(x.shape)
    view = (1, -1) + (1,) * (x.dim() - 2)
    return [y * scale.reshape(view) + bias.reshape(view)]


def _group_norm_bound(node: Node, ctx: BoundContext) -> NodeBound:
    shape = tuple(node.input_shapes[0])
    groups = int(node.attrs["num_groups"])
    scale = ctx.const(node, 1)
    per_group = shape[1] // groups * math.prod(shape[2:])
    if per_group <= 1:
        return _finish(node, ctx, 0.0, "GroupNorm over groups of 1 entry: constant output")
    if _epsilon(node) <= 0:
        return unbounded("GroupNormalization with epsilon = 0 divides by the input's spread")
    if scale is None:
        return _finish(node, ctx, math.inf, "")
    spatial = math.prod(shape[2:])
    rows = scale.double().reshape(groups, -1).repeat_interleave(spatial, dim=1)
    norm = max(centred_scale_norm(row) for row in rows)
    return _finish(node, ctx, norm / math.sqrt(_epsilon(node)) * MARGIN,
                   f"GroupNorm: max over groups of ||diag(g) P|| / sqrt(eps), d = {per_group}")


# ----- RMSNormalization ---------------------------------------------------------------
def _rms_norm_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x, scale = inputs[0], inputs[1]
    dims = tuple(range(_axis(node, x.dim()), x.dim()))
    rms = torch.sqrt((x * x).mean(dim=dims, keepdim=True) + _epsilon(node))
    return [x / rms * scale]


def _rms_norm_bound(node: Node, ctx: BoundContext) -> NodeBound:
    # J = G (I - z z^T) / sigma with |z| < 1: ||J|| <= max|g| / sqrt(eps), equality at x = 0.
    if _epsilon(node) <= 0:
        return unbounded("RMSNormalization with epsilon = 0 divides by the input's size")
    rows = _scale_rows(node, ctx, _axis(node, len(node.input_shapes[0])))
    if rows is None:
        return _finish(node, ctx, math.inf, "")
    value = float(rows.abs().max()) if rows.numel() else 0.0
    return _finish(node, ctx, value / math.sqrt(_epsilon(node)) * MARGIN,
                   "RMSNorm: max|g| / sqrt(eps) (exact)")


register(Rule(OpKind.LAYER_NORM, FAMILY, _layer_norm_run, _layer_norm_bound,
              "||diag(g) P|| / sqrt(eps) <= max|g| / sqrt(eps), P the centring projection "
              "(exact: attained at a constant input); unbounded if eps = 0",
              derivation=__doc__))
register(Rule(OpKind.INSTANCE_NORM, FAMILY, _instance_norm_run, _instance_norm_bound,
              "max|g_c| / sqrt(eps) (exact, groups of >= 2 entries); unbounded if eps = 0",
              derivation=__doc__))
register(Rule(OpKind.GROUP_NORM, FAMILY, _group_norm_run, _group_norm_bound,
              "max over groups of ||diag(g) P|| / sqrt(eps) (exact); unbounded if eps = 0",
              derivation=__doc__))
register(Rule(OpKind.RMS_NORM, FAMILY, _rms_norm_run, _rms_norm_bound,
              "max|g| / sqrt(eps) (exact: attained at x = 0); unbounded if eps = 0",
              derivation=__doc__))
