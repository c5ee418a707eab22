"""The Gram matrix of a stride-1 multi-channel correlation at every frequency of a grid.

With taps k_a (C_out x C_in) at offsets a, the circular correlation on an N-grid is
block-diagonal in frequency: K(w) = sum_a k_a e^{i w.a}. Its Gram on the smaller side,
e.g. K(w)^H K(w) = sum_delta Gamma_delta e^{-i w.delta} with Gamma_delta = sum_{a-b=delta}
k_a^T k_b, is computed from the T(T+1)/2 tap-pair products a <= b (real matmuls) and one
real DFT (cosine and sine matmuls) over the offsets of the Gammas: no per-frequency matmul. Only half the
spectrum is formed (G(-w) is the conjugate of G(w): same eigenvalues).

`frequency_grams` also returns an absolute bound on the rounding error of every block
(spectral norm), from an elementwise bound: every term is at most B_ij =
(|K|_1^T |K|_1)_ij, where |K|_1 = sum_a |k_a|, each DFT output is a sum of at most prod(2N-1)
products with twiddles accurate to a few u (argument reduced exactly in integers).
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
    spans = tuple(int(v) + 1 for v in offsets.max(dim=0).values)
    gammas = _gammas(taps, offsets.to(device), spans).reshape(g, -1, n * n)
    cos, sin = _twiddles(spans, grid, device)  # (F, D) each
    blocks = torch.complex(cos @ gammas, sin @ gammas)  # sum_delta Gamma_delta e^{-i w.delta}
    return blocks.reshape(-1, n, n), _formation_error(taps, grid)


def _gammas(taps: torch.Tensor, offsets: torch.Tensor, spans: tuple[int, ...]) -> torch.Tensor:
    """Gamma_delta = sum_{a-b=delta} k_a^T k_b as a (g, 2A_1-1, ..., 2A_d-1, n, n) tensor.
    Only the pairs a <= b are multiplied (k_b^T k_a is the transpose): half the flops."""
    g, t, c_out, n = taps.shape
    dims = tuple(2 * a - 1 for a in spans)
    shift = torch.tensor([a - 1 for a in spans], dtype=torch.int64, device=taps.device)
    strides = torch.tensor([math.prod(dims[i + 1:]) for i in range(len(dims))],
                           dtype=torch.int64, device=taps.device)
    columns = taps.permute(0, 2, 1, 3).reshape(g, c_out, t * n)
    out = torch.zeros((g, math.prod(dims), n, n), dtype=torch.float64, device=taps.device)
    for a in range(t):
        pairs = (taps[:, a].mT @ columns[:, :, a * n:]).reshape(g, n, t - a, n).permute(0, 2, 1, 3)
        ahead = (offsets[a] - offsets[a:] + shift) @ strides  # flat index of a - b, b >= a
        behind = (offsets[a:] - offsets[a] + shift) @ strides  # of b - a
        out.index_add_(1, ahead, pairs)
        out.index_add_(1, behind[1:], pairs[:, 1:].mT)
    return out.reshape(g, *dims, n, n)


def _twiddles(spans: tuple[int, ...], grid: tuple[int, ...], device: torch.device | str
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and -sin of w.delta for the half-spectrum frequencies w (rows) and the offsets
    delta = -(span-1)..span-1 per axis (columns). Each axis's phase f*delta is reduced mod
    N exactly in integers; the fractions are summed in float64 (angle error a few u)."""
    turns = torch.zeros(1, 1, dtype=torch.float64)
    for axis, (span, size) in enumerate(zip(spans, grid)):
        keep = size // 2 + 1 if axis == len(grid) - 1 else size
        delta = torch.arange(-(span - 1), span, dtype=torch.int64)
        freq = torch.arange(keep, dtype=torch.int64)
        frac = torch.remainder(freq[:, None] * delta[None, :], size).to(torch.float64) / size
        turns = (turns[:, None, :, None] + frac[None, :, None, :]).reshape(turns.shape[0] * keep, -1)
    angle = turns * (2 * math.pi)
    return angle.cos().to(device), (-angle.sin()).to(device)


def _formation_error(taps: torch.Tensor, grid: tuple[int, ...]) -> float:
    g, t, c_out, n = taps.shape
    absolute = taps.abs().sum(dim=1)  # (g, C_out, n): |K|_1
    scale = float((absolute.square().sum(dim=(1, 2))).max())  # ||B||_F <= ||  |K|_1 ||_F^2
    # the DFT sums <= (2N-1)^d terms; twiddle angles carry < (2 pi d (d + 3) + 2) u error
    d = len(grid)
    dft_terms = math.prod(2 * a - 1 for a in grid) + 8 * d * (d + 3) + 8
    return gamma(c_out + t * t + dft_terms + 8) * scale
