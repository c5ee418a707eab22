"""AutoLip on an input set: the product of per-layer norms with the dead units masked out.

Each activation's Jacobian on the set is D = diag(d) with d_i in [s_lo_i, s_hi_i], so
D = S^1/2 D' S^1/2 with S = diag(max |s|) and ||D'|| <= 1. The two halves go into the
neighbouring affine steps, so a chain ... W_2 D_1 W_1 ... is bounded by the product of
||S_next^1/2 W S_prev^1/2||_2: a unit dead on the whole set (S = 0) removes its row and
column. A max pool contributes sqrt(the largest number of windows one entry can win);
an activation next to a pool keeps only its affine-side half (the other is <= 1). Never
above the global AutoLip product of the merged affine steps; exact for a linear network.
On residual graphs `graph_masked` (AutoLip over the graph, each activation's S folded
into the affine step that reads it, a sum for Add).
"""
from __future__ import annotations

import math

import torch

from lipcheck.propagation.jacobian import SAFETY, slope_interval
from lipcheck.propagation.program import Act, Affine, MaxPool, Program, sources
from lipcheck.propagation.ranges import Ranges, _pool_gather


def _half(program: Program, ranges: Ranges, i: int, batch: int, n: int) -> torch.Tensor:
    """sqrt(max |slope|) of step i when it is an activation, else ones: (B, n)."""
    step = program.steps[i] if 0 <= i < len(program.steps) else None
    if isinstance(step, Act):
        s_lo, s_hi = slope_interval(step.alpha, *ranges.pre[i])
        return torch.maximum(s_lo.abs(), s_hi.abs()).sqrt()
    return torch.ones(batch, n, dtype=torch.float64)


def _pool_factor(step: MaxPool, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    lw, uw = _pool_gather(step, lo), _pool_gather(step, hi)
    possible = (uw >= lw.amax(dim=2, keepdim=True)).double()       # (B, n_out, k)
    counts = torch.zeros(lo.shape[0], step.n_in + 1, dtype=torch.float64)
    index = step.windows.reshape(1, -1).expand(lo.shape[0], -1)
    counts.scatter_add_(1, index, possible.reshape(lo.shape[0], -1))
    return counts[:, :step.n_in].amax(dim=1).clamp(min=0).sqrt()


def masked_product(program: Program, ranges: Ranges) -> torch.Tensor:
    """(B,): product over the steps of the masked per-layer norms, on each set."""
    batch = ranges.batch
    if not program.is_chain:      # a residual sum is not a product: the graph version
        return graph_masked(program, ranges)
    total = torch.ones(batch, dtype=torch.float64)
    for i, step in enumerate(program.steps):
        if isinstance(step, Affine):
            n_out, n_in = step.weight.shape
            left = _half(program, ranges, i - 1, batch, n_in)
            right = _half(program, ranges, i + 1, batch, n_out)
            masked = right[:, :, None] * step.weight * left[:, None, :]
            total = total * torch.linalg.matrix_norm(masked, ord=2)
        elif isinstance(step, MaxPool):
            total = total * _pool_factor(step, *ranges.pre[i])
    return total * SAFETY ** len(program.steps) * (1 + 1e-12 * math.sqrt(program.n_in))


def _act_scale(program: Program, ranges: Ranges, i: int) -> torch.Tensor:
    step = program.steps[i]
    assert isinstance(step, Act), "callers pass the index of an activation step"
    s_lo, s_hi = slope_interval(step.alpha, *ranges.pre[i])
    return torch.maximum(s_lo.abs(), s_hi.abs())


def _affine_factor(program: Program, ranges: Ranges, i: int, weight: torch.Tensor,
                   bound: dict[int, torch.Tensor]) -> torch.Tensor:
    """||W S_a|| * L(input of a) when step i reads an activation a, else ||W|| * L(input)."""
    v = sources(program.steps, i)[0]
    if v > 0 and isinstance(program.steps[v - 1], Act):
        scale, before = _act_scale(program, ranges, v - 1), sources(program.steps, v - 1)[0]
    else:
        scale, before = torch.ones(bound[v].shape[0], weight.shape[-1], dtype=torch.float64), v
    masked = weight * scale[:, None, :]
    norm = torch.linalg.matrix_norm(masked, ord=2)
    return norm * bound[before]


def graph_masked(program: Program, ranges: Ranges, rows: torch.Tensor | None = None):
    """AutoLip over the program's graph with masked norms: (B,), or (B, m) for rows.

    L(input) = 1; an affine step reading an activation a gets ||W S_a|| L(input of a) (the
    activation's Jacobian is S_a D' with ||D'|| <= 1), otherwise ||W|| L(input); an
    activation max S L(input); a max pool its window factor; a residual sum L(a) + L(b).
    With rows, the last (affine) step is rows @ W, one bound per row."""
    batch = ranges.batch
    bound = {0: torch.ones(batch, dtype=torch.float64)}
    last = len(program.steps) - 1
    for i, step in enumerate(program.steps):
        src = sources(program.steps, i)
        if isinstance(step, Affine):
            weight = step.weight
            if rows is not None and i == last:
                per_row = [_affine_factor(program, ranges, i, (rows[:, j:j + 1] @ weight), bound)
                           for j in range(rows.shape[1])]
                return torch.stack(per_row, dim=1) * SAFETY ** (i + 1)
            bound[i + 1] = _affine_factor(program, ranges, i, weight.expand(batch, -1, -1),
                                          bound)
        elif isinstance(step, Act):
            bound[i + 1] = _act_scale(program, ranges, i).amax(dim=1) * bound[src[0]]
        elif isinstance(step, MaxPool):
            bound[i + 1] = _pool_factor(step, *ranges.pre[i]) * bound[src[0]]
        else:
            bound[i + 1] = bound[src[0]] + bound[src[1]]
    if rows is not None:   # the last step is not affine: rows through it as a matrix
        norms = torch.linalg.vector_norm(rows, dim=2)
        return bound[last + 1][:, None] * norms * SAFETY ** (last + 1)
    return bound[last + 1] * SAFETY ** (last + 1)
