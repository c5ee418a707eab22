"""The interval hull of the Jacobian of every value, forward through a program with smooth
steps (Shi et al., NeurIPS 2022, interval form; `jacobian.py` does it backwards for ReLU
programs). Each hull is a centre and a radius (B, n_v, n_in); the product of two intervals
[a +- r] [b +- s] is enclosed by ab +- (|a| s + r |b| + r s), sums add centres and radii.

Per step, J the hull of the step's input Jacobian(s), on the ranges `smooth_ranges` found:
- affine (composed back to its base): W J (centre W C, radius |W| R);
- activation / elementwise f: f'(x) J, with f' on the entry's range (`pointwise`);
- sum: J_a + J_b; a (op) b broadcast: the product and quotient rules on the ranges;
- product Z = X Y: dZ = dX Y + X dY, summed over the inner index;
- softmax: dp_i = p_i (dz_i - sum_j p_j dz_j) on the p ranges;
- LayerNorm / RMSNorm: dt = (dc - z (z . dc)) / sigma, dc = P dx (or dx), z = t / sqrt(d)
  on the range of t = c / sigma, 1 / sigma in [1 / s_hi, 1 / s_lo]; then g dt.
The bound of sup ||J||_2 is min(|| |C| + R ||_2, ||C||_2 + ||R||_2) (`jacobian.py`), inflated
by 1e-9 per step against rounding. Max pools are not handled here (inf).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lipcheck.propagation.jacobian import SAFETY, slope_interval
from lipcheck.propagation.pointwise import _reciprocal, pointwise_derivative
from lipcheck.propagation.program import Act, Add, Affine, MaxPool, Program, sources
from lipcheck.propagation.ranges import Bounds
from lipcheck.propagation.smooth import Binary, Norm, Pointwise, Product, Softmax
from lipcheck.propagation.smooth_ranges import (
    Composed,
    ValueRanges,
    centred_range,
    normalised_range,
    variance_range,
)

Hull = tuple[torch.Tensor, torch.Tensor]      # centre, radius


def _each(fn: Callable[[torch.Tensor], torch.Tensor], h: Hull) -> Hull:
    return fn(h[0]), fn(h[1])


def _mr(b: Bounds) -> Hull:
    return (b[0] + b[1]) / 2, (b[1] - b[0]) / 2


def _times(a: Hull, b: Hull) -> Hull:
    return a[0] * b[0], a[0].abs() * b[1] + a[1] * b[0].abs() + a[1] * b[1]


def _plus(a: Hull, b: Hull, sign: float = 1.0) -> Hull:
    return a[0] + sign * b[0], a[1] + b[1]


def _einsum(eq: str, a: Hull, b: Hull) -> Hull:
    """The interval enclosure of a sum of products (centre-radius form)."""
    mid = torch.einsum(eq, a[0], b[0])
    rad = (torch.einsum(eq, a[0].abs(), b[1]) + torch.einsum(eq, a[1], b[0].abs())
           + torch.einsum(eq, a[1], b[1]))
    return mid, rad


def _shaped(h: Hull, shape: tuple[int, ...]) -> Hull:
    return h[0].reshape(h[0].shape[0], *shape, -1), h[1].reshape(h[1].shape[0], *shape, -1)


def _flat(h: Hull) -> Hull:
    return h[0].reshape(h[0].shape[0], -1, h[0].shape[-1]), h[1].reshape(h[1].shape[0], -1,
                                                                         h[1].shape[-1])


def _affine(m: Composed, jac: dict[int, Hull]) -> Hull:
    c, r = jac[m.base]
    return torch.einsum("mn,bnk->bmk", m.weight, c), torch.einsum("mn,bnk->bmk",
                                                                  m.weight.abs(), r)


def _product(step: Product, jx: Hull, jy: Hull, x: Bounds, y: Bounds) -> Hull:
    b = x[0].shape[0]
    xr = _each(lambda t: t.reshape(b, *step.shape_a), _mr(x))
    yr = _each(lambda t: t.reshape(b, *step.shape_b), _mr(y))
    jx, jy = _shaped(jx, step.shape_a), _shaped(jy, step.shape_b)
    out = _plus(_einsum("...mkn,...kj->...mjn", jx, yr), _einsum("...mk,...kjn->...mjn", xr, jy))
    return _flat(out)


def _softmax(step: Softmax, jz: Hull, p: Bounds) -> Hull:
    b, axis = p[0].shape[0], step.axis + 1
    pr = _each(lambda t: t.reshape(b, *step.shape).movedim(axis, -1)[..., None], _mr(p))
    jz = _each(lambda t: t.movedim(axis, -2), _shaped(jz, step.shape))
    mean = _each(lambda t: t.sum(dim=-2, keepdim=True), _times(pr, jz))
    out = _times(pr, _plus(jz, mean, -1.0))
    return _flat(_each(lambda t: t.movedim(-2, axis), out))


def _norm(step: Norm, jx: Hull, x: Bounds) -> Hull:
    b, d = x[0].shape[0], step.group
    c, r = (t.reshape(b, -1, d, t.shape[-1]) for t in jx)
    if step.centred:
        c = c - c.mean(dim=2, keepdim=True)
        r = r * (1 - 2 / d) + r.sum(dim=2, keepdim=True) / d
    z = _each(lambda t: t[..., None] / math.sqrt(d), _mr(normalised_range(step, x)))
    v_lo, v_hi = variance_range(*centred_range(step, x))
    inv = _mr((1 / (v_hi + step.eps).sqrt(), 1 / (v_lo + step.eps).sqrt()))
    along = _each(lambda t: t.sum(dim=2, keepdim=True), _times(z, (c, r)))
    dt = _times(_plus((c, r), _times(z, along), -1.0), _each(lambda t: t[..., None, None], inv))
    g = step.scale[:, None]
    return _flat((dt[0] * g, dt[1] * g.abs()))


def _binary(step: Binary, ja: Hull, jb: Hull, a: Bounds, b: Bounds) -> Hull:
    batch, n = a[0].shape[0], ja[0].shape[-1]

    def spread(h: Hull, shape: tuple[int, ...]) -> Hull:
        return _each(lambda t: torch.broadcast_to(t.reshape(batch, *shape, n),
                                                  (batch, *step.shape, n)), h)

    def side(h: Hull, shape: tuple[int, ...]) -> Hull:
        return _each(lambda t: torch.broadcast_to(t.reshape(batch, *shape),
                                                  (batch, *step.shape))[..., None], h)
    ja, jb = spread(ja, step.shape_a), spread(jb, step.shape_b)
    if step.op in ("add", "sub"):
        return _flat(_plus(ja, jb, 1.0 if step.op == "add" else -1.0))
    av = side(_mr(a), step.shape_a)
    if step.op == "mul":
        return _flat(_plus(_times(ja, side(_mr(b), step.shape_b)), _times(av, jb)))
    recip = side(_mr(_reciprocal(b)), step.shape_b)
    return _flat(_plus(_times(ja, recip), _times(_times(av, _times(recip, recip)), jb), -1.0))


def step_hull(program: Program, ranges: ValueRanges, maps: dict[int, Composed], i: int,
              jac: dict[int, Hull]) -> Hull:
    """The hull of step i's output Jacobian from the hulls `jac` of the values it reads."""
    step, src = program.steps[i], sources(program.steps, i)
    values = ranges.values
    if isinstance(step, Affine):
        return _affine(maps[i], jac)
    if isinstance(step, Act):
        slope = _mr(slope_interval(step.alpha, *ranges.pre[i]))
        return _times(_each(lambda t: t[..., None], slope), jac[src[0]])
    if isinstance(step, Pointwise):
        slope = _mr(pointwise_derivative(step, values[src[0]]))
        return _times(_each(lambda t: t[..., None], slope), jac[src[0]])
    if isinstance(step, Add):
        return _plus(jac[src[0]], jac[src[1]])
    if isinstance(step, Product):
        return _product(step, jac[src[0]], jac[src[1]], values[src[0]], values[src[1]])
    if isinstance(step, Softmax):
        return _softmax(step, jac[src[0]], values[i + 1])
    if isinstance(step, Norm):
        return _norm(step, jac[src[0]], values[src[0]])
    assert isinstance(step, Binary), f"unknown step {type(step).__name__}"
    return _binary(step, jac[src[0]], jac[src[1]], values[src[0]], values[src[1]])


