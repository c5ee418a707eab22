"""The Gram matrix of a stride-1 multi-channel correlation at every frequency of a grid.

With taps k_a (C_out x C_in) at offsets a, the circular correlation on an N-grid is
block-diagonal in frequency: K(w) = sum_a k_a e^{i w.a}. Its Gram on the smaller side,
e.g. K(w)^H K(w) = sum_delta Gamma_delta e^{-i w.delta} with Gamma_delta = sum_{a-b=delta}
k_a^T k_b, is computed from the T^2 tap-pair products once (one real matmul) and one
real FFT of the Gammas wrapped onto the grid: no per-frequency matmul. Only half the
spectrum is formed (G(-w) is the conjugate of G(w): same eigenvalues).

`frequency_grams` also returns an absolute bound on the rounding error of every block
(spectral norm), from an elementwise bound: every term is at most B_ij =
(|K|_1^T |K|_1)_ij, where |K|_1 = sum_a |k_a|, and the FFT's error in 2-norm is at most
c*log2(F)*u times its input's 2-norm (Higham, Accuracy and Stability, Thm 24.2).
"""
from __future__ import annotations

import math

import torch

UNIT_ROUNDOFF = 2.0 ** -53


def gamma(n: float) -> float:
    """Higham's gamma_n = n u / (1 - n u), with a factor 4 for complex arithmetic."""
    nu = 4.0 * n * UNIT_ROUNDOFF
    return nu / (1.0 - nu)


def frequency_grams(taps: torch.Tensor, offsets: torch.Tensor, grid: tuple[int, ...],
                    device: torch.device | str = "cpu") -> tuple[torch.Tensor, float]:
    """taps (groups, T, C_out, C_in) float64, offsets (T, d). Returns the Hermitian Gram
    blocks (groups * F, n, n) complex128 over the half spectrum, n = min(C_out, C_in),
    and an upper bound on the spectral norm of each block's rounding error."""
    taps = taps.to(device=device, dtype=torch.float64)
    if taps.shape[2] < taps.shape[3]:
        taps = taps.transpose(2, 3)  # the output side is smaller: K K^H has the same norm
    g, t, c_out, n = taps.shape
    wrapped = _wrapped_gammas(taps, offsets.to(device), grid)
    spectrum = torch.fft.rfftn(wrapped, dim=tuple(range(3, 3 + len(grid))))
    del wrapped
    blocks = spectrum.reshape(g, n, n, -1).permute(0, 3, 1, 2).reshape(-1, n, n)
    return blocks, _formation_error(taps, grid)


def _wrapped_gammas(taps: torch.Tensor, offsets: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """Gamma_delta (delta = a - b, taken modulo the grid) as a real (g, n, n, *grid) tensor."""
    g, t, c_out, n = taps.shape
    sizes = torch.tensor(grid, dtype=torch.int64, device=taps.device)
    strides = torch.tensor([math.prod(grid[i + 1:]) for i in range(len(grid))],
                           dtype=torch.int64, device=taps.device)
    columns = taps.permute(0, 2, 1, 3).reshape(g, c_out, t * n)
    pairs = (columns.mT @ columns).reshape(g, t, n, t, n)  # k_a^T k_b
    wrapped = torch.zeros((g, n, n, math.prod(grid)), dtype=torch.float64, device=taps.device)
    for a in range(t):
        delta = torch.remainder(offsets[a] - offsets, sizes) @ strides  # (T,) flat index
        wrapped.index_add_(3, delta, pairs[:, a].permute(0, 1, 3, 2))
    return wrapped.reshape(g, n, n, *grid)


def _formation_error(taps: torch.Tensor, grid: tuple[int, ...]) -> float:
    g, t, c_out, n = taps.shape
    absolute = taps.abs().sum(dim=1)  # (g, C_out, n): |K|_1
    scale = float((absolute.square().sum(dim=(1, 2))).max())  # ||B||_F <= ||  |K|_1 ||_F^2
    cells = math.prod(grid)
    fft_terms = 32.0 * (math.log2(max(cells, 2)) + 1.0) * math.sqrt(cells)
    return gamma(c_out + t * t + fft_terms + 8) * scale
