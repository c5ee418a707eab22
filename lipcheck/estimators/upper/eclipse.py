"""ECLipsE and ECLipsE-Fast (Xu & Sivaranjani 2024): LipSDP-Neuron solved layer by layer.

Writing Q(rho, Lam) of lipcheck.estimators.upper.sdp_certificate with rho = 1 and taking Schur
complements from the input block gives X_0 = I and, per hidden layer i,
  X_i = Lam_i - m_i^2 Lam_i W_{i-1} X_{i-1}^{-1} W_{i-1}^T Lam_i,   m_i = (a_i + b_i)/2,
then L^2 = lambda_max(W_l^T W_l X_{l-1}^{-1}) (the dropped terms a_i b_i W^T Lam W are
PSD when a_i b_i >= 0, so dropping them is conservative).
- ECLipsE-Fast: Lam_i = lam_i I with lam_i = 1 / (2 m_i^2 lambda_max(W X^{-1} W^T)).
- ECLipsE: Lam_i from a small SDP per layer, max s such that
  [[Lam - s W_i^T W_i, Lam K^(1/2)], [K^(1/2) Lam, I]] >= 0, K = m^2 W_{i-1} X^{-1} W_{i-1}^T.
Either way the certificate (rho = L^2, rho Lam_i) is checked on the full LipSDP-Neuron
matrix in float64 before it is called certified.
"""
from __future__ import annotations

import math
import time

import numpy as np
import scipy.linalg

from lipcheck.estimators.upper.sdp_certificate import SdpResult, reduce_ends, verify
from lipcheck.estimators.upper.sdp_solver import pick_solver, require_cvxpy, solve

LAYER_S_PER_ENTRY = 2e-5   # a layer SDP's first-call cost per entry of its 2d x 2d block
                           # (cvxpy's compilation dominates: 0.8 s at d = 150 here, x 2)


def _fast_multiplier(w: np.ndarray, x_inv: np.ndarray, m: float) -> np.ndarray:
    k = w @ x_inv @ w.T
    top = float(scipy.linalg.eigvalsh((k + k.T) / 2, subset_by_index=[len(k) - 1] * 2)[0])
    return np.full(w.shape[0], 1.0 / (2 * m * m * max(top, 1e-300)))


def _sdp_multiplier(w: np.ndarray, w_next: np.ndarray, x_inv: np.ndarray, m: float,
                    seconds: float) -> tuple[np.ndarray, bool]:
    """A layer's multipliers from its SDP, and whether its solver's wall-clock limit
    may have stopped it."""
    cp = require_cvxpy()
    k = m * m * (w @ x_inv @ w.T)
    vals, vecs = np.linalg.eigh((k + k.T) / 2)
    root = (vecs * np.sqrt(np.maximum(vals, 0.0))) @ vecs.T
    d = w.shape[0]
    s, lam = cp.Variable(), cp.Variable(d, nonneg=True)
    lam_m = cp.diag(lam)
    block = cp.bmat([[lam_m - s * (w_next.T @ w_next), lam_m @ root], [root @ lam_m, np.eye(d)]])
    try:
        clocked = solve(cp.Problem(cp.Maximize(s), [(block + block.T) / 2 >> 0]),
                        pick_solver(2 * d), seconds)
    except cp.error.SolverError as exc:
        raise ArithmeticError(f"a layer SDP of ECLipsE failed: {exc}") from exc
    if lam.value is None:
        raise ArithmeticError("a layer SDP of ECLipsE found no solution")
    return np.maximum(lam.value, 0.0), clocked


class OutOfTime(ArithmeticError):
    """The next layer SDP, predicted to take as long as the last, would end past the deadline."""


def _run(weights: list[np.ndarray], slopes: list[tuple[float, float]], fast: bool,
         deadline: float = math.inf):
    """ECLipsE's layer SDPs share the time to `deadline` equally among the layers left and
    none starts that, predicted to take as long as the last one (the first: from its size,
    cvxpy imported first), would end past it. Returns (rho, multipliers, whether a layer
    solver's wall-clock limit may have stopped it)."""
    x = np.eye(weights[0].shape[1])
    if not fast:
        require_cvxpy()   # a one-time import (about a second), before the time left is judged
    lams, last, clocked = [], LAYER_S_PER_ENTRY * (2 * weights[0].shape[0]) ** 2, False
    for i, (a, b) in enumerate(slopes):
        w, m = weights[i], (a + b) / 2
        began = time.monotonic()
        if not fast and began + last > deadline:
            raise OutOfTime(f"the time budget was spent after {i} of {len(slopes)} layer SDPs")
        x_inv = np.linalg.inv(x)
        if fast:
            lam = _fast_multiplier(w, x_inv, m)
        else:
            lam, stopped = _sdp_multiplier(w, weights[i + 1], x_inv, m,
                                           (deadline - began) / (len(slopes) - i))
            clocked = clocked or stopped
        x = np.diag(lam) - m * m * (lam[:, None] * (w @ x_inv @ w.T) * lam[None, :])
        x = (x + x.T) / 2
        lams.append(lam)
        last = time.monotonic() - began
    last = weights[-1].T @ weights[-1]
    n = len(last)   # lambda_max(W^T W X^-1), X positive definite: a symmetric-definite pencil
    rho = float(scipy.linalg.eigh(last, x, eigvals_only=True, subset_by_index=[n - 1, n - 1])[0])
    return rho, [rho * lam for lam in lams], clocked


def fast_start(weights: list[np.ndarray], slopes: list[tuple[float, float]]
               ) -> tuple[float, list[np.ndarray]] | None:
    """A strictly feasible LipSDP-Neuron point (2 rho, 2 Lam) from ECLipsE-Fast (its last
    Schur complement is then at least half of a positive definite one), or None."""
    if any(a * b < 0 or a + b == 0 for a, b in slopes):
        return None
    try:
        rho, lams, _ = _run(weights, slopes, True)
    except (np.linalg.LinAlgError, ArithmeticError):
        return None
    if not (math.isfinite(rho) and rho > 0):
        return None
    return 2 * rho, [2 * lam for lam in lams]


def eclipse(weights: list[np.ndarray], slopes: list[tuple[float, float]], fast: bool,
            seconds: float = 600.0) -> SdpResult:
    name = "ECLipsE-Fast" if fast else "ECLipsE"
    start = time.monotonic()
    if any(a * b < 0 or a + b == 0 for a, b in slopes):
        return SdpResult(math.inf, False, f"{name} needs slopes with a*b >= 0 and a+b != 0")
    w = reduce_ends(weights)
    try:
        rho, lams, clocked = _run(w, slopes, fast, start + seconds)
    except (np.linalg.LinAlgError, ArithmeticError) as exc:
        return SdpResult(math.inf, False, f"{name} failed: {exc}", time.monotonic() - start,
                         isinstance(exc, OutOfTime))
    verified = verify(w, slopes, rho, lams)
    seconds = time.monotonic() - start
    if verified is None:
        return SdpResult(math.sqrt(max(rho, 0.0)), False,
                         f"{name}: the certificate did not verify in float64", seconds, clocked)
    note = "; a layer solver reached its wall-clock limit" if clocked else ""
    return SdpResult(math.sqrt(verified) * (1 + 1e-9), True,
                     f"{name}: rho {rho:.9g}, verified rho {verified:.9g} (float64 Cholesky "
                     f"check){note}", seconds, clocked)
