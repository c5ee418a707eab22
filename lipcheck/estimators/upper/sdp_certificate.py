"""The float64 certificate of LipSDP-Neuron (Fazlyab et al. 2019) for a chain
y = W_l phi(... phi(W_0 x)): what decides that an SDP's answer is certified, whichever
solver found it (the barrier method, cvxpy, ECLipsE's layer-by-layer multipliers).

For hidden layer i (x_i = phi_i(W_{i-1} x_{i-1}), slopes of phi_i in [a_i, b_i]) and
per-neuron multipliers Lam_i = diag(lam_i) >= 0, rho >= ||f||_Lip^2 whenever the
block-tridiagonal matrix Q(rho, Lam) is positive semidefinite:
  Q_00   = rho I + a_1 b_1 W_0^T Lam_1 W_0
  Q_ii   = Lam_i + a_{i+1} b_{i+1} W_i^T Lam_{i+1} W_i     (i < l; last: Lam_l - W_l^T W_l)
  Q_{i-1,i} = -(a_i + b_i)/2 W_{i-1}^T Lam_i
(sum over neurons of lam (dx - a dv)(b dv - dx) >= 0, added to rho|dx_0|^2 - |dy|^2).
The first and last weights may be replaced by U S and S V^T of their thin SVDs
(`reduce_ends`), which changes no difference norm and shrinks the SDP.

API for an SDP (MLP or convolutional) that wants the same guarantee:
- `verified_psd(Q)`: True only if the float64 matrix Q is PSD up to the rounding in
  forming it (a shifted Cholesky factorisation; any symmetric Q).
- `smallest_rho(base, n0, rho)`: the smallest rho' >= rho with base + rho' [I_n0, 0] verified
  PSD (to 1e-9 relative), or None: turns a solver's rho into a certified one.
- `verify(weights, slopes, rho, lams)`: the above for the MLP matrix Q built by `assemble`.
- `SdpResult`: what every SDP method returns (value, certified, detail, seconds, cut).
Nothing here imports a solver; numpy and scipy only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg

VERIFY_MAX_DIM = 4000   # largest Q checked by a dense Cholesky factorisation
EPS = np.finfo(np.float64).eps


@dataclass
class SdpResult:
    """A bound from an SDP method: certified only when its float64 check passed."""

    value: float
    certified: bool
    detail: str
    seconds: float = 0.0
    cut_by_budget: bool = False  # the wall-clock safety cap stopped the solver


def reduce_ends(weights: list[np.ndarray]) -> list[np.ndarray]:
    """Exact reduction: W_0 -> U S (rows of W_0 x are all that matter), W_l -> S V^T."""
    w = list(weights)
    u, s, vt = scipy.linalg.svd(w[0], full_matrices=False)
    keep = max(1, int(np.sum(s > s[0] * 1e-13))) if s.size else 0
    w[0] = u[:, :keep] * s[:keep]
    u, s, vt = scipy.linalg.svd(w[-1], full_matrices=False)
    keep = max(1, int(np.sum(s > s[0] * 1e-13))) if s.size else 0
    w[-1] = s[:keep, None] * vt[:keep]
    return w


def assemble(weights: list[np.ndarray], slopes: list[tuple[float, float]], rho: float,
             lams: list[np.ndarray]) -> np.ndarray:
    """Q(rho, Lam) in float64 (see the module docstring)."""
    dims = [weights[0].shape[1]] + [w.shape[0] for w in weights[:-1]]
    offsets = np.concatenate([[0], np.cumsum(dims)])
    q = np.zeros((offsets[-1], offsets[-1]))

    def block(i: int, j: int) -> tuple[slice, slice]:
        return slice(offsets[i], offsets[i + 1]), slice(offsets[j], offsets[j + 1])

    q[block(0, 0)] += rho * np.eye(dims[0])
    for i, ((a, b), lam) in enumerate(zip(slopes, lams, strict=True), start=1):
        w = weights[i - 1]
        q[block(i - 1, i - 1)] += a * b * (w.T * lam) @ w
        q[block(i, i)] += np.diag(lam)
        off = -(a + b) / 2 * (w.T * lam)
        q[block(i - 1, i)] += off
        q[block(i, i - 1)] += off.T
    q[block(len(dims) - 1, len(dims) - 1)] -= weights[-1].T @ weights[-1]
    return q


def verified_psd(q: np.ndarray) -> bool:
    """Q is PSD (up to the rounding in forming it, 32 n eps ||Q||_F): a floating-point
    Cholesky factorisation of Q - c I succeeds with c above Cholesky's backward error,
    (n + 1) eps / (1 - (n + 1) eps) tr(Q) (Rump, BIT 46, 2006), taken 4x. A Cholesky is
    ~10x cheaper than the smallest eigenvalue, and the check is as strict."""
    return _shifted_cholesky(q, 32 * q.shape[0] * EPS * float(np.linalg.norm(q, "fro")))


def _shifted_cholesky(q: np.ndarray, forming: float) -> bool:
    """A Cholesky of Q - c I succeeds, c = `forming` + Rump's bound on Cholesky's backward
    error taken 4x, 4 (n + 2) eps tr|Q|."""
    n = q.shape[0]
    shift = forming + 4 * (n + 2) * EPS * float(np.abs(np.diag(q)).sum())
    try:
        scipy.linalg.cholesky(q - shift * np.eye(n), lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return False
    return True


def verified_psd_scaled(q: np.ndarray, magnitude: np.ndarray, inner: int) -> bool:
    """Q is PSD, checked on D Q D with D = diag of powers of two near 1 / sqrt(Q_ii)
    (exact scaling; PSD-ness is kept by congruence), for a Q whose diagonal spans many
    orders (verified_psd's shift, a multiple of tr(Q) on every coordinate, then swamps
    the small ones). The forming error is bounded from `magnitude`, the same sums taken
    with absolute values (|Q_ij - fl(Q)_ij| <= gamma_k magnitude_ij, k = `inner` + 4
    terms a product sums, taken 2x), scaled by D; then Rump's Cholesky shift on D Q D.
    False where a diagonal entry is not positive."""
    diag = np.diag(q)
    if not np.all(diag > 0) or not np.all(np.isfinite(q)):
        return False
    d = np.exp2(-np.round(np.log2(np.sqrt(diag))))
    scaled = q * d[:, None] * d[None, :]
    k = inner + 4
    forming = 2 * k * EPS / (1 - k * EPS) * float(np.linalg.norm(
        magnitude * d[:, None] * d[None, :], "fro"))
    return _shifted_cholesky(scaled, forming)


def magnitude(weights: list[np.ndarray], slopes: list[tuple[np.ndarray, np.ndarray]],
              rho: float, lams: list[np.ndarray]) -> np.ndarray:
    """What `assemble` sums, with every term's absolute value (for verified_psd_scaled)."""
    absolute = [np.abs(w) for w in weights]
    plus = [(np.abs(a * b), np.abs((a + b) / 2)) for a, b in slopes]
    # diagonal blocks: rho I or diag(lam) plus |a b| |W|^T Lam |W| (a' = b' = sqrt|a b|);
    # the off-diagonal ones and the last block are set below
    m = np.abs(assemble(absolute, [(np.sqrt(ab), np.sqrt(ab)) for ab, _ in plus], rho, lams))
    dims = [weights[0].shape[1]] + [w.shape[0] for w in weights[:-1]]
    offsets = np.concatenate([[0], np.cumsum(dims)])
    for i, ((_, mid), lam) in enumerate(zip(plus, lams, strict=True), start=1):
        rows, cols = slice(offsets[i - 1], offsets[i]), slice(offsets[i], offsets[i + 1])
        m[rows, cols] = mid * (absolute[i - 1].T * lam)
        m[cols, rows] = m[rows, cols].T
    last = slice(offsets[-2], offsets[-1])
    m[last, last] = np.diag(np.abs(lams[-1])) + absolute[-1].T @ absolute[-1]
    return m


