"""Greedy SeqLip's per-pair search (Scaman & Virmaux 2018), made fast.

The rule, as in the paper's code for MLPs: start at sigma = hi everywhere; in each
sweep evaluate ||X diag(sigma') Y|| for every single flip sigma' (hi <-> lo), apply the
flip with the largest value if it beats the current norm, stop when none does. The
result is a norm attained at a vertex: a lower estimate of the pair's maximum, never
an upper bound.

Speed: one SVD per REFRESH accepted flips instead of one per candidate. With the SVD
A0 = P S Q^T of the matrix at the last refresh and the K flips accepted since, the
current matrix plus candidate j's flip is A0 plus K + 1 rank-one terms, and its norm
exceeds lam (lam > ||A||) exactly when a 2x2 Schur complement of a (2K + 2)-square
matrix is negative definite (Haynsworth inertia on the symmetric dilation
[[0, A0], [A0^T, 0]]; the accepted flips' block has exactly K negative eigenvalues).
All candidates are tested at once, and a shared bisection on lam finds the best flip.
The decisions are those of the plain rule up to rounding (tested against it).

`ascent_max` (for pairs too large for the rule's thousands of sweeps): linearized
ascent with the top singular pair, then a few sweeps of the rule; an estimate too,
reproducible, but not the paper's path.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

IMPROVE = 1e-12    # a flip must raise the norm by this relative amount to count
BISECTIONS = 60
REFRESH = 12       # a fresh SVD after this many accepted flips (folded in until then)
POWER_STEPS = 3    # power steps per sweep for the candidates' lower estimates
SMALL_SVD = 64     # ... but after every flip when A has at most this many rows or columns


@dataclass
class GreedyResult:
    value: float
    sigma: np.ndarray
    sweeps: int
    finished: bool  # reached a local maximum (False: sweep cap or deadline)
    cut_by_budget: bool = False  # the wall-clock safety cap stopped it (not reproducible)


@dataclass
class _Basis:
    """SVD A0 = P S Q^T of the matrix at the last refresh, the candidates' coordinates
    in it, and the flips accepted since (folded in as a low-rank correction)."""
    s: np.ndarray
    alpha: np.ndarray           # P^T X  (r, n)
    beta: np.ndarray            # Q^T Y^T (r, n)
    rest_x: np.ndarray          # |x_j|^2 - |alpha_j|^2: the part outside span(P)
    rest_y: np.ndarray
    x: np.ndarray               # X (p, n) and Y (n, q): inner products of units on demand
    y: np.ndarray
    norm_x: np.ndarray          # |x_j|^2, |y_j|^2
    norm_y: np.ndarray
    accepted: list[tuple[int, float]]


def _basis(x: np.ndarray, y: np.ndarray, a: np.ndarray) -> _Basis:
    p, s, qt = np.linalg.svd(a, full_matrices=False)
    alpha, beta = p.T @ x, qt @ y.T
    norm_x, norm_y = np.einsum("pn,pn->n", x, x), np.einsum("nq,nq->n", y, y)
    rest_x = norm_x - np.einsum("rn,rn->n", alpha, alpha)
    rest_y = norm_y - np.einsum("rn,rn->n", beta, beta)
    return _Basis(s, alpha, beta, rest_x, rest_y, x, y, norm_x, norm_y, [])


def _resolvent(b: _Basis, lam: float, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(2, 2, len(rows), len(cols)): u^T R v for u, v in {[x;0], [0;y]} of the given units,
    R = (lam I - [[0, A0], [A0^T, 0]])^-1 (lam > ||A0||)."""
    g = 1.0 / (lam * lam - b.s * b.s)
    ar, br, ac, bc = b.alpha[:, rows], b.beta[:, rows], b.alpha[:, cols], b.beta[:, cols]
    uu = (ar * (lam * g - 1 / lam)[:, None]).T @ ac + (b.x[:, rows].T @ b.x[:, cols]) / lam
    vv = (br * (lam * g - 1 / lam)[:, None]).T @ bc + (b.y[rows] @ b.y[cols].T) / lam
    uv = (ar * (b.s * g)[:, None]).T @ bc
    vu = (br * (b.s * g)[:, None]).T @ ac
    return np.array([[uu, uv], [vu, vv]])


