"""Local Lipschitz bounds of output functionals: a zonotope of Jacobian rows, propagated back.

For rows R (B, m, n_out), every row r J(x) (x in the set, J a Clarke Jacobian) lies in a
zonotope d + C z, z in [-1, 1]^q, built backwards through the steps (the Jacobian's
products relaxed linearly, as in Shi et al., NeurIPS 2022, with independent slope
variables instead of the forward pass's): an affine step maps d and C by W^T exactly; an
activation multiplies unit j by a slope s_j in [a_j, b_j] (one value when the unit's sign
is fixed on the set): s_j g_j = t_j g_j + (s_j - t_j) g_j with t_j the interval's midpoint,
and the last term, at most (b_j - a_j) / 2 * max |g_j| in size, becomes a fresh variable;
a max pool whose window may be won by several entries sends g_o to its surest winner p1
plus, for each other possible winner p, delta_p g_o (e_p - e_p1) with delta_p in [0, 1],
relaxed the same way (a decided window is exact). max |g_j| is the smaller of the
zonotope's own bound and the interval hull's (`jacobian.py`, run alongside).
Because the relaxation keeps the terms every coordinate shares, the cancellations that the
interval hull loses at each affine step survive.

The Lipschitz constant of x -> r . f(x) on the (convex) set is at most the largest
||d + C z||_2 over the box, bounded by `box_norm.sup_norm` (the SDP-dual bound).
Results are inflated by a relative 1e-9 against float64 rounding.
"""
from __future__ import annotations

import torch

from lipcheck.propagation.box_norm import sup_norm
from lipcheck.propagation.jacobian import SAFETY, _back, slope_interval
from lipcheck.propagation.program import Act, Add, Affine, MaxPool, Program, sources
from lipcheck.propagation.ranges import Ranges, _pool_gather


class Zono:
    """Rows of a backward vector: centre d (B, m, n), generators C (B, m, n, q), and the
    interval hull (lo, hi) (B, m, n) of the same set, propagated alongside."""

    def __init__(self, d, gens, lo, hi):
        self.d, self.gens, self.lo, self.hi = d, gens, lo, hi

    def radius(self) -> torch.Tensor:
        """max |g_j| over the set, per coordinate (the tighter of the two bounds)."""
        spread = self.gens.abs().sum(dim=3)
        zono = torch.maximum((self.d + spread).abs(), (self.d - spread).abs())
        return torch.minimum(zono, torch.maximum(self.lo.abs(), self.hi.abs()))

    def plus(self, other: Zono) -> Zono:
        """The sum of two backward vectors over the same fresh variables (a residual)."""
        q1, q2 = self.gens.shape[3], other.gens.shape[3]
        a = torch.nn.functional.pad(self.gens, (0, max(q2 - q1, 0)))
        b = torch.nn.functional.pad(other.gens, (0, max(q1 - q2, 0)))
        return Zono(self.d + other.d, a + b, self.lo + other.lo, self.hi + other.hi)


