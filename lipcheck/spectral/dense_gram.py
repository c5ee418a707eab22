"""Certified ||M||_2 of a large dense matrix from its float64 Gram (Cholesky certificate).

`float64_gram` forms fl(M M^T) or fl(M^T M), the smaller, by column chunks converted to
float64 one at a time, each added by a symmetric rank-k update (BLAS dsyrk: one triangle,
half the flops of a general product), then mirrored in place. Every entry is a sum of the
k products of the inner dimension in some order, so it is off by at most gamma_k times the
same sum of absolute values: in spectral norm by gamma_k ||M||_F^2 (any order, any chunks).

`certified_top(G)` proves lambda_max(G) < tau for a symmetric float64 G: tau is a
Lanczos value (float32 copy, then the float64 Rayleigh quotient) times 1 + ETA, proven by one
float64 Cholesky of (tau - c) I - G factored in place on a copy (block_bounds.certify_dense), raised
(up to len(RAISES) times) when the factorisation fails. Used for VGG's 25088 x 4096 layer (a
Gram of 4096 rows). Under --layer-budget (spectral/layer_clock) the chunks, the Lanczos
products and each Cholesky are checked against the layer's clock.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg.blas
import torch

from lipcheck.spectral import layer_clock
from lipcheck.spectral.block_bounds import certify_dense
from lipcheck.spectral.freq_gram import gamma
from lipcheck.spectral.krylov import ResidualBelow, lanczos

GRAM_CHUNK_ENTRIES = 1 << 23   # float64 entries of one column chunk (64 MB)
CLOCKED_CHUNK_S = 0.25         # predicted seconds of one Gram chunk under a layer clock
MIRROR_ROWS = 256              # rows per block when the upper triangle is copied down
ETA = 1e-6
# tau is raised by these factors when the first Cholesky fails (the Lanczos value was
# below lambda_max by more than ETA): one Cholesky each, on a copy of the kept Gram
RAISES = (1e-5, 1e-4, 1e-3, 1e-2)
# Lanczos for tau, against ARPACK (scipy eigsh on the same float32 copy, tol 1e-6), on 10
# conv Grams of 512-6400 rows (load 7-8): 0.7-1.2x its time (0.2-2.6 s), Rayleigh quotient
# within 1e-10 of lambda_max where ARPACK's was within 2e-8 (one Gram: 7e-7 for both).
RESIDUAL, LANCZOS_STEPS = 1e-7, 300


def float64_gram(m: np.ndarray | torch.Tensor) -> tuple[np.ndarray, float]:
    """(the smaller Gram of M, float64, C-ordered and symmetric; an upper bound on
    ||M||_F^2), with no float64 copy of M (VGG's 25088 x 4096 layer: 0.8 GB)."""
    t = torch.as_tensor(m)
    t = t if t.shape[0] <= t.shape[1] else t.T
    n, k = t.shape
    upper = np.zeros((n, n), order="F")   # dsyrk writes its upper triangle in place
    frobenius = 0.0
    step = max(1, GRAM_CHUNK_ENTRIES // max(n, 1))
    if layer_clock.current() is not None:  # under --layer-budget: chunks of ~CLOCKED_CHUNK_S
        flops = CLOCKED_CHUNK_S * layer_clock.machine_rate()
        step = max(64, min(step, int(flops // max(1, n * n))))
    for j in range(0, k, step):
        layer_clock.check("Gram of the matrix")
        part = t[:, j:j + step].to(torch.float64).numpy()
        frobenius += float(np.einsum("ij,ij->", part, part))
        if part.flags.f_contiguous:       # a transposed input: part itself, A A^T
            upper = scipy.linalg.blas.dsyrk(1.0, part, beta=1.0, c=upper, overwrite_c=1)
        else:                             # part.T is Fortran-ordered: (A^T)^T (A^T) = A A^T
            upper = scipy.linalg.blas.dsyrk(1.0, part.T, beta=1.0, c=upper, trans=1,
                                            overwrite_c=1)
    gram = upper.T                        # C-ordered; its lower triangle holds the values
    _mirror_lower(gram)
    return gram, frobenius * (1 + gamma(k))


def _mirror_lower(g: np.ndarray) -> None:
    """Copy the lower triangle of a square C-ordered matrix onto its upper, by row blocks
    (no full-size temporary)."""
    n = g.shape[0]
    for lo in range(0, n, MIRROR_ROWS):
        hi = min(n, lo + MIRROR_ROWS)
        block = g[lo:hi, lo:hi]
        block[...] = np.tril(block) + np.tril(block, -1).T
        g[lo:hi, hi:] = g[hi:, lo:hi].T


def gram_norm(m: np.ndarray | torch.Tensor) -> float:
    """sigma_max(M) <= sqrt(tau + gamma_k ||M||_F^2), tau I - fl(Gram) proven positive
    definite; the trivial ||M||_F when no tau is proven (never seen)."""
    gram, frobenius = float64_gram(m)
    error = gamma(max(m.shape)) * frobenius
    tau = certified_top(gram)
    if tau is None:
        return math.sqrt(frobenius) * (1 + 1e-15)
    return math.sqrt(tau + error) * (1 + 1e-15)


def certified_top(gram: np.ndarray) -> float | None:
    """tau with lambda_max(G) < tau proven, or None; G is kept (each attempt factors a copy)."""
    if gram.size == 0 or not np.any(gram):
        return 0.0
    top = top_eigenvalue(gram)
    if top is None:
        return None
    base = max(top, 0.0) * (1 + ETA) + 1e-300
    work = np.empty_like(gram)
    for raise_by in (0.0, *RAISES):
        layer_clock.require(gram.shape[0] ** 3 / 3, "Cholesky of the Gram")
        np.copyto(work, gram)
        tau = base * (1 + raise_by)
        if certify_dense(work, tau):
            return tau
    return None


def top_eigenvalue(gram: np.ndarray, label: str = "Gram Lanczos") -> float | None:
    """Lanczos (krylov.lanczos) on a float32 copy (half the memory traffic per product) until
    the Ritz residual is below RESIDUAL of the Ritz value (at most LANCZOS_STEPS steps), then
    the float64 Rayleigh quotient of its vector: accurate to O(residual^2), an estimate only
    (the certificate proves the bound). Small matrices: a dense eigvalsh. `label`: what the
    layer clock reports if it stops the run (dense or padded conv Gram)."""
    if gram.shape[0] <= 256:
        return float(np.linalg.eigvalsh(gram)[-1])
    work = gram.astype(np.float32)
    start = np.random.default_rng(0).standard_normal(int(gram.shape[0])).astype(np.float32)

    def product(v: np.ndarray) -> np.ndarray:
        layer_clock.check(label)
        return work @ v
    run = lanczos(product, start, min(gram.shape[0], LANCZOS_STEPS), ResidualBelow(RESIDUAL))
    vector = run.top()[2].astype(np.float64)
    value = float(vector @ (gram @ vector)) / float(vector @ vector)
    return value if math.isfinite(value) else None
