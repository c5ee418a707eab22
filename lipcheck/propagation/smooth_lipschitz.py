"""Local Lipschitz factors of the smooth steps on their input ranges, and masked AutoLip over
a program that has them (`smooth_autolip`; the ranges: `smooth_ranges`).

Norms. Every value is a flat vector with the L2 norm (a matrix's Frobenius norm); on a
convex set S a map is Lipschitz with constant sup_S ||J(x)||_2 (mean value inequality;
Clarke Jacobians at ReLU kinks). L(v) bounds sup_S ||J_v(x)||_2, J_v the Jacobian of value
v with respect to the input, step by step (L(input) = 1):

- Product Z_b = X_a(b) Y_c(b) over the output's batch blocks b (a, c: the broadcast maps).
  Along a direction h, dZ_b = dX_a(b) Y_c(b) + X_a(b) dY_c(b) with dX = J_X h. With
  ||A B||_F <= ||A||_F ||B||_2, ||A B||_F <= ||A||_2 ||B||_F and Minkowski over b:
  ||dZ||_F <= sqrt(r_X) max_b ||Y_b||_2 ||dX||_F + sqrt(r_Y) max_b ||X_b||_2 ||dY||_F,
  r_X = (blocks of Z) / (blocks of X), how often one block of X is read. Hence
  L(Z) <= sqrt(r_X) max ||Y_b|| L(X) + sqrt(r_Y) max ||X_b|| L(Y). On the box of X,
  |X| <= M = max(|lo|, |hi|) entrywise, so ||X v|| <= ||M |v| || <= ||M||_2 ||v||: the
  spectral norm of M bounds every ||X_b||_2. When X is a softmax along its rows (A V in
  attention), also ||X||_2^2 <= ||X||_1 ||X||_inf = (largest column sum) * 1 <= the
  largest column sum of M.
- Softmax p = softmax(z) per slice: J = diag(p) - p p^T, and for every v,
  0 <= v^T J v = sum p_i v_i^2 - (p . v)^2 <= sum p_i v_i^2 (Cauchy-Schwarz with sum p = 1),
  so 0 <= J <= diag(p) and ||J|| <= max_i p_i; Gershgorin: ||J|| <= max_i 2 p_i (1 - p_i)
  <= 1/2. On the set p_i lies in [p_lo_i, p_hi_i] (the softmax range rule): the factor is
  min(max_i p_hi_i, max_i 2 q_i (1 - q_i)), q_i the point of [p_lo_i, p_hi_i] nearest
  1/2, per slice; slices are independent (block-diagonal J): the max over slices.
- LayerNorm over a group: J = G (P - z z^T) / sigma with ||G (P - z z^T)|| <= ||G P||
  (rules/normalization.py), sigma = sqrt(v + eps) >= sqrt(v_lo + eps), v_lo the smallest
  variance of the group on the set (from the range of the centred input); RMSNorm:
  J = G (I - z z^T) / sigma, |z| < 1, so max|g| / sqrt(v_lo + eps). The max over groups.
  With v_lo = 0 this is the global constant; a range that keeps the group away from
  constant gives less.
- Affine steps, composed back to the nearest non-affine value (`smooth_ranges.composed`):
  ||W|| L(base); when the base is an activation a with slopes d_i in [s_lo_i, s_hi_i] on
  the set and S_i = max |slope|, its Jacobian is S D' with ||D'|| <= 1, so
  ||W S|| L(input of a) (units dead on the set drop out, as in `masked.graph_masked`).
  Activations max S L, max pools their window factor, sums L(a) + L(b).
- Each value's L(v) is then the smaller of that step and the norm of v's Jacobian hull
  (`smooth_jacobian`: it bounds the same sup ||J_v||), so the next steps start from it.
- Elementwise steps (`pointwise`): max |f'| on the range times L; a (op) b by the
  product / quotient rule with the broadcast counts.
Ranges and bounds are computed together: every value's interval range is intersected with
v(centre) +- L(v) R, R the set's largest distance from its centre (mean value inequality
per entry: each row of J_v has norm <= ||J_v||), and with the range of
v(centre) + J (x - centre) over the set for J in the Jacobian hull of v (`smooth_jacobian`,
computed in the same pass; per entry |v_k(x) - v_k(c)| <= sum_j max|J_kj| |x_j - c_j|),
which keeps small sets tight. Every factor
is inflated by 1e-9 relative against float64 rounding; a NaN becomes inf.
"""
from __future__ import annotations

