"""Certified upper bounds on the largest eigenvalue of a batch of Hermitian PSD blocks.

`cholesky_certify(G, tau)` proves lambda_max(G) < tau by a floating-point Cholesky of
(tau - c) I - G and a posteriori check of Demmel's backward error: the computed factor R
satisfies R^H R = A + E with ||E||_2 <= gamma_{n+1} ||R||_F^2, so if the shift
c > gamma ||R||_F^2 + (rounding of the diagonal), tau I - G is positive definite.
`max_eig_bound` picks tau (an eigvalsh of a few blocks plus a small relative margin, raised
where a block's certificate fails; only the failing blocks are tested again). `gram_iteration_bound` is the Gram iteration
(Delattre et al. 2023) with an explicit rounding chain: an upper bound at every step.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg.lapack
import torch

from lipcheck.spectral.freq_gram import UNIT_ROUNDOFF, gamma

CHUNK_BYTES = 2**26


def _chunks(count: int, n: int) -> list[slice]:
    per = max(1, CHUNK_BYTES // max(1, 16 * n * n))
    return [slice(i, min(count, i + per)) for i in range(0, count, per)]


def cholesky_certify(blocks: torch.Tensor, tau: float) -> torch.Tensor:
    """Bool per block: True where tau I - G is proven positive definite."""
    n = blocks.shape[-1]
    out = torch.zeros(blocks.shape[0], dtype=torch.bool, device=blocks.device)
    for part in _chunks(blocks.shape[0], n):
        out[part] = _certify_chunk(blocks[part], tau)
    return out


def _certify_chunk(blocks: torch.Tensor, tau: float) -> torch.Tensor:
    n = blocks.shape[-1]
    shift = 2.0 * gamma(n + 2) * n * tau
    shifted = -blocks
    shifted.diagonal(dim1=-2, dim2=-1).add_(tau - shift)
    _, info = torch.linalg.cholesky_ex(shifted)
    return (info == 0) & _margin_holds(blocks.diagonal(dim1=-2, dim2=-1).real, tau, shift)


def _margin_holds(diagonal: torch.Tensor, tau: float, shift: float) -> torch.Tensor:
    """The computed factor R of A = (tau - c) I - G has sum_k |r_ki|^2 = a_ii + e_ii with
    |e_ii| <= g sum_k |r_ki|^2 (Demmel), so ||R||_F^2 <= trace(A) / (1 - g): no pass over R.
    True where the shift c exceeds g ||R||_F^2 plus the rounding of the diagonal."""
    n = diagonal.shape[-1]
    g = gamma(n + 2)
    size = n * abs(tau - shift) + diagonal.abs().sum(dim=-1)
    trace = n * (tau - shift) - diagonal.sum(dim=-1) + g * size  # >= trace(A), computed
    frob = trace.clamp_min(0.0) / (1.0 - g)
    rounding = 2.0 * UNIT_ROUNDOFF * (abs(tau - shift) + diagonal.abs().amax(dim=-1))
    return shift - g * frob - rounding > 0


def certify_dense(matrix: np.ndarray, tau: float) -> bool:
    """`cholesky_certify` for one large symmetric float64 matrix, factored in place by
    LAPACK (no copy: the matrix is consumed; its upper triangle is the one read)."""
    n = matrix.shape[0]
    shift = 2.0 * gamma(n + 2) * n * tau
    diagonal = torch.from_numpy(matrix.diagonal().copy())
    np.negative(matrix, out=matrix)
    matrix.flat[::n + 1] += tau - shift
    _, info = scipy.linalg.lapack.dpotrf(matrix.T, lower=1, overwrite_a=1, clean=0)
    return info == 0 and bool(_margin_holds(diagonal, tau, shift))


def squared_frobenius(blocks: torch.Tensor) -> torch.Tensor:
    if not blocks.is_complex():
        return torch.linalg.vector_norm(blocks, dim=(-2, -1)).square()
    return torch.linalg.vector_norm(torch.view_as_real(blocks), dim=(-3, -2, -1)).square()


def top_eigenvalues(blocks: torch.Tensor) -> torch.Tensor:
    values = [torch.linalg.eigvalsh(blocks[p])[:, -1] for p in _chunks(blocks.shape[0], blocks.shape[-1])]
    return torch.cat(values) if values else blocks.new_zeros(0).real


def max_eig_bound(blocks: torch.Tensor, eta: float = 2e-3) -> tuple[float, float, int]:
    """(tau, lower, worst): every block has lambda_max < tau (proven); `lower` is the
    largest eigenvalue computed (an estimate), found at block `worst`. Eigenvalues are
    computed for the blocks of largest trace (an eigvalsh costs ~4 Cholesky: one block in
    16), then for the blocks that fail (the largest-trace ones when many fail)."""
    count = blocks.shape[0]
    if count == 0 or float(squared_frobenius(blocks).max()) == 0.0:
        return 0.0, 0.0, 0
    trace = blocks.diagonal(dim1=-2, dim2=-1).real.sum(dim=-1)
    budget = max(2, count // 16)
    pending = torch.arange(count, device=blocks.device)
    lower, worst = _top_by_trace(blocks, trace, pending, budget)
    tau = max(lower, 0.0) * (1 + eta) + 1e-300
    for attempt in range(8):
        subset = blocks if pending.numel() == count else blocks[pending]
        pending = pending[~cholesky_certify(subset, tau)]
        if pending.numel() == 0:
            return tau, lower, worst
        value, index = _top_by_trace(blocks, trace, pending, budget)
        if value > lower:
            lower, worst = value, index
        grow = 1.0 if pending.numel() <= budget else 1.0 + eta * 2**attempt  # all failing seen
        tau = max(tau * grow, lower * (1 + eta)) * (1 + 1e-12)
    return fro_bound(blocks), lower, worst


def _top_by_trace(blocks: torch.Tensor, trace: torch.Tensor, among: torch.Tensor,
                  count: int) -> tuple[float, int]:
    """The largest top eigenvalue among the `count` blocks of `among` with largest trace."""
    picked = among[torch.topk(trace[among], min(count, among.numel())).indices]
    values = top_eigenvalues(blocks[picked])
    return float(values.max()), int(picked[int(values.argmax())])


def gram_iteration_bound(blocks: torch.Tensor, steps: int = 6) -> torch.Tensor:
    """Upper bounds on ||G||_2 per block: rho_t^2 <= s_t^2 rho_{t+1} + gamma_n F_t^2 for
    H_{t+1} = fl(H_t^H H_t) / s_t^2 (s_t a power of two: exact), rho_T <= ||H_T||_F."""
    n = blocks.shape[-1]
    g, up = gamma(n), 1.0 + gamma(n * n)
    h, frobs, scales = blocks, [], []
    for _ in range(steps):
        f = squared_frobenius(h).sqrt() * up
        scale = torch.exp2(torch.floor(torch.log2(f.clamp_min(1e-300))))
        frobs.append(f)
        scales.append(scale)
        h = (h.mH @ h) / (scale * scale)[:, None, None]
    rho = squared_frobenius(h).sqrt() * up
    for f, scale in zip(reversed(frobs), reversed(scales)):
        rho = torch.sqrt(scale * scale * rho + g * f * f) * (1 + 8 * UNIT_ROUNDOFF)
    return rho


def fro_bound(blocks: torch.Tensor) -> float:
    """||G||_2 <= ||G||_F, the trivial certificate."""
    if blocks.numel() == 0:
        return 0.0
    return float(squared_frobenius(blocks).sqrt().max()) * (1 + gamma(blocks.shape[-1] ** 2))