def smallest_rho(base: np.ndarray, n0: int, rho: float) -> float | None:
    """Smallest rho' >= rho (to 1e-9 relative) with base + rho' E verified PSD, or None."""
    shift = np.r_[np.ones(n0), np.zeros(len(base) - n0)]

    def ok(r: float) -> bool:
        return verified_psd(base + np.diag(r * shift))

    rho = max(rho, 1e-300)
    if not ok(rho * 1e6 + 1.0):
        return None
    low, high, step = rho, rho * (1 + 1e-12), 1e-9
    while not ok(high):
        low, high, step = high, rho * (1 + step), step * 10
    while high - low > 1e-9 * high:
        mid = 0.5 * (low + high)
        low, high = (low, mid) if ok(mid) else (mid, high)
    return high


def verify(weights: list[np.ndarray], slopes: list[tuple[float, float]], rho: float,
           lams: list[np.ndarray]) -> float | None:
    """A rho' >= rho for which Q(rho', (1 + t) Lam) is verified PSD in float64 (smallest
    Cholesky check, see verified_psd) at the given multipliers clipped to >= 0, trying
    a few small t (scaling Lam up helps the last block), or None."""
    lams = [np.maximum(np.asarray(lam, dtype=np.float64), 0.0) for lam in lams]
    if sum(w.shape[1] for w in weights) > VERIFY_MAX_DIM or not math.isfinite(rho):
        return None
    for t in (0.0, 1e-9, 1e-7, 1e-5, 1e-3):
        base = assemble(weights, slopes, 0.0, [(1 + t) * lam for lam in lams])
        found = smallest_rho(base, weights[0].shape[1], rho)
        if found is not None:
            return found
    return None
