"""LipSDP-Neuron solved by a small log-barrier interior-point method (no cvxpy).

Minimise rho over x = (rho, lam) subject to Q(rho, Lam) >= 0 and x >= 0 (Q: see
lipcheck.estimators.upper.sdp_certificate). Every multiplier lam_j enters Q as a rank-two term
  lam_j (p w w^T + q (w e^T + e w^T) + e e^T),  p = a b, q = -(a + b) / 2,
with w the neuron's weight row (in the previous block) and e its unit vector, so the
Newton system of the barrier -log det Q - sum log x is m x m with entries read off
V^T Q^-1 V (V = [w_1..w_m, e_1..e_m]): O(n^2 m) per step instead of the svec-sized
systems of a general conic solver. Every loop runs a fixed number of steps at most
with fixed tolerances, so the result is deterministic. The start point is
ECLipsE-Fast's certificate with rho doubled (strictly feasible).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg

TOL = 1e-9           # stop when the barrier's duality gap nu / t is below TOL * rho
GROWTH = 3.0        # t <- GROWTH * t after each centering
MAX_NEWTON = 400     # Newton steps in all, at most
CENTERED = 1e-4      # Newton decrement^2 / 2 below this (or no descent left): centred
CAP = 1e3            # lam_j <= CAP * max(start lam): without it a multiplier of a neuron that
                     # barely matters drifts to infinity and centring takes hundreds of steps


@dataclass
class Structure:
    n0: int
    upper: np.ndarray  # (m + 1,) box on x (inf for rho), kept by a log barrier
    f0: np.ndarray   # constant part: -W_l^T W_l on the last block
    v: np.ndarray    # (n, 2m): [w_1..w_m, e_1..e_m]
    p: np.ndarray    # (m,) a b of each multiplier's layer
    q: np.ndarray    # (m,) -(a + b) / 2


@dataclass
class BarrierResult:
    rho: float
    lams: list[np.ndarray]
    steps: int
    converged: bool
    cut_by_budget: bool = False  # the wall-clock safety cap stopped it (not reproducible)


def structure(weights: list[np.ndarray], slopes: list[tuple[float, float]]) -> Structure:
    dims = [weights[0].shape[1]] + [w.shape[0] for w in weights[:-1]]
    offsets = np.concatenate([[0], np.cumsum(dims)]).astype(int)
    n, m = int(offsets[-1]), int(sum(dims[1:]))
    v, p, q = np.zeros((n, 2 * m)), np.empty(m), np.empty(m)
    col = 0
    for i, ((a, b), w) in enumerate(zip(slopes, weights[:-1], strict=True), start=1):
        rows = w.shape[0]
        v[offsets[i - 1]:offsets[i], col:col + rows] = w.T
        v[offsets[i] + np.arange(rows), m + col + np.arange(rows)] = 1.0
        p[col:col + rows], q[col:col + rows] = a * b, -(a + b) / 2
        col += rows
    f0 = np.zeros((n, n))
    f0[offsets[-2]:, offsets[-2]:] = -weights[-1].T @ weights[-1]
    return Structure(dims[0], np.full(m + 1, np.inf), f0, v, p, q)


def matrix(st: Structure, x: np.ndarray) -> np.ndarray:
    m = len(st.p)
    vw, ve, lam = st.v[:, :m], st.v[:, m:], x[1:]
    cross = (vw * (st.q * lam)) @ ve.T
    f = st.f0 + (vw * (st.p * lam)) @ vw.T + (ve * lam) @ ve.T + cross + cross.T
    f[np.arange(st.n0), np.arange(st.n0)] += x[0]
    return f


def _derivatives(st: Structure, chol) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and Hessian of -log det Q at the factored Q."""
    m, n0 = len(st.p), st.n0
    g = scipy.linalg.cho_solve(chol, st.v, check_finite=False)        # Q^-1 V
    b = st.v.T @ g
    bw, be = b[:m], b[m:]
    mw = st.p[:, None] * bw + st.q[:, None] * be                       # rows of D B
    me = st.q[:, None] * bw + be
    mww, mwe, mew, mee = mw[:, :m], mw[:, m:], me[:, :m], me[:, m:]
    h_lam = mww * mww.T + mwe * mew.T + mew * mwe.T + mee * mee.T
    k0 = scipy.linalg.cho_solve(chol, np.eye(len(st.v))[:, :n0], check_finite=False)[:n0]
    g0w, g0e = g[:n0, :m], g[:n0, m:]
    h_cross = st.p * (g0w * g0w).sum(0) + 2 * st.q * (g0w * g0e).sum(0) + (g0e * g0e).sum(0)
    hess = np.empty((m + 1, m + 1))
    hess[0, 0], hess[0, 1:], hess[1:, 0], hess[1:, 1:] = (k0 * k0).sum(), h_cross, h_cross, h_lam
    grad = -np.concatenate([[np.trace(k0)], np.diag(mww) + np.diag(mee)])
    return grad, hess


