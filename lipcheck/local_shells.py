"""Margins on a ball from bounds on nested balls (shells), not from one constant.

For y in B(x, eps) write y = x + r u (||u|| = 1, r <= eps) and h(t) = m(x + t u) for a
margin m. The point x + t u lies in B(x, t), so |h'(t)| <= K(t), any upper bound of the
Lipschitz constant of m on B(x, t) (m is piecewise linear: h is differentiable but at
finitely many t). With radii 0 = t_0 < t_1 < ... < t_n = eps, K_k >= K(t_k) and L_k a
lower bound of m on B(x, t_k) (L_0 = m(x)), for every k:

    m(y) >= L_k - sum_{i > k} (t_i - t_{i-1}) K_i        (m(y) >= L_k itself when r <= t_k),

because x + t_k u is in B(x, t_k) and the rest of the segment crosses the outer shells.
So m stays positive on the ball when max_k (L_k - sum_{i > k} ...) > 0: k = 0 is the
shell sum of the constants (at most eps K_n, the single-ball rule, and much smaller when
the constant grows with the radius: few units change sign on a small ball), k = n is a
direct lower bound of the margin on the whole ball (CROWN's), and the k between mix the two.
A bound on a larger ball also holds on a smaller one: K_k is replaced by min_{j >= k} K_j.
Shells are evenly spaced, computed innermost first, only for the samples the whole ball
did not certify, and stop for a sample once no row can still be certified assuming the
constants stop growing (a conservative, count-based, reproducible pruning).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Bounds = Callable[[np.ndarray, float], tuple[np.ndarray, np.ndarray]]  # -> (K, L), (len, C)


@dataclass
class Shells:
    ks: list[np.ndarray]      # K_1..K_n, each (N, C): constants on B(x, t_k)
    lows: list[np.ndarray]    # L_1..L_n, each (N, C): margin lower bounds (-inf: unknown)


def envelope(ks: list[np.ndarray]) -> np.ndarray:
    """(n, ...) min_{j >= k} K_j: each constant also bounds every smaller ball."""
    return np.minimum.accumulate(np.stack(ks)[::-1], axis=0)[::-1]


def shell_sum(ks: list[np.ndarray], eps: float) -> np.ndarray:
    """sum_k (eps / n) min_{j >= k} K_j for K_1..K_n on evenly spaced radii (..., C)."""
    return envelope(ks).sum(axis=0) * (eps / len(ks))


def certificate(shells: Shells, margins: np.ndarray, eps: float) -> np.ndarray:
    """(N, C) max_k (L_k - sum_{i > k} (eps / n) K_i): m > 0 on the ball where > 0."""
    width = eps / len(shells.ks)
    env = envelope(shells.ks)
    tail = np.zeros_like(margins)
    best = shells.lows[-1].copy()
    for k in range(len(shells.ks) - 1, -1, -1):      # tail = sum over shells k+1..n
        tail = tail + width * env[k]
        low = margins if k == 0 else shells.lows[k - 1]
        best = np.maximum(best, low - tail)
    return best


def shell_radius(ks: list[np.ndarray], margins: np.ndarray, eps: float) -> np.ndarray:
    """The largest r <= eps with sum_k (min(r, t_k) - t_{k-1})^+ K_k below the margins,
    per row (..., C): the radius each margin is certified to (0 when it is <= 0)."""
    width, env = eps / len(ks), envelope(ks)
    used = np.zeros_like(margins)
    radius = np.full_like(margins, eps)
    open_ = margins > 0
    for k in range(len(ks)):
        step = width * env[k]
        inside = open_ & (used + step >= margins)
        with np.errstate(divide="ignore", invalid="ignore"):
            part = np.where(env[k] > 0, (margins - used) / env[k], width)
        radius = np.where(inside, k * width + np.clip(part, 0.0, width), radius)
        open_ &= ~inside
        used = used + step
    return np.where(margins > 0, radius, 0.0)


def collect(bounds: Bounds, full: tuple[np.ndarray, np.ndarray], margins: np.ndarray,
            candidates: np.ndarray, eps: float, shells: int) -> Shells:
    """K and L on radii eps k / n (k = n: `full`). Samples outside `candidates`, or
    pruned on the way, keep the whole ball's K (valid on every smaller ball) and no L."""
    k_full, l_full = full
    out = Shells([k_full.copy() for _ in range(shells)],
                 [np.full_like(margins, -np.inf) for _ in range(shells - 1)] + [l_full])
    alive = np.asarray(candidates, dtype=bool).copy()
    running = margins.copy()            # max_{i <= k} (L_i - sum_{i < l <= k} width K_l)
    width = eps / shells
    for k in range(shells - 1):
        index = np.flatnonzero(alive)
        if not len(index):
            break
        found_k, found_l = bounds(index, width * (k + 1))
        out.ks[k][index] = np.minimum(found_k, k_full[index])
        out.lows[k][index] = found_l
        running[index] = np.maximum(running[index] - width * out.ks[k][index], found_l)
        hopeful = (l_full[index] > 0) | (
            running[index] - (eps - width * (k + 1)) * out.ks[k][index] > 0)
        alive[index[~np.all(hopeful, axis=1)]] = False
    return out
