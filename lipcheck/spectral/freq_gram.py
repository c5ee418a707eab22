"""The Gram matrix of a stride-1 multi-channel correlation at every frequency of a grid.

With taps k_a (C_out x C_in) at offsets a, the circular correlation on an N-grid is
block-diagonal in frequency: K(w) = sum_a k_a e^{i w.a}. Its Gram on the smaller side,
e.g. K(w)^H K(w) = sum_delta Gamma_delta e^{-i w.delta} with Gamma_delta = sum_{a-b=delta}
k_a^T k_b, is computed from the T^2 tap-pair products once (one real matmul) and one
small DFT per axis over the 2A-1 offsets of the Gammas: no per-frequency matmul. Only half the
spectrum is formed (G(-w) is the conjugate of G(w): same eigenvalues).

`frequency_grams` also returns an absolute bound on the rounding error of every block
(spectral norm), from an elementwise bound: every term is at most B_ij =
(|K|_1^T |K|_1)_ij, where |K|_1 = sum_a |k_a|, each DFT output is a sum of at most 2N-1
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
    x = _gammas(taps, offsets.to(device), spans).to(torch.complex128)
    for axis, (span, size) in enumerate(zip(spans, grid)):
        last = axis == len(grid) - 1
        x = _dft_axis(x, axis + 1, span, size, size // 2 + 1 if last else size)
    return x.reshape(-1, n, n), _formation_error(taps, grid)


def _gammas(taps: torch.Tensor, offsets: torch.Tensor, spans: tuple[int, ...]) -> torch.Tensor:
    """Gamma_delta = sum_{a-b=delta} k_a^T k_b as a (g, 2A_1-1, ..., 2A_d-1, n, n) tensor."""
    g, t, c_out, n = taps.shape
    dims = tuple(2 * a - 1 for a in spans)
    shift = torch.tensor([a - 1 for a in spans], dtype=torch.int64, device=taps.device)
    strides = torch.tensor([math.prod(dims[i + 1:]) for i in range(len(dims))],
                           dtype=torch.int64, device=taps.device)
    columns = taps.permute(0, 2, 1, 3).reshape(g, c_out, t * n)
    pairs = (columns.mT @ columns).reshape(g, t, n, t, n)  # k_a^T k_b
    out = torch.zeros((g, math.prod(dims), n, n), dtype=torch.float64, device=taps.device)
    for a in range(t):
        delta = (offsets[a] - offsets + shift) @ strides  # (T,) flat index of a - b
        out.index_add_(1, delta, pairs[:, a].permute(0, 2, 1, 3))
    return out.reshape(g, *dims, n, n)


def _dft_axis(x: torch.Tensor, axis: int, span: int, size: int, keep: int) -> torch.Tensor:
    """sum_delta x[..delta..] e^{-2 pi i f delta / size}, delta = -(span-1)..span-1, f < keep."""
    delta = torch.arange(-(span - 1), span, dtype=torch.int64, device=x.device)
    freq = torch.arange(keep, dtype=torch.int64, device=x.device)
    angle = torch.remainder(freq[:, None] * delta[None, :], size).to(torch.float64) * (2 * math.pi / size)
    twiddle = torch.polar(torch.ones_like(angle), -angle)  # (keep, D)
    moved = x.movedim(axis, 0)
    out = (twiddle @ moved.reshape(moved.shape[0], -1)).reshape(keep, *moved.shape[1:])
    return out.movedim(0, axis).contiguous()


def _formation_error(taps: torch.Tensor, grid: tuple[int, ...]) -> float:
    g, t, c_out, n = taps.shape
    absolute = taps.abs().sum(dim=1)  # (g, C_out, n): |K|_1
    scale = float((absolute.square().sum(dim=(1, 2))).max())  # ||B||_F <= ||  |K|_1 ||_F^2
    dft_terms = sum(4 * a + 8 for a in grid)  # sums of <= 2N-1 terms per axis, twiddles to ~u
    return gamma(c_out + t * t + dft_terms + 8) * scale
