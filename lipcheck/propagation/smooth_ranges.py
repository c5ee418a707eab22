"""Interval ranges of every value of a program with smooth steps (products, softmax, norms).

`propagate_values(program, input_set)` runs interval arithmetic forward and keeps the range
of every value (not only the activations' inputs). Affine steps are first composed back
through the affine steps they read (`composed`), so each affine value is the image of one
earlier non-affine value (or of the input set, where the range is exact), not of a chain of
boxes. The rules, each sound on a box (checked by sampling in tests/test_local_attention.py):
- product Z = X Y: Z_ij = sum_k X_ik Y_kj, each term's range the hull of its four corner
  products (exact per term); when X is a softmax along its rows (attention's A V), Z_ij is
  a convex combination of the Y_kj, so also in [min_k lo(Y_kj), max_k hi(Y_kj)];
- softmax p_i = 1 / sum_j exp(z_j - z_i), increasing in z_i and decreasing in every other
  z_j: p_i >= 1 / sum_j exp(hi_j - lo_i) (j != i), p_i <= 1 / sum_j exp(lo_j - hi_i)
  (exact per entry on a box);
- LayerNorm / RMSNorm on a group of d entries: the centred entries c = P x (P = I - 11^T/d,
  |P| has 1 - 1/d on the diagonal and 1/d off it; RMSNorm: c = x), their variance
  v = |c|^2 / d in [sum dist(0, [cl_i, ch_i])^2 / d, sum max(cl_i^2, ch_i^2) / d]; then
  t_i = c_i / sqrt(v + eps) is increasing in c_i and depends on the other entries only
  through their sum of squares, which lowers it when c_i > 0 and raises it when c_i < 0,
  so its exact range over the box of c is at c_i = ch_i (resp. cl_i) with the others' sum
  of squares at its smallest or largest; intersected with |t_i| <= sqrt(d - 1) (centred:
  c_i^2 <= (d - 1)/d |c|^2; RMSNorm sqrt(d)); then g_i t_i + b_i.
Elementwise steps (Exp, Tanh, Gelu, Div, Mul, ...): `pointwise`.
Every range is widened by a relative 1e-9 (plus 1e-12) against float64 rounding; a NaN
(from infinite inputs) becomes the whole line, so no later bound is finite by accident.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lipcheck.propagation.input_set import InputSet
from lipcheck.propagation.pointwise import binary_range, pointwise_range
from lipcheck.propagation.program import MAX_ENTRIES, Add, Affine, Program, sources
from lipcheck.propagation.ranges import Bounds, Ranges, _interval, widen
from lipcheck.propagation.smooth import Binary, Norm, Pointwise, Product, Softmax


@dataclass
class ValueRanges(Ranges):
    values: list[Bounds] = field(default_factory=list)   # value k -> its range (B, n_k)


@dataclass
class Composed:
    weight: torch.Tensor      # (n_out, n_base)
    bias: torch.Tensor
    base: int                 # the value it reads: not written by an affine step


def composed(program: Program) -> dict[int, Composed]:
    """Each affine step as one map of the nearest non-affine value it depends on (or of
    the previous affine value, where the product would pass MAX_ENTRIES)."""
    out: dict[int, Composed] = {}
    for i, step in enumerate(program.steps):
        if not isinstance(step, Affine):
            continue
        v = sources(program.steps, i)[0]
        inner = out.get(v - 1) if v > 0 else None
        if inner is None or step.weight.shape[0] * inner.weight.shape[1] > MAX_ENTRIES:
            out[i] = Composed(step.weight, step.bias, v)
        else:
            out[i] = Composed(step.weight @ inner.weight, step.weight @ inner.bias + step.bias,
                              inner.base)
    return out


def stochastic(program: Program, i: int) -> bool:
    """Whether product step i's left operand is a softmax along its rows (rows sum to 1)."""
    step, v = program.steps[i], sources(program.steps, i)[0]
    before = program.steps[v - 1] if v > 0 else None
    return (isinstance(step, Product) and isinstance(before, Softmax)
            and before.shape == step.shape_a and before.axis == len(before.shape) - 1)


def product_range(step: Product, x: Bounds, y: Bounds, rows_sum_to_one: bool = False) -> Bounds:
    b = x[0].shape[0]
    xl, xh = (t.reshape(b, *step.shape_a)[..., :, :, None] for t in x)
    yl, yh = (t.reshape(b, *step.shape_b)[..., None, :, :] for t in y)
    corners = torch.stack(torch.broadcast_tensors(xl * yl, xl * yh, xh * yl, xh * yh))
    lo, hi = corners.amin(dim=0).sum(dim=-2), corners.amax(dim=0).sum(dim=-2)
    if rows_sum_to_one:   # a convex combination of the rows of Y
        lo = torch.maximum(lo, yl.amin(dim=-2))
        hi = torch.minimum(hi, yh.amax(dim=-2))
    return lo.reshape(b, -1), hi.reshape(b, -1)