def _factor(st: Structure, x: np.ndarray):
    """Cholesky factor of Q(x), or None if Q(x) is not positive definite or x <= 0."""
    if np.any(x <= 0) or np.any(x >= st.upper):
        return None
    try:
        return scipy.linalg.cho_factor(matrix(st, x), lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return None


def _barrier(st: Structure, x: np.ndarray, t: float, chol) -> float:
    logdet = 2 * float(np.sum(np.log(np.diag(chol[0]))))
    return t * x[0] - logdet - float(np.sum(np.log(x))) - float(np.sum(np.log1p(-x / st.upper)))


def _scaled_solve(hess: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """H^-1 rhs with Jacobi scaling (x's entries differ in scale by orders of magnitude)."""
    d = 1 / np.sqrt(np.diag(hess))
    try:
        chol = scipy.linalg.cho_factor(d[:, None] * hess * d, check_finite=False)
        return d * scipy.linalg.cho_solve(chol, d * rhs, check_finite=False)
    except np.linalg.LinAlgError:
        return d * np.linalg.lstsq(d[:, None] * hess * d, d * rhs, rcond=None)[0]


def _with_bounds(st: Structure, x: np.ndarray, chol):
    """Gradient and Hessian of -log det Q - sum log x - sum log(upper - x)."""
    grad, hess = _derivatives(st, chol)
    room = st.upper - x
    grad = grad - 1 / x + 1 / room
    hess[np.diag_indices_from(hess)] += 1 / (x * x) + 1 / (room * room)
    return grad, hess


def _newton_step(st: Structure, x: np.ndarray, t: float, chol):
    grad, hess = _with_bounds(st, x, chol)
    grad[0] += t
    dx = _scaled_solve(hess, -grad)
    return dx, float(-grad @ dx) / 2, grad


def _line_search(st: Structure, x: np.ndarray, t: float, chol, dx, grad):
    value, slope, step = _barrier(st, x, t, chol), float(grad @ dx), 1.0
    for _ in range(12):  # a tinier step means roundoff rules: call it centred
        trial = x + step * dx
        c = _factor(st, trial)
        if c is not None and _barrier(st, trial, t, c) <= value + 0.25 * step * slope:
            return trial, c
        step *= 0.5
    return None


def _first_t(st: Structure, x: np.ndarray, chol, nu: float) -> float:
    """The t whose barrier problem x is most nearly centred for (least Newton decrement
    of t c + grad), at least nu / rho: starting far off the central path costs hundreds
    of damped steps."""
    grad, hess = _with_bounds(st, x, chol)
    unit = np.zeros(len(x))
    unit[0] = 1.0
    h_c, h_g = _scaled_solve(hess, unit), _scaled_solve(hess, grad)
    return max(-float(unit @ h_g) / float(unit @ h_c), nu / x[0])


def solve_barrier(weights: list[np.ndarray], slopes: list[tuple[float, float]], rho: float,
                  lams: list[np.ndarray], deadline: float = math.inf) -> BarrierResult | None:
    """Minimise rho from a strictly feasible (rho, lams); None if the start is not. Runs
    at most MAX_NEWTON steps; `deadline` is only a safety cap: no Newton step starts that,
    predicted to take as long as the last one (the first: as long as the start's Hessian),
    would not leave the caller's float64 check (about one factorisation) its time. Every
    iterate is feasible."""
    st = structure(weights, slopes)
    x = np.concatenate([[rho], *lams]).astype(np.float64)
    st.upper[1:] = CAP * max(float(x[1:].max(initial=0.0)), 1e-300)
    began = time.monotonic()
    chol = _factor(st, x)
    if chol is None:
        return None
    check = time.monotonic() - began
    nu = len(st.v) + 2 * len(x) - 1
    t, steps, converged, cut = _first_t(st, x, chol, nu), 0, False, False
    step = time.monotonic() - began
    while steps < MAX_NEWTON:
        began = time.monotonic()
        if began + step + check >= deadline:
            cut = True
            break
        dx, decrement, grad = _newton_step(st, x, t, chol)
        steps += 1
        moved = None if decrement < CENTERED else _line_search(st, x, t, chol, dx, grad)
        step = time.monotonic() - began
        if moved is not None:
            x, chol = moved
            continue
        if nu / t < TOL * x[0]:
            converged = True
            break
        t *= GROWTH
    splits = np.cumsum([w.shape[0] for w in weights[:-1]])[:-1]
    return BarrierResult(float(x[0]), np.split(x[1:], splits), steps, converged, cut)