import math

import torch

from lipcheck.propagation.input_set import InputSet
from lipcheck.propagation.jacobian import SAFETY
from lipcheck.propagation.masked import _act_scale, _pool_factor
from lipcheck.propagation.pointwise import binary_factors, pointwise_slope
from lipcheck.propagation.program import (
    Act,
    Add,
    Affine,
    MaxPool,
    Program,
    UnsupportedLocal,
    sources,
)
from lipcheck.propagation.ranges import Bounds, widen
from lipcheck.propagation.smooth import Binary, Norm, Pointwise, Product, Softmax
from lipcheck.propagation.smooth_jacobian import Hull, HullPass, hull_norm
from lipcheck.propagation.smooth_ranges import (
    Composed,
    ValueRanges,
    add_range,
    centred_range,
    composed,
    stochastic,
    variance_range,
)
from lipcheck.rules.normalization import centred_scale_norm


def _block_norms(bounds: Bounds, shape: tuple[int, ...], rows_sum_to_one: bool = False
                 ) -> torch.Tensor:
    """(B,): the largest spectral norm of a batch block of a matrix in the box."""
    b = bounds[0].shape[0]
    m = torch.maximum(bounds[0].abs(), bounds[1].abs()).reshape(b, -1, *shape[-2:])
    norms = torch.linalg.matrix_norm(m, ord=2)
    if rows_sum_to_one:
        norms = torch.minimum(norms, m.sum(dim=-2).amax(dim=-1).sqrt() * SAFETY)
    return norms.amax(dim=1)


