"""Local Lipschitz bounds by enumerating slope vertices while there are few of them.

For one input set and rows R, every Jacobian on the set is R W_k D_k ... D_1 W_1 with each
unstable unit's slope in an interval (and each undecided max-pool window's choice among
its possible winners). ||.||_2 of that product is convex in each unit's slope separately
(it is affine in it), so its maximum over the box of slopes is reached at a vertex: both
end slopes of every unstable unit, every possible winner of every window. `vertex_bounds`
walks backwards keeping the set of vectors explicitly while it stays below `cap` per row,
and switches to the interval hull of the set (then `jacobian.py`'s interval steps) when it
would not; an exact enumeration to the end gives sup ||r J|| exactly.
"""
from __future__ import annotations

import itertools

import torch

from lipcheck.propagation.jacobian import SAFETY, _back_pool, _times, slope_interval
from lipcheck.propagation.program import Act, Affine, Program
from lipcheck.propagation.ranges import Ranges, _pool_gather


def _act_vertices(vecs: torch.Tensor, alpha: float, lo: torch.Tensor, hi: torch.Tensor):
    s_lo, s_hi = slope_interval(alpha, lo, hi)
    unstable = torch.nonzero(s_lo != s_hi).flatten()
    base = vecs * s_lo
    if not len(unstable):
        return base
    corners = torch.tensor(list(itertools.product((0, 1), repeat=len(unstable))),
                           dtype=vecs.dtype)                      # (V, u)
    slopes = s_lo[unstable] + corners * (s_hi - s_lo)[unstable]   # (V, u)
    out = base[:, None, :].repeat(1, len(corners), 1)             # (m, V, n)
    out[:, :, unstable] = vecs[:, None, unstable] * slopes
    return out.reshape(-1, vecs.shape[1])


def _pool_vertices(vecs: torch.Tensor, step, lo: torch.Tensor, hi: torch.Tensor):
    lw, uw = _pool_gather(step, lo[None])[0], _pool_gather(step, hi[None])[0]
    possible = uw >= lw.amax(dim=1, keepdim=True)                  # (n_out, k)
    choices = [torch.nonzero(possible[o]).flatten().tolist() for o in range(len(possible))]
    combos = list(itertools.product(*choices))
    picked = step.windows[torch.arange(len(choices))[None], torch.tensor(combos)]  # (V, n_out)
    out = torch.zeros(vecs.shape[0], len(combos), step.n_in + 1, dtype=vecs.dtype)
    out.scatter_add_(2, picked[None].expand(vecs.shape[0], -1, -1),
                     vecs[:, None, :].expand(-1, len(combos), -1).contiguous())
    return out[:, :, :step.n_in].reshape(-1, step.n_in)


def _count(step, i: int, ranges: Ranges, b: int) -> int:
    """How many vertices one vector becomes at step i (for the cap)."""
    lo, hi = ranges.pre[i][0][b], ranges.pre[i][1][b]
    if isinstance(step, Act):
        s_lo, s_hi = slope_interval(step.alpha, lo, hi)
        return 2 ** min(int((s_lo != s_hi).sum()), 62)
    lw, uw = _pool_gather(step, lo[None])[0], _pool_gather(step, hi[None])[0]
    per = (uw >= lw.amax(dim=1, keepdim=True)).sum(dim=1)
    return int(torch.prod(per.double()).clamp(max=2.0 ** 62))


def _one(program: Program, ranges: Ranges, rows: torch.Tensor, b: int, cap: int) -> torch.Tensor:
    m = rows.shape[0]
    owner = torch.arange(m)           # which row each vector belongs to
    vecs = rows.to(torch.float64)
    hull = None
    for i in range(len(program.steps) - 1, -1, -1):
        step = program.steps[i]
        if hull is not None:
            hull = _hull_step(hull, step, i, ranges, b)
        elif isinstance(step, Affine):
            vecs = vecs @ step.weight
        elif len(vecs) // m * _count(step, i, ranges, b) <= cap:
            lo, hi = ranges.pre[i][0][b], ranges.pre[i][1][b]
            before = len(vecs)
            vecs = (_act_vertices(vecs, step.alpha, lo, hi) if isinstance(step, Act)
                    else _pool_vertices(vecs, step, lo, hi))
            owner = owner.repeat_interleave(len(vecs) // before)
        else:
            hull = _to_hull(vecs, owner, m)
            hull = _hull_step(hull, step, i, ranges, b)
    if hull is None:
        norms = torch.linalg.vector_norm(vecs, dim=1)
        return torch.zeros(m, dtype=torch.float64).scatter_reduce(0, owner, norms, "amax")
    return torch.linalg.vector_norm(torch.maximum(hull[0].abs(), hull[1].abs()), dim=1)


def _to_hull(vecs, owner, m):
    n = vecs.shape[1]
    index = owner[:, None].expand(-1, n)
    lo = torch.full((m, n), torch.inf, dtype=vecs.dtype).scatter_reduce(0, index, vecs, "amin")
    hi = torch.full((m, n), -torch.inf, dtype=vecs.dtype).scatter_reduce(0, index, vecs, "amax")
    return lo, hi


def _hull_step(hull, step, i: int, ranges: Ranges, b: int):
    lo, hi = hull
    if isinstance(step, Affine):
        mid, rad = (lo + hi) / 2 @ step.weight, (hi - lo) / 2 @ step.weight.abs()
        return mid - rad, mid + rad
    bounds = (ranges.pre[i][0][b:b + 1], ranges.pre[i][1][b:b + 1])
    if isinstance(step, Act):
        s_lo, s_hi = slope_interval(step.alpha, *bounds)
        return _times(lo, hi, s_lo, s_hi)
    out = _back_pool(lo[None], hi[None], step, bounds)
    return out[0][0], out[1][0]


def vertex_bounds(program: Program, ranges: Ranges, rows: torch.Tensor,
                  cap: int = 4096) -> torch.Tensor:
    """(B, m): sup over the set of ||r_i J|| (exact when the vertices fit under `cap`)."""
    out = [_one(program, ranges, rows[b], b, cap) for b in range(rows.shape[0])]
    return torch.stack(out) * SAFETY
