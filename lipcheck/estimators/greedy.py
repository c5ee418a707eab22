"""Greedy SeqLip's per-pair search (Scaman & Virmaux 2018), made fast.

The rule, as in the paper's code for MLPs: start at sigma = hi everywhere; in each
sweep evaluate ||X diag(sigma') Y|| for every single flip sigma' (hi <-> lo), apply the
flip with the largest value if it beats the current norm, stop when none does. The
result is a norm attained at a vertex: a lower estimate of the pair's maximum, never
an upper bound.

Speed: one SVD per sweep instead of one per candidate. With A = P S Q^T, the flip of
unit j gives A' = A + d x_j y_j^T, and ||A'|| > lam (lam > ||A||) holds exactly when a
2x2 matrix is positive definite (Haynsworth inertia on the symmetric dilation
[[0, A], [A^T, 0]]). All candidates are tested at once, and a shared bisection on lam
finds the best flip.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

IMPROVE = 1e-12    # a flip must raise the norm by this relative amount to count
BISECTIONS = 60


@dataclass
class GreedyResult:
    value: float
    sigma: np.ndarray
    sweeps: int
    finished: bool  # reached a local maximum (False: sweep cap or deadline)
    cut_by_budget: bool = False  # the wall-clock safety cap stopped it (not reproducible)


def _coefficients(x: np.ndarray, y: np.ndarray, p: np.ndarray, qt: np.ndarray):
    alpha, beta = p.T @ x, qt @ y.T          # (r, n)
    rest_x = np.maximum(np.einsum("pn,pn->n", x, x) - np.einsum("rn,rn->n", alpha, alpha), 0.0)
    rest_y = np.maximum(np.einsum("nq,nq->n", y, y) - np.einsum("rn,rn->n", beta, beta), 0.0)
    return alpha, beta, rest_x, rest_y


def _exceeds(lam: float, s: np.ndarray, delta: np.ndarray, coef) -> np.ndarray:
    """For each candidate: is ||A + delta_j x_j y_j^T|| > lam?  (requires lam > ||A||)"""
    alpha, beta, rest_x, rest_y = coef
    g = 1.0 / (lam * lam - s * s)                               # (r,)
    sq = alpha * alpha + beta * beta
    cross = 2 * alpha * beta
    m11 = lam * (g @ sq) + (s * g) @ cross + (rest_x + rest_y) / lam
    m22 = lam * (g @ sq) - (s * g) @ cross + (rest_x + rest_y) / lam
    m12 = lam * (g @ (alpha * alpha - beta * beta)) + (rest_x - rest_y) / lam
    s11, s22 = m11 - 2.0 / delta, m22 + 2.0 / delta
    return (s11 > 0) & (s22 > 0) & (s11 * s22 - m12 * m12 > 0)


def _best_flip(x: np.ndarray, y: np.ndarray, a: np.ndarray, delta: np.ndarray) -> int | None:
    p, s, qt = np.linalg.svd(a, full_matrices=False)
    current = float(s[0]) if s.size else 0.0
    lam = current * (1 + IMPROVE) + 1e-300
    alive = np.flatnonzero(delta != 0)
    coef = _coefficients(x[:, alive], y[alive], p, qt)
    hit = _exceeds(lam, s, delta[alive], coef)
    if not hit.any():
        return None
    alive, coef = alive[hit], tuple(c[..., hit] for c in coef)
    reach = np.abs(delta[alive]) * np.linalg.norm(x[:, alive], axis=0) * np.linalg.norm(y[alive], axis=1)
    low, high = lam, current + float(reach.max()) * (1 + 1e-9)
    for _ in range(BISECTIONS):
        if len(alive) == 1 or high - low <= 1e-15 * high:
            break
        mid = 0.5 * (low + high)
        hit = _exceeds(mid, s, delta[alive], coef)
        if hit.any():
            low, alive, coef = mid, alive[hit], tuple(c[..., hit] for c in coef)
        else:
            high = mid
    return int(alive.min())


def greedy_max(x: np.ndarray, y: np.ndarray, lo: float, hi: float,
               deadline: float = float("inf"), max_sweeps: int | None = None) -> GreedyResult:
    """Best single flip per sweep from sigma = hi until no flip raises the norm, for at
    most `max_sweeps` sweeps (default 4 n: a count, so the result is reproducible); the
    deadline is only a safety cap."""
    sigma = np.full(x.shape[1], float(hi))
    a = x @ (sigma[:, None] * y)
    sweeps, finished, cut = 0, False, False
    cap = 4 * x.shape[1] if max_sweeps is None else max_sweeps
    while sweeps < cap:
        if time.monotonic() >= deadline:
            cut = True
            break
        sweeps += 1
        delta = np.where(sigma == hi, lo - hi, hi - lo)
        j = _best_flip(x, y, a, delta)
        if j is None:
            finished = True
            break
        a += delta[j] * np.outer(x[:, j], y[j])
        sigma[j] = lo if sigma[j] == hi else hi
    value = float(np.linalg.svd(x @ (sigma[:, None] * y), compute_uv=False)[0])
    return GreedyResult(value, sigma, sweeps, finished, cut)
