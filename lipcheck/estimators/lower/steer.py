"""Reachable activation patterns of MLPs whose first layer is onto (lower/patterns.py).

When W1 has full row rank (and no input box), every first-layer pre-activation vector
z1 is reached by x = W1^+ (z1 - b1), so a first-layer unit can be made active with a
value h_i > 0 of our choice, or inactive. The second layer sees
z2 = W2 act(z1) + b2; units made active with a tiny value (TINY x the largest h) count
as active in D1 but barely move z2. So a pattern is steered in two alternating moves:

1. layer 2: with (u, v) the top singular pair of J(P), each second-layer unit's gain
   g_j = (u^T W_L ... D_2 e_j)(e_j^T W2 D1 W1 v) (u^T J v is linear in D2) says which
   side it should be on; the active first-layer units' values h >= 0 are fitted by
   weighted NNLS, |g_j| (W2[j, A] h + b2_j - sign(g_j)) -> min, so the important units
   land on their side; the others (and later layers) fall where they fall;
2. layer 1: with layer 2 as realised, the units' gains say which should be active;
   units carrying a steering value stay active, the others follow their gains (the move
   is kept only if ||J(P)|| rises).

Every state is a real point (z1 chosen, the rest computed by the exact forward map), so
its pattern is reachable by construction: no LP. Counts decide the value (STEPS
alternations); the deadline is a safety cap checked between them. Measured on the
784-500-500-10 MLP of bench/bench_patterns.py: ||J(P)|| of the best realised pattern
0.2263 (least squares + NNLS, realise_free) -> 0.2686 (6 alternations from the same target;
0.2693 with 12).
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import scipy.linalg

from lipcheck.estimators.exact.pwl_chain import Chain

STEPS = 6         # alternations (a count: decides the value; 12 gained < 0.5% on the MLP
                  # above once the Jacobian ascent from the regions has run)
TINY = 1e-6       # value of an active, non-steering first-layer unit, relative to max h


def preimage(chain: Chain) -> Callable[[np.ndarray], np.ndarray]:
    """z1 -> the least-norm x with W1 x + b1 = z1 (W1 of full row rank), from one QR of
    W1^T (W1 = R^T Q^T, x = Q R^-T (z1 - b1)); one factorisation for every call."""
    first = chain.affines[0]
    q, r = np.linalg.qr(first.weight.T)
    return lambda z1: q @ scipy.linalg.solve_triangular(r.T, z1 - first.bias, lower=True)


def _slope(chain: Chain, layer: int, signs: np.ndarray) -> np.ndarray:
    return np.where(signs > 0, 1.0, chain.slopes[layer])


def forward_signs(chain: Chain, z1: np.ndarray) -> list[np.ndarray]:
    """Signs of every hidden layer's pre-activation, the first layer's being z1."""
    signs, z = [], z1
    for layer in range(len(chain.slopes)):
        s = np.where(z > 0, 1.0, -1.0)
        signs.append(s)
        if layer + 1 < len(chain.slopes):
            nxt = chain.affines[layer + 1]
            z = nxt.weight @ (_slope(chain, layer, s) * z) + nxt.bias
    return signs


def jacobian(chain: Chain, signs: list[np.ndarray]) -> np.ndarray:
    """J(P) = W_L D_{L-1} ... D_1 W_1, multiplied from the (narrow) output side."""
    m = chain.affines[-1].weight
    for layer in range(len(signs) - 1, -1, -1):
        m = (m * _slope(chain, layer, signs[layer])) @ chain.affines[layer].weight
    return m


def gains(chain: Chain, signs: list[np.ndarray], layer: int) -> np.ndarray:
    """d(u^T J v) / d(active_i) for the units of `layer` ((u, v): J's top singular pair):
    two vector sweeps, no matrix product."""
    u, _, vt = np.linalg.svd(jacobian(chain, signs), full_matrices=False)
    up = chain.affines[0].weight @ vt[0]
    for k in range(layer):
        up = chain.affines[k + 1].weight @ (_slope(chain, k, signs[k]) * up)
    down = chain.affines[-1].weight.T @ u[:, 0]
    for k in range(len(signs) - 1, layer, -1):
        down = chain.affines[k].weight.T @ (_slope(chain, k, signs[k]) * down)
    return up * down * (1.0 - chain.slopes[layer])


def norm(chain: Chain, signs: list[np.ndarray]) -> float:
    return float(np.linalg.norm(jacobian(chain, signs), 2))


def _steer_second(chain: Chain, active: np.ndarray, want: np.ndarray,
                  weight: np.ndarray) -> np.ndarray:
    """z1 with the active units' values fitted by weighted NNLS to put the second layer's
    units on the sides `want` (weights `weight`), the other active units at TINY."""
    from scipy.optimize import nnls
    w2, b2 = chain.affines[1].weight, chain.affines[1].bias
    root = np.sqrt(weight / max(float(weight.max()), 1e-300) + 1e-3)
    h = np.ones(int(active.sum()))
    if active.any():
        h = nnls(root[:, None] * w2[:, active], root * (want - b2),
                 maxiter=10 * int(active.sum()))[0]
    tiny = TINY * max(float(h.max(initial=0.0)), 1e-12)
    z1 = np.full(len(active), -tiny)
    z1[active] = np.maximum(h, tiny)
    return z1


def steer(chain: Chain, target: list[np.ndarray], steps: int | None = None,
          deadline: float = float("inf")) -> np.ndarray | None:
    """The best z1 found by the alternation of the module docstring from `target`
    (its first layer taken as is), or None for a chain with one hidden layer."""
    if len(target) < 2:
        return None
    first = target[0].copy()
    signs = [s.copy() for s in target]
    best, best_z1 = -1.0, None
    for _ in range(STEPS if steps is None else steps):
        if time.perf_counter() > deadline:
            break
        g2 = gains(chain, signs, 1)
        z1 = _steer_second(chain, first > 0, np.where(g2 > 0, 1.0, -1.0), np.abs(g2))
        signs = forward_signs(chain, z1)
        value = norm(chain, signs)
        if value > best:
            best, best_z1 = value, z1
        g1 = gains(chain, signs, 0)
        trial = np.where(g1 > 0, 1.0, -1.0)
        trial[z1 > TINY * max(float(z1.max()), 1e-12) * 10] = 1.0   # steering units stay on
        if norm(chain, [trial] + signs[1:]) > value:
            first = trial
        signs = [first] + signs[1:]
    return best_z1
