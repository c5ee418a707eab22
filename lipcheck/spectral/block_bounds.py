"""Certified upper bounds on the largest eigenvalue of a batch of Hermitian PSD blocks.

`cholesky_certify(G, tau)` proves lambda_max(G) < tau by a floating-point Cholesky of
(tau - c) I - G and a posteriori check of Demmel's backward error: the computed factor R
satisfies R^H R = A + E with ||E||_2 <= gamma_{n+1} ||R||_F^2, so if the shift
c > gamma ||R||_F^2 + (rounding of the diagonal), tau I - G is positive definite.
`top_eig.max_eig_bound` chooses tau and certifies whole spectra with it.
`gram_iteration_bound` is the Gram iteration
(Delattre et al. 2023) with an explicit rounding chain: an upper bound at every step.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg.lapack
import torch

from lipcheck.spectral import layer_clock
from lipcheck.spectral.freq_gram import UNIT_ROUNDOFF, gamma
from lipcheck.spectral.scratch import Scratch

CHUNK_BYTES = 2**26
PER_CALL_S = 3e-5  # one LAPACK call from Python, measured: 2e-5 s per 16x16 complex block


def chunks(count: int, n: int, size: int = CHUNK_BYTES) -> list[slice]:
    per = max(1, size // max(1, 16 * n * n))
    return [slice(i, min(count, i + per)) for i in range(0, count, per)]


def cholesky_certify(blocks: torch.Tensor, tau: float, low_precision: bool = False,
                     scratch: Scratch | None = None) -> torch.Tensor:
    """Bool per block: True where tau I - G is proven positive definite. With
    `low_precision` the Cholesky runs in single precision (about twice as fast) with the
    margin that precision needs: n u_32 relative, so it proves only blocks well below tau."""
    n = blocks.shape[-1]
    scratch = scratch or Scratch()
    out = torch.zeros(blocks.shape[0], dtype=torch.bool, device=blocks.device)
    for part in chunks(blocks.shape[0], n):
        count = part.stop - part.start
        size = count * n ** 3 / 3 * (4 if blocks.is_complex() else 1)
        layer_clock.require(size, "Cholesky certificates", overhead=count * PER_CALL_S)
        out[part] = _certify_chunk(blocks[part], tau, low_precision, scratch)
    return out


SINGLE_ROUNDOFF = 2.0 ** -24


def _certify_chunk(blocks: torch.Tensor, tau: float, low_precision: bool,
                   scratch: Scratch) -> torch.Tensor:
    """Cholesky of A = (tau - c) I - G with a per-block shift c of 1.25 times the rounding
    bound that `_margin_holds` checks afterwards."""
    n = blocks.shape[-1]
    u = SINGLE_ROUNDOFF if low_precision else UNIT_ROUNDOFF
    diagonal = blocks.diagonal(dim1=-2, dim2=-1).real
    need = _rounding_need(n, tau, diagonal.sum(dim=-1), u)
    conversion = torch.zeros_like(need)
    if low_precision:
        # rounding A to single precision moves it by <= u ||A||_F <= u (||G||_F + sqrt(n) |tau - c|)
        fro = squared_frobenius(blocks).sqrt()
        conversion = u * (fro + math.sqrt(n) * 2 * abs(tau)) * (1 + 1e-6)
    shift = 1.25 * (need + conversion)
    dtype = blocks.dtype
    if low_precision:
        dtype = torch.complex64 if blocks.is_complex() else torch.float32
    shifted = scratch.take("shifted" + str(dtype), tuple(blocks.shape), dtype, blocks.device)
    if dtype == blocks.dtype:
        torch.neg(blocks, out=shifted)
    else:
        shifted.copy_(blocks).neg_()
    shifted.diagonal(dim1=-2, dim2=-1).copy_((tau - shift)[:, None] - diagonal)  # rounded once
    succeeded = _factor_in_place(shifted)
    return succeeded & (shift < 2 * abs(tau)) & _margin_holds(diagonal, tau, shift, u, conversion)


def _rounding_need(n: int, tau: float, trace: torch.Tensor, u: float) -> torch.Tensor:
    """What `_margin_holds` will ask of the shift, from the blocks' traces: Demmel's
    gamma_{n+2} ||R||_F^2 ~ gamma_{n+2} trace((tau - c) I - G), plus the diagonal's rounding.
    The shift taken is 1.25 times this (checked afterwards, never trusted)."""
    return gamma(n + 2, u) * (n * tau - trace).abs() + 4 * UNIT_ROUNDOFF * abs(tau)


_POTRF = {torch.complex128: scipy.linalg.lapack.zpotrf, torch.complex64: scipy.linalg.lapack.cpotrf,
          torch.float64: scipy.linalg.lapack.dpotrf, torch.float32: scipy.linalg.lapack.spotrf}


BATCHED_BELOW = 16  # smaller blocks: torch's batched Cholesky (one call, no per-block Python)


def _factor_in_place(blocks: torch.Tensor) -> torch.Tensor:
    """Bool per block: the floating-point Cholesky succeeded. On the CPU, LAPACK on each
    block in place (2-4x faster here than torch's batched Cholesky, which copies); the
    transposed view of a row-major Hermitian block is its conjugate, which has the same
    definiteness, diagonal and norms."""
    if blocks.device.type != "cpu" or blocks.shape[-1] < BATCHED_BELOW:
        return torch.linalg.cholesky_ex(blocks)[1] == 0
    potrf, array = _POTRF[blocks.dtype], blocks.numpy()
    return torch.tensor([potrf(array[i].T, lower=1, overwrite_a=1, clean=0)[1] == 0
                         for i in range(array.shape[0])], dtype=torch.bool)


def _margin_holds(diagonal: torch.Tensor, tau: float, shift: torch.Tensor | float,
                  u: float = UNIT_ROUNDOFF, conversion: torch.Tensor | float = 0.0) -> torch.Tensor:
    """The computed factor R of A = (tau - c) I - G (in the precision of unit roundoff u)
    has sum_k |r_ki|^2 = a_ii + e_ii with |e_ii| <= g sum_k |r_ki|^2 (Demmel), so
    ||R||_F^2 <= trace(A) / (1 - g): no pass over R. True where the shift c exceeds
    g ||R||_F^2, plus the rounding of the diagonal and of the conversion to precision u."""
    n = diagonal.shape[-1]
    g = gamma(n + 2, u)
    base = tau - torch.as_tensor(shift, dtype=torch.float64, device=diagonal.device)
    size = n * base.abs() + diagonal.abs().sum(dim=-1)
    trace = n * base - diagonal.sum(dim=-1) + g * size  # >= trace(A), computed
    frob = trace.clamp_min(0.0) / (1.0 - g)
    rounding = 2.0 * UNIT_ROUNDOFF * (base.abs() + diagonal.abs().amax(dim=-1))
    return base.new_tensor(tau) - base - g * frob - rounding - conversion > 0


def certify_dense(matrix: np.ndarray, tau: float) -> bool:
    """`cholesky_certify` for one large symmetric float64 matrix, factored in place by
    LAPACK (no copy: the matrix is consumed; its upper triangle is the one read)."""
    n = matrix.shape[0]
    layer_clock.require(n ** 3 / 3, "Cholesky certificate")
    diagonal = torch.from_numpy(matrix.diagonal().copy())
    shift = 1.25 * float(_rounding_need(n, tau, diagonal.sum(), UNIT_ROUNDOFF))
    np.negative(matrix, out=matrix)
    matrix.flat[::n + 1] += tau - shift
    _, info = scipy.linalg.lapack.dpotrf(matrix.T, lower=1, overwrite_a=1, clean=0)
    return info == 0 and bool(_margin_holds(diagonal[None], tau, shift)[0])


def squared_frobenius(blocks: torch.Tensor) -> torch.Tensor:
    if not blocks.is_complex():
        return torch.linalg.vector_norm(blocks, dim=(-2, -1)).square()
    return torch.linalg.vector_norm(torch.view_as_real(blocks), dim=(-3, -2, -1)).square()


def gram_iteration_bound(blocks: torch.Tensor, steps: int = 6) -> torch.Tensor:
    """Upper bounds on ||G||_2 per block: rho_t^2 <= s_t^2 rho_{t+1} + gamma_n F_t^2 for
    H_{t+1} = fl(H_t^H H_t) / s_t^2 (s_t a power of two: exact), rho_T <= ||H_T||_F."""
    n = blocks.shape[-1]
    g, up = gamma(n), 1.0 + gamma(n * n)
    h, frobs, scales = blocks, [], []
    for step in range(steps):
        if layer_clock.spent():  # fewer steps: still an upper bound (rho_t <= ||H_t||_F)
            layer_clock.note_cut(f"Gram iteration after {step} of {steps} steps")
            break
        f = squared_frobenius(h).sqrt() * up
        scale = torch.exp2(torch.floor(torch.log2(f.clamp_min(1e-300))))
        frobs.append(f)
        scales.append(scale)
        h = (h.mH @ h) / (scale * scale)[:, None, None]
    rho = squared_frobenius(h).sqrt() * up
    for f, scale in zip(reversed(frobs), reversed(scales), strict=True):
        rho = torch.sqrt(scale * scale * rho + g * f * f) * (1 + 8 * UNIT_ROUNDOFF)
    return rho


def fro_bound(blocks: torch.Tensor) -> float:
    """||G||_2 <= ||G||_F, the trivial certificate."""
    if blocks.numel() == 0:
        return 0.0
    return float(squared_frobenius(blocks).sqrt().max()) * (1 + gamma(blocks.shape[-1] ** 2))
