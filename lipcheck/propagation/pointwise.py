"""Ranges and slope bounds of the elementwise smooth steps on an input range.

`Pointwise` f on [lo, hi] per entry, with `near` the point of [lo, hi] nearest 0:
- Exp, Tanh, Sigmoid, Erf, Sqrt are nondecreasing: [f(lo), f(hi)]; |f'| is at most
  exp(hi), 1 - tanh(near)^2, s(near) (1 - s(near)), 2/sqrt(pi) exp(-near^2) (each even in
  x and decreasing in |x|, or increasing: exp), 1 / (2 sqrt(lo)) (Sqrt; lo <= 0: none);
- Reciprocal: [1/hi, 1/lo] and |f'| = 1/near^2 when 0 is not in the range (else none);
- Pow with the constant exponent 2 (and Mul of a value by itself): [near^2, max(lo^2,
  hi^2)], |f'| <= 2 max(|lo|, |hi|);
- Gelu (exact or tanh form): decreasing then increasing, its minimum (> -0.1701) at
  x* in (-0.76, -0.75): [min(f(lo), f(hi)), max(f(lo), f(hi))], the lower end lowered to
  -0.1701 when the range reaches into [-0.76, -0.75]; |f'| <= the rule's global constant.
`Binary` a (op) b, broadcast: add / sub of the intervals, mul the hull of the four corner
products, div a times [1/hi_b, 1/lo_b] when 0 is not in b's range (else the whole line).
Slopes of a binary step: dz = da (.) b + a (.) db for mul; da / b - a db / b^2 for div;
each input entry is read r = n_out / n_in times, so
L(z) <= sqrt(r_a) max|d/da| L(a) + sqrt(r_b) max|d/db| L(b) (`binary_factors`).
A missing bound is inf (and then the local section is skipped, naming why).
"""
from __future__ import annotations

import math

import torch

from lipcheck.graph import OpKind
from lipcheck.propagation.ranges import Bounds
from lipcheck.propagation.smooth import Binary, Pointwise
from lipcheck.rules.activations import GELU_CONSTANT, GELU_TANH_CONSTANT

GELU_MIN = -0.1701          # below min GELU (-0.16997) and min of the tanh form (-0.17004)
INCREASING = (OpKind.EXP, OpKind.TANH, OpKind.SIGMOID, OpKind.ERF, OpKind.SQRT)