def _others(step: Softmax, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """1 / (1 + sum_{j != i} exp(a_j - c_i)) along the axis, for every i."""
    diff = a.unsqueeze(-2) - c.unsqueeze(-1)                  # [..., i, j]
    eye = torch.eye(diff.shape[-1], dtype=torch.bool)
    diff = torch.where(eye, torch.zeros_like(diff), diff)
    return torch.exp(-torch.logsumexp(diff, dim=-1))


def softmax_range(step: Softmax, z: Bounds) -> Bounds:
    b = z[0].shape[0]
    lo, hi = (t.reshape(b, *step.shape).movedim(step.axis + 1, -1) for t in z)
    p_lo = _others(step, hi, lo).movedim(-1, step.axis + 1).reshape(b, -1)
    p_hi = _others(step, lo, hi).movedim(-1, step.axis + 1).reshape(b, -1)
    return p_lo.clamp(0, 1), p_hi.clamp(0, 1)


def centred_range(step: Norm, x: Bounds) -> Bounds:
    """(B, groups, d) ranges of c: the centred entries (LayerNorm) or x itself (RMSNorm)."""
    lo, hi = step.grouped(x[0]), step.grouped(x[1])
    if not step.centred:
        return lo, hi
    d = step.group
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    mid = mid - mid.mean(dim=2, keepdim=True)
    rad = rad * (1 - 2 / d) + rad.sum(dim=2, keepdim=True) / d
    return mid - rad, mid + rad


def variance_range(c_lo: torch.Tensor, c_hi: torch.Tensor) -> Bounds:
    """(B, groups) bounds of mean(c^2) over each group."""
    near = torch.where(c_lo > 0, c_lo, torch.where(c_hi < 0, -c_hi, torch.zeros_like(c_lo)))
    far = torch.maximum(c_lo.abs(), c_hi.abs())
    return (near * near).mean(dim=2), (far * far).mean(dim=2)


def _normalised_bound(c: torch.Tensor, sq_near: torch.Tensor, sq_far: torch.Tensor,
                      upper: bool, eps: float) -> torch.Tensor:
    """c_i / sqrt((c_i^2 + others) / d + eps) with the others' sum of squares chosen to
    push it up (upper) or down: the smallest when that helps, else the largest."""
    d = c.shape[-1]
    small = (c > 0) if upper else (c < 0)
    others = torch.where(small, sq_near.sum(dim=-1, keepdim=True) - sq_near,
                         sq_far.sum(dim=-1, keepdim=True) - sq_far)
    return c / ((c * c + others.clamp(min=0)) / d + eps).sqrt()


def normalised_range(step: Norm, x: Bounds) -> Bounds:
    """(B, groups, d) ranges of t = c / sqrt(mean(c^2) + eps), before scale and bias."""
    c_lo, c_hi = centred_range(step, x)
    near = torch.where(c_lo > 0, c_lo, torch.where(c_hi < 0, -c_hi, torch.zeros_like(c_lo)))
    far = torch.maximum(c_lo.abs(), c_hi.abs())
    t_lo = _normalised_bound(c_lo, near * near, far * far, False, step.eps)
    t_hi = _normalised_bound(c_hi, near * near, far * far, True, step.eps)
    cap = (step.group - 1 if step.centred else step.group) ** 0.5
    return t_lo.clamp(min=-cap), t_hi.clamp(max=cap)


def norm_range(step: Norm, x: Bounds) -> Bounds:
    t_lo, t_hi = normalised_range(step, x)
    g = step.scale
    lo = torch.where(g >= 0, g * t_lo, g * t_hi) + step.bias
    hi = torch.where(g >= 0, g * t_hi, g * t_lo) + step.bias
    b = x[0].shape[0]
    return lo.reshape(b, -1), hi.reshape(b, -1)


def _affine_range(maps: dict[int, Composed], i: int, values: list[Bounds],
                  input_set: InputSet) -> Bounds:
    m = maps[i]
    if m.base == 0:       # exact on the set itself
        return input_set.affine_range(m.weight.expand(input_set.batch, -1, -1),
                                      m.bias.expand(input_set.batch, -1))
    lo, hi = values[m.base]
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    mid, rad = mid @ m.weight.T + m.bias, rad @ m.weight.abs().T
    return mid - rad, mid + rad


def step_range(program: Program, maps: dict[int, Composed], i: int, values: list[Bounds],
               input_set: InputSet) -> Bounds:
    """The range of step i's output from the ranges `values` of the values before it."""
    step, src = program.steps[i], sources(program.steps, i)
    if isinstance(step, Affine):
        return _affine_range(maps, i, values, input_set)
    if isinstance(step, Product):
        return product_range(step, values[src[0]], values[src[1]], stochastic(program, i))
    if isinstance(step, Softmax):
        return softmax_range(step, values[src[0]])
    if isinstance(step, Norm):
        return norm_range(step, values[src[0]])
    if isinstance(step, Pointwise):
        return pointwise_range(step, values[src[0]])
    if isinstance(step, Binary):
        return binary_range(step, values[src[0]], values[src[1]], src[0] == src[1])
    return _interval(step, *(values[v] for v in src))


def sane(lo: torch.Tensor, hi: torch.Tensor) -> Bounds:
    """Widened against rounding; NaN becomes the whole line."""
    lo, hi = widen(lo, hi)
    return (torch.where(torch.isnan(lo), -torch.inf, lo),
            torch.where(torch.isnan(hi), torch.inf, hi))


def propagate_values(program: Program, input_set: InputSet) -> ValueRanges:
    """The range of every value on each set of the batch (interval arithmetic)."""
    maps = composed(program)
    ranges = ValueRanges(values=[input_set.interval()])
    for i in range(len(program.steps)):
        add_range(program, maps, i, ranges, input_set)
    return ranges


def add_range(program: Program, maps: dict[int, Composed], i: int, ranges: ValueRanges,
              input_set: InputSet) -> None:
    """Appends step i's output range (and records its input's for a non-affine step)."""
    if not isinstance(program.steps[i], (Affine, Add)):
        ranges.pre[i] = ranges.values[sources(program.steps, i)[0]]
    ranges.values.append(sane(*step_range(program, maps, i, ranges.values, input_set)))
    ranges.output = ranges.values[-1]
