"""Local Lipschitz bounds: the interval hull of every Jacobian on the set, propagated back.

For rows R (B, m, n_out) of output functionals, `jacobian_hull` returns intervals
[lo, hi] (B, m, n_in) that contain R J(x) for every (Clarke) Jacobian J(x) of the
network at every x of the set (Shi et al., NeurIPS 2022, the interval form): backwards
through the steps, an affine step multiplies by W (centre W, radius |W|), an activation
by its slope interval on the unit's range (a stable unit has one slope), a max pool sends
each output's interval to its window's possible winners (one winner: exact; several: the
hull of 0 and the interval, for each). By the chain rule for Clarke Jacobians and the
mean value theorem for Lipschitz maps on a convex set, the Lipschitz constant of x -> R f(x)
on the set (L2 norms) is at most sup ||R J(x)||, which these hulls bound:
- one row r: ||r J|| <= || max(|lo|, |hi|) ||_2 (`row_norm_bounds`);
- a matrix: ||R J||_2 <= || max(|lo|, |hi|) ||_2 (the spectral norm of the entrywise
  bound, since |R J v| <= M |v| entrywise), and <= ||C||_2 + ||Rad||_2 (centre plus
  radius: exact when no slope is undecided); the smaller (`local_lipschitz`).
Results are inflated by a relative 1e-9 against float64 rounding.
"""
from __future__ import annotations

import torch

from lipcheck.propagation.program import Act, Affine, MaxPool, Program, sources
from lipcheck.propagation.ranges import Ranges, _pool_gather

SAFETY = 1 + 1e-9


def slope_interval(alpha: float, lo: torch.Tensor, hi: torch.Tensor):
    """Per-unit slope interval of max(z, alpha z) on [lo, hi]: fixed where the sign is."""
    one = torch.ones_like(lo)
    s_lo = torch.where(lo >= 0, one, alpha * one)
    s_hi = torch.where(hi <= 0, alpha * one, one)
    return s_lo, s_hi


def _times(lo, hi, s_lo, s_hi):
    """[lo, hi] * [s_lo, s_hi] with s_lo >= 0."""
    cands = torch.stack([lo * s_lo, lo * s_hi, hi * s_lo, hi * s_hi])
    return cands.amin(dim=0), cands.amax(dim=0)


def _back_pool(lo, hi, step: MaxPool, bounds):
    lw, uw = _pool_gather(step, bounds[0]), _pool_gather(step, bounds[1])
    possible = uw >= lw.amax(dim=2, keepdim=True)        # (B, n_out, k) may win
    single = possible.sum(dim=2, keepdim=True) == 1
    batch, m, n_out = lo.shape
    k = step.windows.shape[1]
    index = step.windows.expand(batch, -1, -1).reshape(batch, 1, n_out * k).expand(-1, m, -1)
    out = []
    for value, hull in ((lo, lo.clamp(max=0)), (hi, hi.clamp(min=0))):
        per = torch.where(single[:, None], value[..., None], hull[..., None])
        per = torch.where(possible[:, None], per, 0.0).reshape(batch, m, n_out * k)
        total = torch.zeros(batch, m, step.n_in + 1, dtype=lo.dtype)
        out.append(total.scatter_add_(2, index, per)[:, :, :step.n_in])
    return out[0], out[1]


def _back(step, i: int, lo, hi, ranges: Ranges):
    if isinstance(step, Affine):
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        mid, rad = mid @ step.weight, rad @ step.weight.abs()
        return mid - rad, mid + rad
    if isinstance(step, Act):
        s_lo, s_hi = slope_interval(step.alpha, *ranges.pre[i])
        return _times(lo, hi, s_lo[:, None, :], s_hi[:, None, :])
    if isinstance(step, MaxPool):
        return _back_pool(lo, hi, step, ranges.pre[i])
    return lo, hi          # Add: the same interval to both summands


def jacobian_hull(program: Program, ranges: Ranges, rows: torch.Tensor):
    """Intervals (lo, hi), each (B, m, n_in), containing rows @ J(x) for every x in the set."""
    rows = rows.to(torch.float64)
    pending = {len(program.steps): (rows, rows)}
    for i in range(len(program.steps) - 1, -1, -1):
        found = pending.pop(i + 1, None)
        if found is None:
            continue
        lo, hi = _back(program.steps[i], i, *found, ranges)
        for v in sources(program.steps, i):
            old = pending.get(v)
            pending[v] = (lo, hi) if old is None else (old[0] + lo, old[1] + hi)
    if 0 not in pending:
        zero = torch.zeros(*rows.shape[:2], program.n_in, dtype=torch.float64)
        return zero, zero
    return pending[0]


def row_norm_bounds(program: Program, ranges: Ranges, rows: torch.Tensor) -> torch.Tensor:
    """(B, m): an upper bound of the local Lipschitz constant of each x -> r . f(x)."""
    lo, hi = jacobian_hull(program, ranges, rows)
    return torch.linalg.vector_norm(torch.maximum(lo.abs(), hi.abs()), dim=2) * SAFETY


def local_lipschitz(program: Program, ranges: Ranges) -> torch.Tensor:
    """(B,): an upper bound of the local Lipschitz constant (L2) of f on each set."""
    batch = ranges.batch
    eye = torch.eye(program.n_out, dtype=torch.float64).expand(batch, -1, -1)
    return hull_matrix_norm(*jacobian_hull(program, ranges, eye)) * SAFETY


def hull_matrix_norm(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """sup ||M||_2 over lo <= M <= hi (an upper bound), batched over leading dims."""
    entrywise = torch.linalg.matrix_norm(torch.maximum(lo.abs(), hi.abs()), ord=2)
    centred = (torch.linalg.matrix_norm((lo + hi) / 2, ord=2)
               + torch.linalg.matrix_norm((hi - lo) / 2, ord=2))
    return torch.minimum(entrywise, centred)