def _near(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return torch.where(lo > 0, lo, torch.where(hi < 0, -hi, torch.zeros_like(lo)))


def pointwise_range(step: Pointwise, x: Bounds) -> Bounds:
    lo, hi = x
    if step.op in INCREASING:
        if step.op == OpKind.SQRT:
            lo = torch.where(lo < 0, torch.nan, lo)        # a negative input: NaN, no range
        return step.run(lo), step.run(hi)
    if step.op == OpKind.RECIPROCAL:
        return _reciprocal(x)
    if step.op == OpKind.POW:       # the square
        return _square(x)
    f_lo, f_hi = step.run(lo), step.run(hi)
    low = torch.minimum(f_lo, f_hi)
    low = torch.where((lo <= -0.75) & (hi >= -0.76), torch.clamp(low, max=GELU_MIN), low)
    return low, torch.maximum(f_lo, f_hi)


def pointwise_slope(step: Pointwise, x: Bounds) -> torch.Tensor:
    """(B,): the largest |f'| over the entries' ranges."""
    lo, hi = x
    near = _near(lo, hi)
    if step.op == OpKind.EXP:
        slope = torch.exp(hi)
    elif step.op == OpKind.TANH:
        slope = 1 - torch.tanh(near) ** 2
    elif step.op == OpKind.SIGMOID:
        s = torch.sigmoid(near)
        slope = s * (1 - s)
    elif step.op == OpKind.ERF:
        slope = 2 / math.sqrt(math.pi) * torch.exp(-near * near)
    elif step.op == OpKind.SQRT:
        slope = torch.where(lo > 0, 0.5 / lo.clamp(min=1e-300).sqrt(), torch.inf)
    elif step.op == OpKind.RECIPROCAL:
        slope = torch.where(near > 0, 1 / (near * near), torch.inf)
    elif step.op == OpKind.POW:
        slope = 2 * torch.maximum(lo.abs(), hi.abs())
    else:
        value = GELU_TANH_CONSTANT if step.approximate == "tanh" else GELU_CONSTANT
        slope = torch.full_like(lo, value)
    return slope.amax(dim=1)


def pointwise_derivative(step: Pointwise, x: Bounds) -> Bounds:
    """(B, n) bounds of f'(x) over each entry's range (for the Jacobian hull)."""
    lo, hi = x
    near, far = _near(lo, hi), torch.maximum(lo.abs(), hi.abs())
    if step.op == OpKind.EXP:
        return torch.exp(lo), torch.exp(hi)
    if step.op == OpKind.POW:
        return 2 * lo, 2 * hi
    if step.op == OpKind.RECIPROCAL:
        inside = near <= 0
        return (torch.where(inside, -torch.inf, -1 / (near * near)),
                torch.where(inside, torch.inf, -1 / (far * far)))
    if step.op == OpKind.GELU and step.approximate == "none":
        return _gelu_derivative(lo, hi)
    if step.op == OpKind.GELU:     # GELU' >= -0.13 (its minimum, near -sqrt 2), both forms
        return torch.full_like(lo, -0.2), pointwise_slope(step, x)[:, None].expand_as(lo)
    if step.op == OpKind.SQRT:
        return (0.5 / hi.clamp(min=1e-300).sqrt(),
                torch.where(lo > 0, 0.5 / lo.clamp(min=1e-300).sqrt(), torch.inf))
    return _even_slope(step.op, far), _even_slope(step.op, near)


def _gelu_slope(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-x * x / 2) / math.sqrt(
        2 * math.pi)


def _gelu_derivative(lo: torch.Tensor, hi: torch.Tensor) -> Bounds:
    """GELU' = Phi + x phi has GELU'' = phi (2 - x^2): it falls, rises on [-sqrt 2, sqrt 2],
    falls; so its range on [lo, hi] is spanned by the ends and the critical points inside."""
    ends = torch.stack([_gelu_slope(lo), _gelu_slope(hi)])
    low, high = ends.amin(dim=0), ends.amax(dim=0)
    root = math.sqrt(2)
    low = torch.where((lo <= -root) & (hi >= -root), _gelu_slope(torch.full_like(lo, -root)),
                      low)
    high = torch.where((lo <= root) & (hi >= root), _gelu_slope(torch.full_like(lo, root)), high)
    margin = 1e-12 * (1 + high.abs())
    return low - margin, high + margin


def _even_slope(op: OpKind, at: torch.Tensor) -> torch.Tensor:
    """f'(at) for the even, in |x| decreasing slopes of Tanh, Sigmoid, Erf."""
    if op == OpKind.TANH:
        return 1 - torch.tanh(at) ** 2
    if op == OpKind.SIGMOID:
        s = torch.sigmoid(at)
        return s * (1 - s)
    assert op == OpKind.ERF, f"no slope for {op}"
    return 2 / math.sqrt(math.pi) * torch.exp(-at * at)


def _reciprocal(b: Bounds) -> Bounds:
    lo, hi = b
    gap = (lo > 0) | (hi < 0)
    return torch.where(gap, 1 / hi, -torch.inf), torch.where(gap, 1 / lo, torch.inf)


def _square(x: Bounds) -> Bounds:
    near = _near(*x)
    far = torch.maximum(x[0].abs(), x[1].abs())
    return near * near, far * far


def _times(a: Bounds, b: Bounds) -> Bounds:
    corners = torch.stack([a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1]])
    return corners.amin(dim=0), corners.amax(dim=0)


def binary_range(step: Binary, a: Bounds, b: Bounds, same: bool = False) -> Bounds:
    """The range of a (op) b; `same`: both are one value (a * a is a square, >= 0)."""
    (a_lo, b_lo), (a_hi, b_hi) = step.spread(a[0], b[0]), step.spread(a[1], b[1])
    if step.op == "add":
        lo, hi = a_lo + b_lo, a_hi + b_hi
    elif step.op == "sub":
        lo, hi = a_lo - b_hi, a_hi - b_lo
    elif step.op == "mul" and same and step.shape_a == step.shape_b:
        lo, hi = _square((a_lo, a_hi))
    elif step.op == "mul":
        lo, hi = _times((a_lo, a_hi), (b_lo, b_hi))
    else:
        lo, hi = _times((a_lo, a_hi), _reciprocal((b_lo, b_hi)))
    batch = a[0].shape[0]
    return lo.reshape(batch, -1), hi.reshape(batch, -1)


def _magnitude(x: Bounds) -> torch.Tensor:
    return torch.maximum(x[0].abs(), x[1].abs())


def binary_factors(step: Binary, a: Bounds, b: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
    """(factor on L(a), factor on L(b)), each (B,)."""
    n = math.prod(step.shape)
    r_a, r_b = math.sqrt(n / math.prod(step.shape_a)), math.sqrt(n / math.prod(step.shape_b))
    if step.op in ("add", "sub"):
        one = torch.ones(a[0].shape[0], dtype=torch.float64)
        return r_a * one, r_b * one
    mag_a, mag_b = step.spread(_magnitude(a), _magnitude(b))
    batch = a[0].shape[0]
    if step.op == "mul":
        return (r_a * mag_b.reshape(batch, -1).amax(dim=1),
                r_b * mag_a.reshape(batch, -1).amax(dim=1))
    inv = _magnitude(_reciprocal(b))
    _, inv = step.spread(a[0], inv)
    return (r_a * inv.reshape(batch, -1).amax(dim=1),
            r_b * (mag_a * inv * inv).reshape(batch, -1).amax(dim=1))
