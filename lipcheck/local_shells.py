"""Margins on a ball from local constants on nested balls (shells), not one constant.

For y in B(x, eps) write y = x + r u (||u|| = 1, r <= eps) and h(t) = m(x + t u) for a
margin m. The point x + t u lies in B(x, t), so |h'(t)| <= K(t), any upper bound of the
Lipschitz constant of m on B(x, t) (m is piecewise linear: h is differentiable but at
finitely many t). With radii 0 = t_0 < t_1 < ... < t_n = eps and K_k >= K(t_k):

    m(y) >= m(x) - sum_k (min(r, t_k) - t_{k-1})^+ K_k >= m(x) - sum_k (t_k - t_{k-1}) K_k,

so m stays positive on the ball when m(x) exceeds that sum, which is at most eps K_n (the
single-ball rule, n = 1) and much smaller when the constant grows with the radius (few
units change sign on a small ball). A bound on a larger ball also holds on a smaller one:
K_k is replaced by min_{j >= k} K_j. The certified radius is where the running sum
reaches the margin (capped at eps). Shells are evenly spaced, computed innermost first,
and only for the samples that the single ball did not certify and that can still be
certified (sum so far + (eps - t_k) K_k < margin, a conservative pruning): a count-based,
reproducible rule.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

Constants = Callable[[np.ndarray, float], np.ndarray]   # (indices, radius) -> (len, C) K


def shell_sum(ks: list[np.ndarray], eps: float) -> np.ndarray:
    """sum_k (eps / n) min_{j >= k} K_j for K_1..K_n on evenly spaced radii (..., C)."""
    envelope = np.minimum.accumulate(np.stack(ks)[::-1], axis=0)[::-1]
    return envelope.sum(axis=0) * (eps / len(ks))


def shell_radius(ks: list[np.ndarray], margins: np.ndarray, eps: float) -> np.ndarray:
    """The largest r <= eps with sum_k (min(r, t_k) - t_{k-1})^+ K_k below the margins,
    per row (..., C): the radius each margin is certified to (0 when it is <= 0)."""
    n, width = len(ks), eps / len(ks)
    envelope = np.minimum.accumulate(np.stack(ks)[::-1], axis=0)[::-1]
    used = np.zeros_like(margins)
    radius = np.full_like(margins, eps)
    open_ = margins > 0
    for k in range(n):
        step = width * envelope[k]
        inside = open_ & (used + step >= margins)
        with np.errstate(divide="ignore", invalid="ignore"):
            part = np.where(envelope[k] > 0, (margins - used) / envelope[k], width)
        radius = np.where(inside, k * width + np.clip(part, 0.0, width), radius)
        open_ &= ~inside
        used = used + step
    return np.where(margins > 0, radius, 0.0)


def shell_constants(constants: Constants, full: np.ndarray, margins: np.ndarray,
                    candidates: np.ndarray, eps: float, shells: int) -> list[np.ndarray]:
    """K_1..K_n (each (N, C)) on radii eps k / n; K_n = `full`. Samples outside
    `candidates`, or pruned on the way, keep `full` at the radii not computed (a bound on
    the whole ball holds on every smaller one)."""
    ks = [full.copy() for _ in range(shells)]
    alive = np.asarray(candidates, dtype=bool).copy()
    used = np.zeros_like(margins)
    width = eps / shells
    for k in range(shells - 1):
        index = np.flatnonzero(alive)
        if not len(index):
            break
        ks[k][index] = np.minimum(constants(index, width * (k + 1)), full[index])
        used[index] += width * ks[k][index]
        rest = used[index] + (eps - width * (k + 1)) * ks[k][index]
        alive[index[~np.all(rest < margins[index], axis=1)]] = False
    return ks