def _exceeds(lam: float, b: _Basis, cand: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """For each candidate j: is ||A + delta_j x_j y_j^T|| > lam?  (requires lam > ||A||).
    With C the flips' coefficients and U their vectors on the dilation, the count of
    eigenvalues above lam is #neg(C^-1 - U^T R U) - #neg(C^-1) (Haynsworth); the accepted
    flips' block has exactly K negative ones, so the candidate's 2x2 Schur complement
    must be negative definite."""
    s_mat = -_diag_resolvent(b, lam, cand)
    s_mat[0, 1] += 1.0 / delta
    s_mat[1, 0] += 1.0 / delta
    if b.accepted:
        k = np.array([j for j, _ in b.accepted])
        swap = np.array([[0.0, 1.0], [1.0, 0.0]])
        inv_c = np.kron(np.diag([1.0 / d for _, d in b.accepted]), swap)
        fk = _resolvent(b, lam, k, k).transpose(2, 0, 3, 1).reshape(2 * len(k), 2 * len(k))
        f = inv_c - fk
        cross = -_resolvent(b, lam, k, cand).transpose(2, 0, 1, 3).reshape(2 * len(k), 2, len(cand))
        z = np.linalg.solve(f, cross.reshape(2 * len(k), -1)).reshape(cross.shape)
        s_mat = s_mat - np.einsum("acj,adj->cdj", cross, z)
    t11, t22, t12 = -s_mat[0, 0], -s_mat[1, 1], -s_mat[0, 1]
    return (t11 > 0) & (t22 > 0) & (t11 * t22 - t12 * t12 > 0)


def _diag_resolvent(b: _Basis, lam: float, cand: np.ndarray) -> np.ndarray:
    g = 1.0 / (lam * lam - b.s * b.s)
    a, be = b.alpha[:, cand], b.beta[:, cand]
    uu = (lam * g - 1 / lam) @ (a * a) + b.norm_x[cand] / lam
    vv = (lam * g - 1 / lam) @ (be * be) + b.norm_y[cand] / lam
    uv = (b.s * g) @ (a * be)
    return np.array([[uu, uv], [uv, vv]])


def _best_flip(b: _Basis, current: float, reach: np.ndarray, delta: np.ndarray,
               floor: np.ndarray):
    """(unit, norm after its flip) of the best single flip, or None if none raises the
    norm; the norm is an upper estimate within 1e-15 relative. `floor`: a value each
    flip's norm reaches at least (prunes the candidates below the best of them)."""
    lam = current * (1 + IMPROVE) + 1e-300
    alive = np.flatnonzero(delta != 0)
    hit = _exceeds(lam, b, alive, delta[alive])
    if not hit.any():
        return None
    alive = alive[hit]
    low, high = lam, current + float(reach[alive].max()) * (1 + 1e-9)
    start = float(floor[alive].max()) * (1 - 1e-12)
    if low < start < high:
        hit = _exceeds(start, b, alive, delta[alive])
        if hit.any():   # always, unless rounding: then the plain bisection below
            low, alive = start, alive[hit]
    for _ in range(BISECTIONS):
        if high - low <= 1e-15 * high:
            break
        mid = 0.5 * (low + high)
        hit = _exceeds(mid, b, alive, delta[alive])
        if hit.any():
            low, alive = mid, alive[hit]
        else:
            high = mid
    return int(alive.min()), high


def _top_pair(a: np.ndarray, v: np.ndarray, steps: int = POWER_STEPS):
    """Unit vectors near A's top singular pair: a few power steps from v (only used for
    lower estimates, so their accuracy decides speed, never the result)."""
    u = a @ v
    for _ in range(steps):
        u = u / max(np.linalg.norm(u), 1e-300)
        v = a.T @ u
        v = v / max(np.linalg.norm(v), 1e-300)
        u = a @ v
    return u / max(np.linalg.norm(u), 1e-300), v


def greedy_max(x: np.ndarray, y: np.ndarray, lo: float, hi: float,
               deadline: float = float("inf"), max_sweeps: int | None = None,
               refresh: int | None = None, start: np.ndarray | None = None) -> GreedyResult:
    """Best single flip per sweep from sigma = hi (or `start`, a vertex) until no flip
    raises the norm, for at most `max_sweeps` sweeps (default 4 n: a count, so the result
    is reproducible); the deadline is only a safety cap. `refresh`: accepted flips
    between SVDs (None: auto)."""
    sigma = np.full(x.shape[1], float(hi)) if start is None else np.array(start, dtype=float)
    a = x @ (sigma[:, None] * y)
    basis = _basis(x, y, a)
    scale = abs(hi - lo) * np.sqrt(basis.norm_x * basis.norm_y)
    v = np.ones(a.shape[1]) / np.sqrt(max(a.shape[1], 1))
    current = float(basis.s[0]) if basis.s.size else 0.0
    sweeps, finished, cut = 0, False, False
    cap = 4 * x.shape[1] if max_sweeps is None else max_sweeps
    if refresh is None:
        refresh = 1 if min(a.shape) <= SMALL_SVD else REFRESH
    while sweeps < cap:
        if time.monotonic() >= deadline:
            cut = True
            break
        sweeps += 1
        delta = np.where(sigma == hi, lo - hi, hi - lo)
        u, v = _top_pair(a, v)
        floor = np.abs(u @ a @ v + delta * (u @ x) * (y @ v))   # u^T A' v <= ||A'||
        best = _best_flip(basis, current, scale, delta, floor)
        if best is None:
            finished = True
            break
        j, current = best
        a += delta[j] * np.outer(x[:, j], y[j])
        sigma[j] = lo if sigma[j] == hi else hi
        basis.accepted.append((j, float(delta[j])))
        if len(basis.accepted) >= refresh:
            basis = _basis(x, y, a)
            current = max(current, float(basis.s[0]))
    value = float(np.linalg.svd(x @ (sigma[:, None] * y), compute_uv=False)[0])
    return GreedyResult(value, sigma, sweeps, finished, cut)


# --- a faster variant for large pairs (an estimate like the rule above, not the same path) ---

ASCENT_ROUNDS = 3    # rounds of (linearized ascent to a fixed point, a few single-flip sweeps)
ASCENT_STEPS = 200   # cap on sign-rule steps a round
POLISH_SWEEPS = 10   # sweeps of the paper's rule a round


def _top_triplet(x: np.ndarray, y: np.ndarray, sigma: np.ndarray):
    """(||M||, u, v) for M = X diag(sigma) Y, exact (M is small: at most rank x rank)."""
    u, s, vt = np.linalg.svd(x @ (sigma[:, None] * y), full_matrices=False)
    return float(s[0]), u[:, 0], vt[0]


def sign_ascent(x: np.ndarray, y: np.ndarray, lo: float, hi: float, sigma: np.ndarray,
                max_steps: int = ASCENT_STEPS) -> tuple[np.ndarray, int]:
    """Linearized ascent: with (u, v) the top singular pair of M(sigma), set every
    sigma_i to the end of [lo, hi] that maximizes u^T M(sigma') v = sum_i sigma'_i
    (u^T x_i)(y_i^T v) (ties keep sigma_i); repeat until sigma stops changing or the
    norm stops rising. Monotone: ||M(sigma')|| >= u^T M(sigma') v >= u^T M(sigma) v =
    ||M(sigma)||. Returns (sigma, steps)."""
    value, u, v = _top_triplet(x, y, sigma)
    for step in range(max_steps):
        c = (u @ x) * (y @ v)
        new = np.where(c > 0, max(lo, hi), np.where(c < 0, min(lo, hi), sigma))
        if np.array_equal(new, sigma):
            return sigma, step
        new_value, new_u, new_v = _top_triplet(x, y, new)
        if new_value <= value * (1 + IMPROVE):
            return sigma, step + 1
        sigma, value, u, v = new, new_value, new_u, new_v
    return sigma, max_steps


def ascent_max(x: np.ndarray, y: np.ndarray, lo: float, hi: float,
               deadline: float = float("inf"), rounds: int = ASCENT_ROUNDS,
               polish: int = POLISH_SWEEPS) -> GreedyResult:
    """From sigma = hi: `rounds` rounds of sign_ascent then at most `polish` sweeps of
    the paper's single-flip rule (greedy_max from there), stopping early once a round
    ends at a local maximum of the paper's rule (no single flip raises the norm). Counts
    only, so reproducible; a vertex's norm, so a lower estimate of the pair's max. Not
    the paper's path: it can end above or below greedy_max."""
    sigma = np.full(x.shape[1], float(hi))
    steps, finished, cut = 0, False, False
    for _ in range(rounds):
        if time.monotonic() >= deadline:
            cut = True
            break
        sigma, ascent_steps = sign_ascent(x, y, lo, hi, sigma)
        result = greedy_max(x, y, lo, hi, deadline, max_sweeps=polish, start=sigma)
        sigma, steps = result.sigma, steps + ascent_steps + result.sweeps
        cut = cut | result.cut_by_budget
        if result.finished or cut:
            finished = result.finished
            break
    value = float(np.linalg.svd(x @ (sigma[:, None] * y), compute_uv=False)[0])
    return GreedyResult(value, sigma, steps, finished, cut)
