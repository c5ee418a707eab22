"""The exact Gram of a zero-padded convolution on a small grid, and a certified norm from it.

After polyphase (polyphase.py) the layer is y[i] = sum_a k_a x[i + a] on a phase grid, where
only some (position, channel) entries of x are real inputs (the others are zero padding).
Its input-side Gram A^T A has block (q, q') = sum over outputs i and taps a, b with
i + a = q, i + b = q' of k_a^T k_b: the same tap-pair products as the frequency blocks,
placed at position pairs instead of summed over a circle, then restricted to the real
entries. No embedding: lambda_max(A^T A) is the exact squared norm, proven <= tau by one
Cholesky certificate (block_bounds.certify_dense) with tau a Lanczos value times 1 + 1e-6.

Rounding: each Gram entry sums at most C_out * T products; elementwise it is off by at most
gamma_{C_out + T^2} B with B <= the circular Gram of |k|, so in spectral norm by
gamma || |K|_1 ||_F^2 (|K|_1 = sum_a |k_a|), added to tau before the square root.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import numpy as np

from lipcheck.spectral import layer_clock
from lipcheck.spectral.block_bounds import certify_dense
from lipcheck.spectral.dense_gram import top_eigenvalue
from lipcheck.spectral.freq_gram import UNIT_ROUNDOFF, gamma
from lipcheck.spectral.polyphase import PhaseKernel

# One thread, measured on this project's shared 2-core box (load average 8-10): a Gram of
# 4096 in 6.6 s, of 8192 in 34 s (assembly 6.6, float32 Lanczos 10.6, Cholesky 19.2), so
# about CUBIC * n^3 + SQUARE * n^2 seconds. Used only when the prediction fits
# Settings.layer_budget and the matrix fits MAX_DIM (12 * MAX_DIM^2 bytes with the float32
# copy: 1.2 GB).
CUBIC, SQUARE, PER_ADD = 5e-11, 1e-7, 1e-5
MAX_DIM = 10240
ETA = 1e-6
# Lanczos for tau, against ARPACK (scipy eigsh on the same float32 copy, tol 1e-6), on 10
# conv Grams of 512-6400 rows (load 7-8): 0.7-1.2x its time (0.2-2.6 s), Rayleigh quotient
# within 1e-10 of lambda_max where ARPACK's was within 2e-8 (one Gram: 7e-7 for both).


def real_entries(pk: PhaseKernel) -> np.ndarray:
    """Bool (prod(grid), C_eff): True where phase-grid position q of phase channel c is a
    real input (padded position s*q + t inside [pads_begin, pads_begin + size))."""
    spec = pk.spec
    phase = pk.channels.numpy() % math.prod(spec.strides)
    mask = np.ones((1, phase.size), dtype=bool)
    for axis, (s, b, n) in enumerate(zip(spec.strides, spec.pads_begin, spec.size, strict=True)):
        t = phase // math.prod(spec.strides[axis + 1:]) % s
        padded = np.arange(pk.grid[axis])[:, None] * s + t[None, :]
        inside = (padded >= b) & (padded < b + n)
        mask = (mask[:, None, :] & inside[None, :, :]).reshape(-1, phase.size)
    return mask


def gram_dim(pk: PhaseKernel) -> int:
    """Rows of the Gram as assembled (every phase channel at each position some real input
    occupies; the padding rows are removed after): what memory and time scale with."""
    if pk.empty:
        return 0
    return int(real_entries(pk).any(axis=1).sum()) * pk.taps.shape[3]


def predicted_seconds(pk: PhaseKernel, dim: int) -> float:
    """Plus PER_ADD per block addition (a Python loop over outputs x tap pairs: 0.66 s for
    3 channels at 32x32, 3x3 taps)."""
    adds = math.prod(pk.out_size) * pk.taps.shape[1] ** 2
    return pk.taps.shape[0] * (CUBIC * dim ** 3 + SQUARE * dim * dim + PER_ADD * adds)


def input_gram(taps: np.ndarray, pk: PhaseKernel, real: np.ndarray) -> np.ndarray:
    """A^T A (float64, n_real x n_real) for one group's taps (T, C_out, C_eff)."""
    t, _, n = taps.shape
    index = np.full(math.prod(pk.grid), -1, dtype=np.int64)
    used = real.any(axis=1)
    index[used] = np.arange(int(used.sum()))
    gram = np.zeros((int(used.sum()), n, int(used.sum()), n))
    flat = [_flat_positions(pk, a) for a in range(t)]
    for a in range(t):
        layer_clock.check("padded Gram assembly")
        for b in range(a, t):
            product = taps[a].T @ taps[b]
            for row, col in zip(index[flat[a]].tolist(), index[flat[b]].tolist(), strict=True):
                if row >= 0 and col >= 0:
                    gram[row, :, col, :] += product  # a view: added in place, no temporary
                    if b != a:
                        gram[col, :, row, :] += product.T
    mask = real[used].reshape(-1)
    square = gram.reshape(mask.size, mask.size)
    return square if mask.all() else square[np.ix_(mask, mask)]


def _flat_positions(pk: PhaseKernel, tap: int) -> np.ndarray:
    """Flat phase-grid index of i + offsets[tap] for every output position i."""
    outputs = np.array(list(np.ndindex(*pk.out_size)), dtype=np.int64).reshape(-1, len(pk.grid))
    shifted = outputs + pk.offsets[tap].numpy()
    return np.ravel_multi_index(tuple(shifted.T), pk.grid)


def formation_error(taps: np.ndarray) -> float:
    t, c_out, _ = taps.shape
    return gamma(c_out + t * t + 2) * float(np.square(np.abs(taps).sum(axis=0)).sum())


def exact_gram_norm(pk: PhaseKernel) -> float | None:
    """max over groups of a certified ||A_g|| from its exact Gram; None if a certificate
    fails (the caller falls back to the frequency bound)."""
    real = real_entries(pk)
    best = 0.0
    for group in range(pk.taps.shape[0]):
        taps = pk.taps[group].numpy()
        tau = _certified_top(partial(input_gram, taps, pk, real))
        if tau is None:
            return None
        best = max(best, math.sqrt(tau + formation_error(taps)) * (1 + 8 * UNIT_ROUNDOFF))
    return best


def _certified_top(build: Callable[[], np.ndarray]) -> float | None:
    """tau with lambda_max(fl(G)) < tau proven; G is rebuilt for each attempt (the
    certificate factors it in place)."""
    gram = build()
    if gram.size == 0 or not np.any(gram):
        return 0.0
    top = top_eigenvalue(gram, "padded Gram Lanczos")   # None: the caller uses the FFT bound
    if top is None:
        return None
    tau = max(top, 0.0) * (1 + ETA) + 1e-300
    for attempt in range(3):
        if attempt:
            gram, tau = build(), tau * (1 + 1e-4 * 10 ** attempt)
        if certify_dense(gram, tau):
            return tau
    return None
