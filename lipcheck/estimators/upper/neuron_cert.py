"""The float64 certificate of per-neuron LipSDP-Neuron on a two-conv chain (neuron_eval).

Q(rho, T) >= 0 (see neuron_eval) with T1 > 0 diagonal holds iff its Schur complement on
the first hidden layer is PSD:
  S(rho) = [[rho I - P, C], [C^T, D]],  P = q W1^T T1 W1,  C = -q G^T T2,
  D = T2 - q T2 W2 T1^{-1} W2^T T2 - W3^T W3,   G = W2 W1,  q = b^2 / 4.
S is formed in float64 with an entrywise bound on its error: every entry is a sum of at
most K products of at most five factors, so |computed - exact| <= gamma_{K+8} times the
same sums of absolute values (computed alongside, doubled to cover their own rounding);
its Frobenius norm bounds the spectral one (`form`). Then one floating-point Cholesky of
S - cI (D - cI by LAPACK, Z = L^{-1} C^T by substitution, the head (rho - c) I - P - Z^T Z)
has R^T R = S - cI + E with ||E||_2 <= gamma_{n+4} ||R||_F^2 (Demmel). If c exceeds that,
`form` and the diagonal's rounding, the exact S(rho) is positive definite and
L <= sqrt(rho). rho is set just above the top eigenvalue of the computed P + Z^T Z.
The Cholesky of D - cI is taken PANEL columns at a time (LAPACK's factor of the panel,
a triangular solve below it, a rank-PANEL update of the lower triangle of the rest: the
same sums in another order, so the same bound holds); the clock is read before each
panel and between the steps, and a certificate the deadline stops is not verified (the
caller keeps its channel-wise value).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.linalg.blas

from lipcheck.estimators.upper.neuron_conv import NeuronChain
from lipcheck.spectral.freq_gram import UNIT_ROUNDOFF, gamma

RHO_SLACK = 1e-7
PANEL = 1024         # columns of D - cI factored between two readings of the clock (1.1-1.2x
                     # LAPACK's time on a 4608-row block; 512 columns: 2.5x)


@dataclass
class NeuronCertificate:
    rho: float
    verified: bool
    shift: float
    need: float
    detail: str


def schur_parts(chain: NeuronChain, t1: np.ndarray, t2: np.ndarray):
    """Computed P, C^T, D and the Frobenius bound on their joint error (C counted twice)."""
    q = chain.slope ** 2 / 4
    w1, w2, w3 = chain.w1, chain.w2, chain.close
    a1, a2 = abs(w1), abs(w2)
    inv = 1.0 / t1
    p = q * (w1.T @ w1.multiply(t1[:, None])).toarray()
    p_abs = q * (a1.T @ a1.multiply(t1[:, None])).toarray()
    g = (w2 @ w1).toarray()
    g_abs = (a2 @ a1).toarray()
    ct = -q * t2[:, None] * g
    ct_abs = q * t2[:, None] * g_abs
    w3_abs = np.abs(w3).T @ np.abs(w3)
    d_abs = (a2 @ a2.multiply(inv[None, :]).T).toarray()     # in place: blocks of d2^2
    d_abs *= q * t2[:, None]
    d_abs *= t2[None, :]
    d_abs += w3_abs
    d_abs[np.diag_indices_from(d_abs)] += t2
    d_squares = float(np.einsum("ij,ij->", d_abs, d_abs))
    del d_abs
    d = (w2 @ w2.multiply(inv[None, :]).T).toarray()
    d *= -q * t2[:, None]
    d *= t2[None, :]
    d -= w3.T @ w3
    d[np.diag_indices_from(d)] += t2
    terms = max(np.diff(w1.tocsc().indptr).max(), np.diff(w2.tocsc().indptr).max()) \
        * max(np.diff(w2.indptr).max(), 1) + w3.shape[0] + 8
    size = math.sqrt(float(np.sum(p_abs ** 2)) + 2 * float(np.sum(ct_abs ** 2)) + d_squares)
    form = 2 * gamma(terms) * size * (1 + 1e-6)
    return p, ct, d, form


def certify(chain: NeuronChain, t1: np.ndarray, t2: np.ndarray, margin: bool = True,
            rho: float | None = None, deadline: float = math.inf) -> NeuronCertificate:
    """Prove Q(rho, T) >= 0 in float64; rho None: the smallest the shifted factorisation
    allows (plus RHO_SLACK). margin=False drops the rounding and formation allowances
    (for tests: such a check must not be trusted). A second attempt (larger shift) starts
    only if, predicted to take as long as the first, it ends before `deadline`."""
    began = time.monotonic()
    t1, t2 = np.asarray(t1, dtype=np.float64), np.asarray(t2, dtype=np.float64)
    if not (np.all(t1 > 0) and np.all(t2 > 0) and np.all(np.isfinite(t1))
            and np.all(np.isfinite(t2))):
        return NeuronCertificate(math.inf, False, 0.0, 0.0, "multipliers not positive")
    p, ct, d, form = schur_parts(chain, t1, t2)
    if time.monotonic() > deadline:
        return _stopped(0.0)
    if not margin:
        form = 0.0
    n = p.shape[0] + d.shape[0]
    trace = float(np.trace(p)) + float(np.abs(np.diag(d)).sum()) + p.shape[0] * float(
        np.abs(np.diag(p)).max())
    shift = 1.25 * (2 * gamma(n + 4) * trace + form) if margin else 0.0
    result = _attempt(p, ct, d, form, shift, margin, rho, float(np.max(t2)), deadline)
    took = time.monotonic() - began
    if margin and not result.verified and result.need > 0 \
            and time.monotonic() + took <= deadline:
        result = _attempt(p, ct, d, form, 1.25 * result.need, margin, rho, float(np.max(t2)),
                          deadline)
    return result


def _stopped(shift: float) -> NeuronCertificate:
    return NeuronCertificate(math.inf, False, shift, 0.0, "stopped by the deadline")


def chunked_cholesky(a: np.ndarray, deadline: float, panel: int | None = None
                     ) -> np.ndarray | None:
    """The lower Cholesky factor of `a` (overwritten), `panel` (default PANEL) columns at a
    time; None if the clock passes `deadline` before a panel. Raises LinAlgError where `a`
    is not positive definite."""
    n, panel = a.shape[0], panel or PANEL
    for k in range(0, n, panel):
        if time.monotonic() > deadline:
            return None
        e = min(k + panel, n)
        a[k:e, k:e] = scipy.linalg.cholesky(a[k:e, k:e], lower=True, check_finite=False)
        if e < n:
            below = scipy.linalg.solve_triangular(a[k:e, k:e], a[e:, k:e].T, lower=True,
                                                  check_finite=False).T
            a[e:, k:e] = below
            a[e:, e:] = scipy.linalg.blas.dsyrk(-1.0, below, beta=1.0, c=a[e:, e:], lower=1)
    return np.tril(a)


def _attempt(p, ct, d, form, shift, margin, rho, diag_max, deadline) -> NeuronCertificate:
    n0, d2 = p.shape[0], d.shape[0]
    block = d.copy()
    block[np.diag_indices_from(block)] -= shift
    try:
        low = chunked_cholesky(block, deadline)
    except np.linalg.LinAlgError:
        return NeuronCertificate(math.inf, False, shift, 0.0,
                                 "the second layer's block is not positive definite")
    if low is None or time.monotonic() > deadline:
        return _stopped(shift)
    z = scipy.linalg.solve_triangular(low, ct, lower=True, check_finite=False)
    head = p + z.T @ z    # LAPACK below reads its lower triangle only: no symmetrising
    top = float(scipy.linalg.eigvalsh((head + head.T) / 2,
                                      subset_by_index=[n0 - 1, n0 - 1])[0])
    if rho is None:
        rho = shift + top * (1 + RHO_SLACK) + 1e-300
    s = -head
    s[np.diag_indices_from(s)] += rho - shift
    try:
        r_s = scipy.linalg.cholesky(s, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return NeuronCertificate(rho, False, shift, 0.0,
                                 "the input's Schur complement is not positive definite")
    squares = float(np.sum(low ** 2)) + float(np.sum(z ** 2)) + float(np.sum(r_s ** 2))
    terms = d2 * (d2 + n0) + n0 * n0
    frob = squares * (1 + gamma(terms + 2))
    g = gamma(n0 + d2 + 4)
    diagonal = 4 * UNIT_ROUNDOFF * (diag_max + abs(rho) + shift + float(np.abs(head).max()))
    need = (g * frob + form + diagonal) if margin else 0.0
    ok = shift > need if margin else True
    detail = (f"rho {rho:.9g}, shift {shift:.3g} > rounding + formation {need:.3g}" if ok
              else f"shift {shift:.3g} below the rounding + formation bound {need:.3g}")
    return NeuronCertificate(rho, ok, shift, need, detail)
