"""Exact Lipschitz constants (L2) of tiny piecewise-linear chain networks.

A ReLU/LeakyReLU chain is affine on each activation region, so its Lipschitz
constant is the largest ||J|| over the regions that have a nonempty interior (f is
continuous, and almost every segment crosses regions only at their boundaries).

- One hidden layer whose first matrix has full row rank, no input box: every
  activation pattern is reached (solve W1 x + b1 = s for any sign vector s), so the
  constant is max over sigma in {alpha, 1}^h of ||W2 diag(sigma) W1||, by brute force.
- Otherwise: depth-first enumeration of the reachable regions, one unit at a time;
  a child region is kept when an LP (scipy HiGHS) finds a ball of radius t > -LP_TOL
  inside it (max t subject to s_i (a_i x + c_i) >= t ||a_i||). Keeping regions with
  t slightly below 0 can only add candidates, so the value stays an upper bound when
  the enumeration completes. The side of a unit that contains the parent's interior
  point needs no LP. Budgets in LPs and seconds; `complete` says whether it finished.

Results: `value` (max over kept regions; the exact constant, a certified upper bound
with the float64 SVD margin, when `complete`), `lower` and `witness` (max over regions
with a ball of radius >= WITNESS_RADIUS, and that ball's centre: a certified lower
bound once lower/rounds.py verifies it by a secant quotient).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from lipcheck.estimators.exact.pwl_chain import Chain, pwl_chain
from lipcheck.graph import Graph
from lipcheck.spectral.operator import FLOAT64_MARGIN

LP_TOL = 1e-7          # HiGHS feasibility tolerance on unit-norm rows
WITNESS_RADIUS = 1e-6  # a witness must be this far (relative to the input scale) from any kink
MAX_BRUTE_UNITS = 20
T_CAP = 1.0


@dataclass
class ExactResult:
    value: float                 # max over kept regions (exact when complete)
    complete: bool
    lower: float = 0.0           # max over regions with a witness ball
    witness: np.ndarray | None = None
    regions: int = 0
    lps: int = 0
    seconds: float = 0.0
    method: str = ""
    detail: str = ""


@dataclass
class LpBudget:
    """An LP count and a deadline (time.perf_counter()); spent when either is reached."""
    max_lps: int
    deadline: float
    lps: int = 0

    def spent(self) -> bool:
        return self.lps >= self.max_lps or time.perf_counter() > self.deadline


@dataclass
class _Node:
    """A partial region: the units of earlier layers fixed, `unit` next in `layer`."""

    layer: int
    unit: int
    rows: np.ndarray            # constraint normals a with s (a x + c) >= 0, as -s a
    rhs: np.ndarray             # ... and s c
    m: np.ndarray               # pre-activations of `layer`: z = m x + c
    c: np.ndarray
    sigma: np.ndarray           # slopes chosen so far in `layer`
    point: np.ndarray
    radius: float               # a ball of this radius around `point` lies inside
    extra: dict = field(default_factory=dict)


def _norm2(matrix: np.ndarray) -> float:
    if matrix.size == 0:
        return 0.0
    return float(scipy.linalg.svdvals(matrix, check_finite=False)[0])


def exact_lipschitz(graph: Graph, box: tuple[float, float] | None = None, max_lps: int = 20000,
                    max_seconds: float = 30.0) -> ExactResult:
    """The exact L2 Lipschitz constant of a tiny ReLU-family chain (on `box` if given)."""
    return exact_chain(pwl_chain(graph), box, max_lps, max_seconds)


def exact_chain(chain: Chain, box: tuple[float, float] | None = None, max_lps: int = 20000,
                max_seconds: float = 30.0) -> ExactResult:
    start = time.perf_counter()
    budget = LpBudget(max_lps, start + max_seconds)
    if _all_patterns_reachable(chain, box):
        result = _brute_force_two_layer(chain, budget)
    else:
        result = _enumerate(chain, box, budget)
    result.seconds = time.perf_counter() - start
    return result


def _all_patterns_reachable(chain: Chain, box: tuple[float, float] | None) -> bool:
    if box is not None or len(chain.slopes) != 1:
        return False
    w1 = chain.affines[0].weight
    h = w1.shape[0]
    if h > MAX_BRUTE_UNITS or w1.shape[1] < h:
        return False
    s = scipy.linalg.svdvals(w1)
    return bool(s[-1] > 1e-10 * s[0])


def _brute_force_two_layer(chain: Chain, budget: LpBudget) -> ExactResult:
    (first, second), alpha = chain.affines, chain.slopes[0]
    best, best_signs, complete = -1.0, None, True
    for chunk in _sign_chunks(len(alpha)):
        if best_signs is not None and budget.spent():
            complete = False
            break
        sigma = np.where(chunk > 0, 1.0, alpha[None, :])
        values = _batched_norms(second.weight, sigma, first.weight)
        i = int(np.argmax(values))
        if values[i] > best:
            best, best_signs = float(values[i]), chunk[i]
    assert best_signs is not None, "the first chunk's norms (>= 0) beat the initial -1"
    result = _two_layer_result(chain, best_signs)
    if not complete:
        result.complete, result.detail = False, "budget exhausted before all 2^h patterns"
    return result


def _sign_chunks(h: int, size: int = 4096):
    """All sign vectors in {-1, 1}^h, `size` at a time (bits of consecutive integers)."""
    bits = np.arange(h)
    for start in range(0, 2 ** h, size):
        codes = np.arange(start, min(start + size, 2 ** h))
        yield ((codes[:, None] >> bits) & 1) * 2.0 - 1.0


def _batched_norms(w2: np.ndarray, sigma: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """||W2 diag(sigma_b) W1|| for each row sigma_b, through the smaller Gram matrix."""
    if w2.shape[0] <= w1.shape[1]:
        p = w2[None, :, :] * sigma[:, None, :]
        gram = p @ (w1 @ w1.T)[None] @ p.transpose(0, 2, 1)
    else:
        q = sigma[:, :, None] * w1[None, :, :]
        gram = q.transpose(0, 2, 1) @ (w2.T @ w2)[None] @ q
    return np.sqrt(np.maximum(np.linalg.eigvalsh(gram)[:, -1], 0.0))


def _two_layer_result(chain: Chain, signs: np.ndarray) -> ExactResult:
    (first, second), alpha = chain.affines, chain.slopes[0]
    sigma = np.where(signs > 0, 1.0, alpha)
    value = _norm2(second.weight @ np.diag(sigma) @ first.weight)
    # W1 x + b1 = signs: every unit at distance >= 1/||W1|| from its kink.
    point = np.linalg.lstsq(first.weight, signs - first.bias, rcond=None)[0]
    return ExactResult(value * (1 + FLOAT64_MARGIN), True, value, point, 2 ** len(alpha), 0,
                       method="exact-brute-force",
                       detail=f"all 2^{len(alpha)} patterns reachable (W1 has full row rank)")


def _enumerate(chain: Chain, box: tuple[float, float] | None, budget: LpBudget) -> ExactResult:
    root = _root(chain, box)
    if root is None:
        return ExactResult(0.0, True, method="exact-enumeration", detail="empty input box")
    result = ExactResult(0.0, False, method="exact-enumeration")
    stack = [root]
    while stack:
        if budget.spent():
            break
        node = stack.pop()
        if node.layer == len(chain.slopes):
            _visit_leaf(node, result, chain, box)
            continue
        stack.extend(_children(node, chain, box, budget))
    else:
        result.complete = True
    result.lps = budget.lps
    result.value *= 1 + FLOAT64_MARGIN
    result.detail = (f"{result.regions} regions, {result.lps} LPs"
                     + ("" if result.complete else " (budget exhausted: incomplete)"))
    return result


def _root(chain: Chain, box: tuple[float, float] | None) -> _Node | None:
    n = chain.n_in
    if box is not None:
        lo, hi = box
        if not hi > lo:
            return None
        point, radius = np.full(n, (lo + hi) / 2), (hi - lo) / 2
    else:
        point, radius = np.zeros(n), np.inf
    first = chain.affines[0]
    return _Node(0, 0, np.zeros((0, n)), np.zeros(0), first.weight, first.bias,
                 np.zeros(0), point, radius)


def _visit_leaf(node: _Node, result: ExactResult, chain: Chain,
                box: tuple[float, float] | None) -> None:
    result.regions += 1
    value = _norm2(node.m)
    result.value = max(result.value, value)
    scale = 1.0 if box is None else box[1] - box[0]
    if value > result.lower and node.radius >= WITNESS_RADIUS * scale:
        result.lower, result.witness = value, node.point.copy()


def _children(node: _Node, chain: Chain, box: tuple[float, float] | None,
              budget: LpBudget) -> list[_Node]:
    a, c = node.m[node.unit], node.c[node.unit]
    size = float(np.linalg.norm(a))
    if size <= 1e-14 * max(1.0, abs(c)):
        return [_advance(node, chain, 1.0 if c > 0 else -1.0, None)]
    z = float(a @ node.point + c)
    children = []
    for sign in (1.0, -1.0):
        if sign * z > 0 and node.radius > 0:
            radius = min(node.radius, sign * z / size)
            children.append(_advance(node, chain, sign, (node.point, radius, a / size, c / size)))
            continue
        found = _lp_ball(node, sign * a / size, sign * c / size, box, budget)
        if found is not None:
            children.append(_advance(node, chain, sign, (found[0], found[1], a / size, c / size)))
    return children


def _lp_ball(node: _Node, a: np.ndarray, c: float, box: tuple[float, float] | None,
             budget: LpBudget) -> tuple[np.ndarray, float] | None:
    """Largest ball (radius capped) in the node's region with a x + c >= 0; None if empty."""
    budget.lps += 1
    n = len(a)
    rows = np.vstack([node.rows, -a[None, :]])
    rhs = np.append(node.rhs, c)
    a_ub = np.hstack([rows, np.ones((len(rows), 1))])   # -s a x + t <= s c (rows have norm 1)
    bounds = [(None, None)] * n + [(None, T_CAP)]
    if box is not None:
        eye = np.eye(n)
        ones = np.ones((n, 1))
        a_ub = np.vstack([a_ub, np.hstack([eye, ones]), np.hstack([-eye, ones])])

        rhs = np.concatenate([rhs, np.full(n, box[1]), np.full(n, -box[0])])
    from scipy.optimize import linprog  # lazy: importing scipy.optimize takes ~1.5 s

    cost = np.zeros(n + 1)
    cost[-1] = -1.0
    res = linprog(cost, A_ub=a_ub, b_ub=rhs, bounds=bounds, method="highs")
    if res.status != 0 or -res.fun <= -LP_TOL:
        return None
    return res.x[:n], max(float(-res.fun), 0.0)


def _advance(node: _Node, chain: Chain, sign: float,
             ball: tuple[np.ndarray, float, np.ndarray, float] | None) -> _Node:
    """The child with unit `node.unit` on side `sign`; moves to the next layer when full."""
    alpha = chain.slopes[node.layer][node.unit]
    sigma = np.append(node.sigma, 1.0 if sign > 0 else alpha)
    rows, rhs, point, radius = node.rows, node.rhs, node.point, node.radius
    if ball is not None:
        point, radius, a, c = ball
        rows, rhs = np.vstack([rows, -sign * a[None, :]]), np.append(rhs, sign * c)
    if node.unit + 1 < len(chain.slopes[node.layer]):
        return _Node(node.layer, node.unit + 1, rows, rhs, node.m, node.c, sigma, point, radius)
    nxt = chain.affines[node.layer + 1]
    m = nxt.weight @ (sigma[:, None] * node.m)
    c = nxt.weight @ (sigma * node.c) + nxt.bias
    return _Node(node.layer + 1, 0, rows, rhs, m, c, np.zeros(0), point, radius)
