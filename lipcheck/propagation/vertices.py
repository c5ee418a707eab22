"""Local Lipschitz bounds by enumerating slope vertices while there are few of them.

For one input set and rows R, every Jacobian on the set is R W_k D_k ... D_1 W_1 with each
unstable unit's slope in an interval (and each undecided max-pool window's choice among
its possible winners). ||.||_2 of that product is convex in each unit's slope separately
(it is affine in it), so its maximum over the box of slopes is reached at a vertex: both
end slopes of every unstable unit, every possible winner of every window. `vertex_bounds`
walks backwards keeping the vertex products explicitly (all rows share a vertex: the
slopes belong to the point, not to the row) while there are at most `cap` (fewer for wide
layers: 2^23 floats at most), and switches to
their interval hull (then `jacobian.py`'s interval steps) when there would be more. An
enumeration that reaches the input gives sup ||r J|| (and sup ||J||_2: the spectral norm is
convex in each slope too) exactly. Chains only: on residual graphs the interval hull is used.
"""
from __future__ import annotations

import itertools

import torch

from lipcheck.propagation.jacobian import (
    SAFETY,
    _back_pool,
    _times,
    hull_matrix_norm,
    local_lipschitz,
    row_norm_bounds,
    slope_interval,
)
from lipcheck.propagation.program import Act, Affine, MaxPool, Program
from lipcheck.propagation.ranges import Ranges, _pool_gather

MAX_FLOATS = 1 << 23    # vertices x rows x width kept at once (64 MiB)


def _act_vertices(vecs: torch.Tensor, alpha: float, lo: torch.Tensor, hi: torch.Tensor):
    """vecs (V, m, n) -> (V * 2^u, m, n): every end-slope choice of the u unstable units."""
    s_lo, s_hi = slope_interval(alpha, lo, hi)
    unstable = torch.nonzero(s_lo != s_hi).flatten()
    base = vecs * s_lo
    if not len(unstable):
        return base
    corners = torch.tensor(list(itertools.product((0, 1), repeat=len(unstable))),
                           dtype=vecs.dtype)                      # (C, u)
    slopes = s_lo[unstable] + corners * (s_hi - s_lo)[unstable]   # (C, u)
    out = base[:, None].repeat(1, len(corners), 1, 1)             # (V, C, m, n)
    out[..., unstable] = vecs[:, None][..., unstable] * slopes[None, :, None, :]
    return out.reshape(-1, *vecs.shape[1:])


def _pool_vertices(vecs: torch.Tensor, step, lo: torch.Tensor, hi: torch.Tensor):
    """vecs (V, m, n_out) -> (V * C, m, n_in): every choice of each window's winner."""
    lw, uw = _pool_gather(step, lo[None])[0], _pool_gather(step, hi[None])[0]
    possible = uw >= lw.amax(dim=1, keepdim=True)                  # (n_out, k)
    choices = [torch.nonzero(possible[o]).flatten().tolist() for o in range(len(possible))]
    combos = torch.tensor(list(itertools.product(*choices)))        # (C, n_out)
    picked = step.windows[torch.arange(len(choices))[None], combos]  # (C, n_out)
    v, m, _ = vecs.shape
    out = torch.zeros(v, len(combos), m, step.n_in + 1, dtype=vecs.dtype)
    index = picked[None, :, None, :].expand(v, -1, m, -1)
    out.scatter_add_(3, index, vecs[:, None].expand(-1, len(combos), -1, -1).contiguous())
    return out[..., :step.n_in].reshape(-1, m, step.n_in)


def _count(step, i: int, ranges: Ranges, b: int) -> int:
    """How many vertices one vector becomes at step i (for the cap)."""
    lo, hi = ranges.pre[i][0][b], ranges.pre[i][1][b]
    if isinstance(step, Act):
        s_lo, s_hi = slope_interval(step.alpha, lo, hi)
        return 2 ** min(int((s_lo != s_hi).sum()), 62)
    lw, uw = _pool_gather(step, lo[None])[0], _pool_gather(step, hi[None])[0]
    per = (uw >= lw.amax(dim=1, keepdim=True)).sum(dim=1)
    return int(torch.prod(per.double()).clamp(max=2.0 ** 62))


def _walk(program: Program, ranges: Ranges, rows: torch.Tensor, b: int, cap: int):
    """Backwards from rows (m, n_out): ("vertices", (V, m, n_in)) or ("hull", (lo, hi))."""
    vecs = rows.to(torch.float64)[None]
    widest = max(max(s.weight.shape) if isinstance(s, Affine) else s.n_in
                 if isinstance(s, MaxPool) else 0 for s in program.steps)
    cap = max(1, min(cap, MAX_FLOATS // (rows.shape[0] * max(widest, 1))))
    hull = None
    for i in range(len(program.steps) - 1, -1, -1):
        step = program.steps[i]
        if hull is not None:
            hull = _hull_step(hull, step, i, ranges, b)
        elif isinstance(step, Affine):
            vecs = vecs @ step.weight
        elif len(vecs) * _count(step, i, ranges, b) <= cap:
            lo, hi = ranges.pre[i][0][b], ranges.pre[i][1][b]
            vecs = (_act_vertices(vecs, step.alpha, lo, hi) if isinstance(step, Act)
                    else _pool_vertices(vecs, step, lo, hi))
        else:
            hull = _hull_step((vecs.amin(dim=0), vecs.amax(dim=0)), step, i, ranges, b)
    return ("vertices", vecs) if hull is None else ("hull", hull)


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


def _row_norms(kind: str, value) -> torch.Tensor:
    if kind == "vertices":
        return torch.linalg.vector_norm(value, dim=2).amax(dim=0)
    return torch.linalg.vector_norm(torch.maximum(value[0].abs(), value[1].abs()), dim=1)


def _matrix_norm(kind: str, value) -> torch.Tensor:
    if kind == "vertices":
        return torch.linalg.matrix_norm(value, ord=2).amax()
    return hull_matrix_norm(*value)


def vertex_bounds(program: Program, ranges: Ranges, rows: torch.Tensor,
                  cap: int = 4096) -> torch.Tensor:
    """(B, m): sup over each set of ||r_i J|| (exact when the vertices fit under `cap`)."""
    if not program.is_chain:      # residual graphs: the interval hull only
        return row_norm_bounds(program, ranges, rows)
    out = [_row_norms(*_walk(program, ranges, rows[b], b, cap)) for b in range(rows.shape[0])]
    return torch.stack(out) * SAFETY


def vertex_lipschitz(program: Program, ranges: Ranges, cap: int = 1024) -> torch.Tensor:
    """(B,): sup over each set of ||J||_2 (exact when the vertices fit under `cap`)."""
    if not program.is_chain:      # residual graphs: the interval hull only
        return local_lipschitz(program, ranges)
    eye = torch.eye(program.n_out, dtype=torch.float64)
    batch = ranges.batch
    return torch.stack([_matrix_norm(*_walk(program, ranges, eye, b, cap))
                        for b in range(batch)]) * SAFETY