def product_norms(step: Product, x: Bounds, y: Bounds, rows_sum_to_one: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(factor on L(X), factor on L(Y)), each (B,)."""
    blocks = math.prod(torch.broadcast_shapes(step.shape_a[:-2], step.shape_b[:-2]))
    r_x = blocks / math.prod(step.shape_a[:-2])
    r_y = blocks / math.prod(step.shape_b[:-2])
    return (math.sqrt(r_x) * _block_norms(y, step.shape_b),
            math.sqrt(r_y) * _block_norms(x, step.shape_a, rows_sum_to_one))


def softmax_factor(step: Softmax, p: Bounds) -> torch.Tensor:
    """(B,): a bound on ||diag(p) - p p^T|| over the slices and the p ranges."""
    b = p[0].shape[0]
    lo, hi = (t.reshape(b, *step.shape).movedim(step.axis + 1, -1) for t in p)
    near_half = torch.minimum(torch.maximum(lo, torch.full_like(lo, 0.5)), hi)
    gershgorin = (2 * near_half * (1 - near_half)).amax(dim=-1)
    per_slice = torch.minimum(hi.amax(dim=-1), gershgorin).clamp(max=0.5)
    return per_slice.reshape(b, -1).amax(dim=1)


def norm_factor(step: Norm, x: Bounds) -> torch.Tensor:
    """(B,): a bound on the norm's Jacobian over the groups and the input ranges."""
    v_lo, _ = variance_range(*centred_range(step, x))
    top = centred_scale_norm(step.scale) if step.centred else float(step.scale.abs().max())
    return (top / (v_lo + step.eps).sqrt()).amax(dim=1)


def _affine_bound(program: Program, ranges: ValueRanges, m: Composed,
                  bound: dict[int, torch.Tensor]) -> torch.Tensor:
    base = m.base
    if base > 0 and isinstance(program.steps[base - 1], Act):
        scale = _act_scale(program, ranges, base - 1)                # (B, n_base)
        norm = torch.linalg.matrix_norm(m.weight * scale[:, None, :], ord=2)
        return norm * bound[sources(program.steps, base - 1)[0]]
    return float(torch.linalg.matrix_norm(m.weight, ord=2)) * bound[base]


def _step_bound(program: Program, ranges: ValueRanges, maps: dict[int, Composed], i: int,
                bound: dict[int, torch.Tensor]) -> torch.Tensor:
    step, src = program.steps[i], sources(program.steps, i)
    values = ranges.values
    if isinstance(step, Affine):
        return _affine_bound(program, ranges, maps[i], bound)
    if isinstance(step, Act):
        return _act_scale(program, ranges, i).amax(dim=1) * bound[src[0]]
    if isinstance(step, MaxPool):
        return _pool_factor(step, *ranges.pre[i]) * bound[src[0]]
    if isinstance(step, Add):
        return bound[src[0]] + bound[src[1]]
    if isinstance(step, Product):
        on_x, on_y = product_norms(step, values[src[0]], values[src[1]], stochastic(program, i))
        return on_x * bound[src[0]] + on_y * bound[src[1]]
    if isinstance(step, Softmax):
        return softmax_factor(step, values[i + 1]) * bound[src[0]]
    if isinstance(step, Pointwise):
        return pointwise_slope(step, values[src[0]]) * bound[src[0]]
    if isinstance(step, Binary):
        on_a, on_b = binary_factors(step, values[src[0]], values[src[1]])
        return on_a * bound[src[0]] + on_b * bound[src[1]]
    assert isinstance(step, Norm), f"unknown step {type(step).__name__}"
    return norm_factor(step, values[src[0]]) * bound[src[0]]


def reach(s: InputSet) -> torch.Tensor:
    """(B,): the largest ||x - centre||_2 over each set."""
    n = s.center.shape[1]
    if s.kind == "box":
        assert isinstance(s.radius, torch.Tensor), "a box's radius is its half-widths"
        return torch.linalg.vector_norm(s.radius, dim=1)
    r = float(s.radius) * (math.sqrt(n) if s.kind == "linf" else 1.0)
    return torch.full((s.batch,), r, dtype=torch.float64)


def _mean_value(bounds: Bounds, centre: torch.Tensor, spread: torch.Tensor,
                hull: Hull | None, input_set: InputSet) -> Bounds:
    """The range intersected with centre +- L R and, with the Jacobian hull M = |C| + R,
    centre +- M |x - centre| over the set (both: the mean value theorem on a convex set)."""
    spread = torch.nan_to_num(spread, nan=math.inf)[:, None].expand_as(centre)
    if hull is not None:
        m = torch.nan_to_num(hull[0].abs() + hull[1], nan=math.inf)
        lo, hi = input_set.affine_range(m, torch.zeros_like(centre))
        spread = torch.minimum(spread, torch.nan_to_num((hi - lo) / 2, nan=math.inf))
    lo, hi = widen(centre - spread, centre + spread)
    return torch.maximum(bounds[0], lo), torch.minimum(bounds[1], hi)


def smooth_autolip(program: Program, input_set: InputSet
                   ) -> tuple[ValueRanges, torch.Tensor, torch.Tensor]:
    """The ranges, and the (B,) masked AutoLip and Jacobian-hull bounds of a program with
    smooth steps, computed together: each value's interval range is intersected with
    v(centre) +- L(v) R (R the set's largest distance from its centre) and with the range
    of v(centre) + J (x - centre) over the hull of J, which keeps small sets tight."""
    maps = composed(program)
    ranges = ValueRanges(values=[input_set.interval()])
    centre = program.values(input_set.center)
    far = reach(input_set)
    hulls = HullPass(program, maps, input_set.batch, program.n_in)
    bound = {0: torch.ones(input_set.batch, dtype=torch.float64)}
    for i in range(len(program.steps)):
        add_range(program, maps, i, ranges, input_set)
        bound[i + 1] = _step_bound(program, ranges, maps, i, bound) * SAFETY
        hull = hulls.step(ranges, i)
        if hull is not None:      # the hull's norm bounds the same sup ||J_v||: keep the less
            bound[i + 1] = torch.minimum(bound[i + 1], hull_norm(hull, i + 1))
        ranges.values[-1] = _mean_value(ranges.values[-1], centre[i + 1], bound[i + 1] * far,
                                        hull, input_set)
        ranges.output = ranges.values[-1]
    autolip = torch.nan_to_num(bound[len(program.steps)], nan=math.inf)
    return ranges, autolip, hulls.bound(input_set.batch)


def smooth_bounds(program: Program, input_set: InputSet
                  ) -> tuple[ValueRanges, dict[str, torch.Tensor]]:
    """The ranges and the certified upper bounds (B,) of a program with smooth steps."""
    ranges, bound, hull = smooth_autolip(program, input_set)
    if not bool(torch.isfinite(torch.minimum(bound, hull)).all()):
        raise UnsupportedLocal("local bounds: no finite bound on the set (the ranges are "
                               "not finite: an infinite constant such as a -inf mask)")
    return ranges, {"masked-autolip": bound, "interval-jacobian": hull}