def _fresh(gens: torch.Tensor, scale: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Append one generator per unit in `cols`: unit cols[k] gets scale[..., cols[k]]."""
    b, m, n, q = gens.shape
    new = torch.zeros(b, m, n, len(cols), dtype=gens.dtype)
    new[:, :, cols, torch.arange(len(cols))] = scale[:, :, cols]
    return torch.cat([gens, new], dim=3)


def _act(z: Zono, step: Act, bounds) -> Zono:
    s_lo, s_hi = slope_interval(step.alpha, *bounds)          # (B, n)
    mid, half = ((s_lo + s_hi) / 2)[:, None, :], ((s_hi - s_lo) / 2)[:, None, :]
    rad = z.radius() * half                                    # (B, m, n)
    cols = torch.nonzero((s_lo != s_hi).any(dim=0)).flatten()
    gens = _fresh(z.gens * mid[..., None], rad, cols)
    return Zono(z.d * mid, gens, z.lo, z.hi)


def _pool(z: Zono, step: MaxPool, bounds) -> Zono:
    lw, uw = _pool_gather(step, bounds[0]), _pool_gather(step, bounds[1])   # (B, n_out, k)
    possible = uw >= lw.amax(dim=2, keepdim=True)
    first = lw.argmax(dim=2, keepdim=True)
    batch, m, n_out = z.d.shape
    k, n_in = step.windows.shape[1], step.n_in
    idx = step.windows.expand(batch, -1, -1)
    p1 = idx.gather(2, first).squeeze(2)                       # (B, n_out) surest winner
    others = possible & (torch.arange(k) != first)             # (B, n_out, k)

    def scatter(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """values (B, m, n_out, ...) added at entries where (B, n_out) -> (B, m, n_in, ...)."""
        out = torch.zeros(batch, m, n_in + 1, *values.shape[3:], dtype=values.dtype)
        index = where[:, None].expand(-1, m, -1)
        index = index.reshape(*index.shape, *([1] * (values.dim() - 3))).expand_as(values)
        return out.scatter_add_(2, index, values)[:, :, :n_in]

    d, gens, fresh = scatter(z.d, p1), scatter(z.gens, p1), []
    rad = z.radius() / 2
    for slot in range(k):
        on = others[:, :, slot]                                # (B, n_out)
        if not bool(on.any()):
            continue
        onf = on[:, None, :].to(z.d.dtype)
        p = idx[:, :, slot].where(on, torch.full_like(p1, n_in))
        shared = z.gens * onf[..., None] / 2
        d = d + scatter(z.d * onf / 2, p) - scatter(z.d * onf / 2, p1.where(on, n_in))
        gens = gens + scatter(shared, p) - scatter(shared, p1.where(on, n_in))
        cols = torch.nonzero(on.any(dim=0)).flatten()          # one variable per window
        new = torch.zeros(batch, m, n_out, len(cols), dtype=z.d.dtype)
        new[:, :, cols, torch.arange(len(cols))] = (rad * onf)[:, :, cols]
        fresh.append(scatter(new, p) - scatter(new, p1.where(on, n_in)))
    gens = torch.cat([gens, *fresh], dim=3)
    lo, hi = _back(step, 0, z.lo, z.hi, Ranges({0: bounds}))
    return Zono(d, gens, lo, hi)


def _step(z: Zono, step, i: int, ranges: Ranges) -> Zono:
    if isinstance(step, Affine):
        w = step.weight
        lo, hi = _back(step, i, z.lo, z.hi, ranges)
        return Zono(z.d @ w, torch.einsum("bmnq,nk->bmkq", z.gens, w), lo, hi)
    if isinstance(step, Act):
        lo, hi = _back(step, i, z.lo, z.hi, ranges)
        out = _act(z, step, ranges.pre[i])
        out.lo, out.hi = lo, hi
        return out
    if isinstance(step, MaxPool):
        return _pool(z, step, ranges.pre[i])
    assert isinstance(step, Add), "steps are affine, activations, pools or sums"
    return z


def zonotope(program: Program, ranges: Ranges, rows: torch.Tensor) -> Zono:
    """The zonotope (d, C) over the input containing rows @ J(x) for every x in the set."""
    rows = rows.to(torch.float64)
    b, m, _ = rows.shape
    pending = {len(program.steps): Zono(rows, rows.new_zeros(*rows.shape, 0), rows, rows)}
    for i in range(len(program.steps) - 1, -1, -1):
        found = pending.pop(i + 1, None)
        if found is None:
            continue
        out = _step(found, program.steps[i], i, ranges)
        for v in sources(program.steps, i):
            pending[v] = out if v not in pending else pending[v].plus(out)
    if 0 not in pending:
        zero = torch.zeros(b, m, program.n_in, dtype=torch.float64)
        return Zono(zero, zero[..., None], zero, zero)
    return pending[0]


def zonotope_row_bounds(program: Program, ranges: Ranges, rows: torch.Tensor,
                        chunk: int = 4) -> torch.Tensor:
    """(B, m): an upper bound of the Lipschitz constant of each x -> r . f(x) on its set
    (the smaller of the zonotope's and the interval hull's), `chunk` sets at a time."""
    out = []
    for s in range(0, rows.shape[0], chunk):
        part = Ranges({i: (lo[s:s + chunk], hi[s:s + chunk]) for i, (lo, hi)
                       in ranges.pre.items()}, None)
        z = zonotope(program, part, rows[s:s + chunk])
        hull = torch.linalg.vector_norm(torch.maximum(z.lo.abs(), z.hi.abs()), dim=2)
        out.append(torch.minimum(sup_norm(z.d, z.gens), hull))
    return torch.cat(out) * SAFETY
