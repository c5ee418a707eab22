"""Certified norm bounds that cost one pass over the weights: what a layer keeps when its
--layer-budget runs out (lipcheck.spectral.layer_clock).

`matrix_cheap_bound(M)`: ||M||_2 <= min(||M||_F, sqrt(||M||_1 ||M||_inf)) (Frobenius, and
Hoelder's inequality between the largest column and row sums).
`taps_bound(taps, norm)`: a (polyphase) convolution is y = sum_a S_a k_a x with S_a a shift
and crop (norm <= 1), so ||y|| <= sum_a ||k_a x|| <= sqrt(T) (sum_a ||k_a x||^2)^(1/2)
= sqrt(T) ||K_rows x|| with K_rows = [k_1; ...; k_T] stacked on the output side (k_a x
applies k_a at every position). Hence ||A|| <= sqrt(T) ||K_rows||, by the adjoint also
sqrt(T) ||[k_1 ... k_T]||, and <= sum_a ||k_a||; the smallest, max over groups. `norm` is
a certified matrix norm (the caller's: an SVD when it fits the budget, else the one-pass
bound above). Sums of n non-negative float64 terms are off by at most gamma_n relative.
"""
from __future__ import annotations

import math
from collections.abc import Callable

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


def taps_bound(taps: torch.Tensor, norm: Callable[[torch.Tensor], float] = matrix_cheap_bound
               ) -> float:
    """The bound above for taps (groups, T, C_out, C_in)."""
    t, c_out, c_in = taps.shape[1:]
    root = math.sqrt(t) * (1 + 4 * gamma(1))
    best = 0.0
    for k in taps:
        rows, cols = k.reshape(t * c_out, c_in), k.permute(1, 0, 2).reshape(c_out, t * c_in)
        tap_sum = sum(matrix_cheap_bound(k[a]) for a in range(t)) * (1 + 4 * gamma(t))
        best = max(best, min(root * norm(rows), root * norm(cols), tap_sum))
    return best


def stacked_flops(taps: torch.Tensor) -> float:
    """Matmul-equivalent flops of the two stacked norms of every group (their Grams, an
    eigvalsh and a Cholesky each: 2 m n^2 + 6 n^3 with n the smaller side)."""
    t, c_out, c_in = taps.shape[1:]
    total = 0.0
    for m, n in ((t * c_out, c_in), (c_out, t * c_in)):
        m, n = max(m, n), min(m, n)
        total += 2 * m * n * n + 6 * n ** 3
    return taps.shape[0] * total