class HullPass:
    """The hulls, step by step beside the ranges (`smooth_lipschitz.smooth_autolip` feeds
    each new hull back into the ranges); values no later step reads are dropped."""

    def __init__(self, program: Program, maps: dict[int, Composed], batch: int, n: int):
        self.program, self.maps, self.last = program, maps, len(program.steps)
        self.enabled = not any(isinstance(s, MaxPool) for s in program.steps)
        eye = torch.eye(n, dtype=torch.float64).expand(batch, -1, -1)
        self.jac: dict[int, Hull] = {0: (eye, torch.zeros_like(eye))}
        reads = [(maps[i].base,) if i in maps else sources(program.steps, i)
                 for i in range(self.last)]
        self.final = {v: max((j for j in range(self.last) if v in reads[j]), default=self.last)
                      for v in range(self.last + 1)}

    def step(self, ranges: ValueRanges, i: int) -> Hull | None:
        """The hull of value i + 1 (None when disabled: max pools)."""
        if not self.enabled:
            return None
        self.jac[i + 1] = step_hull(self.program, ranges, self.maps, i, self.jac)
        for v in [v for v in self.jac if self.final[v] <= i]:
            del self.jac[v]
        return self.jac[i + 1]

    def bound(self, batch: int) -> torch.Tensor:
        """(B,): the bound of sup ||J||_2 from the output's hull (inf when disabled)."""
        if not self.enabled:
            return torch.full((batch,), math.inf, dtype=torch.float64)
        return hull_norm(self.jac[self.last], self.last)


def hull_norm(hull: Hull, steps: int) -> torch.Tensor:
    """(B,): a bound of the largest ||J||_2 over the hull, after `steps` steps of rounding."""
    c, r = hull
    norm = torch.minimum(torch.linalg.matrix_norm(c.abs() + r, ord=2),
                         torch.linalg.matrix_norm(c, ord=2) + torch.linalg.matrix_norm(r, ord=2))
    return torch.nan_to_num(norm * SAFETY ** steps, nan=math.inf)
