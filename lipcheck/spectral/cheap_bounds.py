"""Certified norm bounds that cost one pass over the weights: what a layer keeps when its
--layer-budget runs out (lipcheck.spectral.layer_clock).

`matrix_cheap_bound(M)`: ||M||_2 <= min(||M||_F, sqrt(||M||_1 ||M||_inf)) (Frobenius, and
Hoelder's inequality between the largest column and row sums).
`taps_bound(pk)`: a (polyphase) convolution is y = sum_a S_a k_a x with S_a a shift and
crop (norm <= 1), so ||A|| <= max over groups of sum_a ||k_a||_2, each ||k_a|| bounded as above.
Sums of n non-negative float64 terms are off by at most gamma_n relative: the margin.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from lipcheck.spectral.freq_gram import gamma

ROW_CHUNK_ENTRIES = 1 << 22
SECONDS_PER_ENTRY = 5e-8  # measured 2.3e-8 - 4.4e-8 (one thread, load 6): kept in reserve


def cheap_seconds(matrix: np.ndarray | torch.Tensor) -> float:
    """What `matrix_cheap_bound` is predicted to take (the reserve kept for it)."""
    return SECONDS_PER_ENTRY * math.prod(matrix.shape) + 0.01


def matrix_cheap_bound(matrix: np.ndarray | torch.Tensor) -> float:
    m = torch.as_tensor(matrix).detach().cpu()
    if m.dim() == 1:
        m = m[None]
    m = m.reshape(m.shape[0], -1)
    if m.numel() == 0:
        return 0.0
    squares, rows = 0.0, []
    columns = torch.zeros(m.shape[1], dtype=torch.float64)
    step = max(1, ROW_CHUNK_ENTRIES // max(1, m.shape[1]))
    for start in range(0, m.shape[0], step):
        part = m[start:start + step].to(torch.float64).abs()
        squares += float(part.square().sum())
        rows.append(part.sum(dim=1))
        columns += part.sum(dim=0)
    holder = float(torch.cat(rows).max()) * float(columns.max())
    value = math.sqrt(min(squares, holder) * (1 + 4 * gamma(m.numel())))
    return value * (1 + 8 * gamma(1)) if math.isfinite(value) else math.inf


def taps_bound(taps: torch.Tensor) -> float:
    """max over groups of sum over taps of matrix_cheap_bound(k_a); taps (groups, T, C_out, C_in)."""
    per_group = [sum(matrix_cheap_bound(taps[g, a]) for a in range(taps.shape[1]))
                 for g in range(taps.shape[0])]
    return max(per_group, default=0.0) * (1 + 4 * gamma(taps.shape[1]))
