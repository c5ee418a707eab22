"""Certified lower bounds from activation patterns of ReLU-family MLPs (issue 12, item 3).

On a piecewise-linear chain f = A_L o act o ... o act o A_1 the Jacobian on the region
of activation pattern P is J(P) = W_L D_{L-1} ... D_1 W_1, so Lip(f) = max ||J(P)|| over
the patterns whose region has an interior. The upper-bound methods find patterns with a
large ||J(P)|| (SeqLip's greedy rule maximises each pair's norm); this module turns them
into certified lower bounds:

1. targets: each hidden layer's pattern from greedy SeqLip on the chain's SVD factors
   (heuristic/greedy.py, the upper bound's own rule), then a block sign ascent of the
   whole product ||J(P)|| (monotone, as greedy.sign_ascent, one layer at a time);
2. realise: layer by layer, an LP (scipy HiGHS) that keeps the layers already realised
   with a margin t and asks the next layer for the target signs with slacks (maximise
   t - PENALTY * sum of slacks): where the target is reachable the slacks are zero, where
   it is not the point lands in a nearby reachable pattern. When those LPs would be large
   and W1 has full row rank (no box), every first-layer pattern is reachable: least
   squares on the rows meets it exactly and NNLS on the second layer's rows comes near
   the second layer's target (`realise_free`, no LP);
3. walk (LP path): from that region, flip the unit whose flip raises ||J(P)|| most (exact rank-one
   updates of J J^T) when an LP finds a ball inside the flipped region, until no tested
   flip does (the "nearest reachable, then ascent" step);
4. certify: the centre x and radius r of the region's largest ball (LP), the pair
   x -/+ 0.45 r v with v the top right singular vector of J(P): both points lie in the
   region, so the quotient equals ||J(P) v||; it is evaluated like every other quotient
   (lower/search.py: exact network, float64, minus the rounding margin), so a wrong
   region or a rounding slip can only lower it, never make it unsound. Then a short
   Jacobian-norm ascent (lower/ascent.py) from the regions' centres adds its pairs.

Counts decide the value (targets, LPs, walk steps); `budget_s` is a safety cap checked
with time.perf_counter() before each LP and between steps.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from lipcheck.estimators.exact.pwl_chain import Chain
from lipcheck.estimators.exact.regions import LpBudget
from lipcheck.estimators.lower import steer
from lipcheck.estimators.lower.netfn import NetFunction
from lipcheck.estimators.lower.search import Box, Pairs, quotients

MAX_UNITS = 2048          # hidden units at most (dense per-layer matrices)
MAX_INPUTS = 4096
MAX_LP_ENTRIES = 200_000  # LP matrix entries at most (HiGHS on dense rows: ~0.1 s here)
GREEDY_MAX_UNITS = 256    # larger layers: no greedy (seconds), the sign ascent from all active
MAX_LPS = 60              # LPs per call (a count, so the value is reproducible)
WALK_TRIES = 4            # flips tested by LP per walk step (best predicted first)
SIGN_STEPS = 50           # block sign-ascent sweeps over the layers
PENALTY = 10.0            # weight of the slacks against the margin in the realising LP
T_CAP = 1.0               # margin cap (rows have unit norm): keeps the LPs bounded
MIN_RADIUS = 1e-9         # a region's ball must be at least this (relative to |x|) to be used
IMPROVE = 1e-9
ASCENT_STEPS = 60         # Jacobian-norm ascent from the regions' centres (lower/ascent.py)
ASCENT_LR = 0.01          # its Adam step, relative to the point's largest entry


@dataclass
class Region:
    signs: list[np.ndarray]   # +1 / -1 per unit of each hidden layer
    point: np.ndarray
    radius: float
    norm: float               # ||J(P)|| (float64 SVD: steering only)


def _slope(chain: Chain, layer: int, signs: np.ndarray) -> np.ndarray:
    return np.where(signs > 0, 1.0, chain.slopes[layer])


def pre_activations(chain: Chain, signs: list[np.ndarray]) -> tuple[list, np.ndarray]:
    """[(M_l, c_l)] with z_l = M_l x + c_l on the region of `signs` (len(signs) layers
    given), and the map after them (J(P) when all hidden layers are given)."""
    first = chain.affines[0]
    m, c, rows = first.weight, first.bias, []
    for layer, s in enumerate(signs):
        rows.append((m, c))
        sigma, nxt = _slope(chain, layer, s), chain.affines[layer + 1]
        m, c = nxt.weight @ (sigma[:, None] * m), nxt.weight @ (sigma * c) + nxt.bias
    return rows, m


def jacobian_norm(chain: Chain, signs: list[np.ndarray]) -> float:
    return steer.norm(chain, signs)   # J(P) formed from the (narrow) output side


# --- 1. target patterns ---------------------------------------------------------------

def seqlip_targets(chain: Chain, deadline: float) -> list[np.ndarray]:
    """Each hidden layer's pattern from greedy SeqLip on its pair of SVD factors (layers
    with one slope and at most GREEDY_MAX_UNITS units; else all active: the block sign
    ascent starts from there)."""
    from lipcheck.estimators.heuristic.greedy import greedy_max
    from lipcheck.estimators.upper.seqlip import Factor, pair_matrices
    eligible = [np.ptp(s) == 0 and len(s) <= GREEDY_MAX_UNITS for s in chain.slopes]
    signs = [np.ones(len(s)) for s in chain.slopes]
    if not any(eligible):
        return signs
    factors = []
    for affine in chain.affines:
        u, s, vt = np.linalg.svd(affine.weight, full_matrices=False)
        factors.append(Factor(u, s, vt.T))
    for layer, (x, y) in enumerate(pair_matrices(factors)):
        if eligible[layer] and time.perf_counter() < deadline:
            lo = float(chain.slopes[layer][0])
            sigma = greedy_max(x, y, lo, 1.0, deadline).sigma
            signs[layer] = np.where(sigma == 1.0, 1.0, -1.0)
    return signs


def sign_ascent(chain: Chain, signs: list[np.ndarray], steps: int = SIGN_STEPS,
                deadline: float = float("inf")) -> list[np.ndarray]:
    """Block ascent of ||J(P)||: with (u, v) J's top singular pair, set layer l's slopes to
    the ends that maximise u^T J v (linear in D_l); keep a change only if ||J|| rises."""
    signs = [s.copy() for s in signs]
    value = jacobian_norm(chain, signs)
    for _ in range(steps):
        moved = False
        for layer in range(len(signs)):
            if time.perf_counter() > deadline:
                return signs
            trial = [s.copy() for s in signs]
            trial[layer] = _best_layer_signs(chain, signs, layer)
            new = jacobian_norm(chain, trial)
            if new > value * (1 + IMPROVE):
                signs, value, moved = trial, new, True
        if not moved:
            break
    return signs


def _best_layer_signs(chain: Chain, signs: list[np.ndarray], layer: int) -> np.ndarray:
    gain = steer.gains(chain, signs, layer)           # d(u^T J v) / d(active_i)
    return np.where(gain > 0, 1.0, np.where(gain < 0, -1.0, signs[layer]))


def _downstream(chain: Chain, signs: list[np.ndarray], layer: int) -> np.ndarray:
    """W_L D_{L-1} ... D_{l+1} W_{l+1}: (n_out, width of layer l)."""
    m = chain.affines[-1].weight
    for k in range(len(signs) - 1, layer, -1):
        m = (m * _slope(chain, k, signs[k])[None, :]) @ chain.affines[k].weight
    return m


# --- 2. realise a pattern, 3. walk to better neighbours ------------------------------

def _unit_rows(m: np.ndarray, c: np.ndarray, signs: np.ndarray):
    """Constraints s (m x + c) >= t |m| as (-s m/|m|) x + t <= s c/|m|; rows with m = 0
    must hold as constants (None if one does not)."""
    size = np.linalg.norm(m, axis=1)
    flat = size <= 1e-14 * np.maximum(1.0, np.abs(c))
    if np.any(flat & (signs * c <= 0)):
        return None
    keep = ~flat
    a = -(signs[keep, None] * m[keep]) / size[keep, None]
    return a, signs[keep] * c[keep] / size[keep]


def _linprog(cost, a_ub, b_ub, bounds, budget: LpBudget):
    from scipy.optimize import linprog  # lazy: importing scipy.optimize takes ~1.5 s
    budget.lps += 1
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    return res.x if res.status == 0 else None


def _box_rows(n: int, box: Box, extra: int) -> tuple[np.ndarray, np.ndarray]:
    """x_k - lo >= t and hi - x_k >= t (the ball inside the box), over [x, t, extra]."""
    if box is None:
        return np.zeros((0, n + 1 + extra)), np.zeros(0)
    eye, ones, zeros = np.eye(n), np.ones((n, 1)), np.zeros((n, extra))
    a = np.vstack([np.hstack([eye, ones, zeros]), np.hstack([-eye, ones, zeros])])
    return a, np.concatenate([np.full(n, box[1]), np.full(n, -box[0])])


def largest_ball(chain: Chain, signs: list[np.ndarray], box: Box,
                 budget: LpBudget) -> tuple[np.ndarray, float] | None:
    """Centre and radius of the largest ball (radius <= T_CAP) in the region of `signs`."""
    pre = pre_activations(chain, signs)[0]   # one (M_l, c_l) per layer of `signs`
    rows = [_unit_rows(m, c, s) for (m, c), s in zip(pre, signs, strict=True)]
    if any(r is None for r in rows):
        return None
    n = chain.n_in
    a = np.vstack([np.hstack([r[0], np.ones((len(r[1]), 1))]) for r in rows])
    b = np.concatenate([r[1] for r in rows])
    box_a, box_b = _box_rows(n, box, 0)
    cost = np.zeros(n + 1)
    cost[-1] = -1.0
    x = _linprog(cost, np.vstack([a, box_a]), np.concatenate([b, box_b]),
                 [(None, None)] * n + [(0.0, T_CAP)], budget)
    if x is None or x[-1] <= MIN_RADIUS * max(1.0, float(np.abs(x[:n]).max())):
        return None
    return x[:n], float(x[-1])


def realise(chain: Chain, target: list[np.ndarray], box: Box, budget: LpBudget) -> Region | None:
    """A region near the target: layer by layer, keep the realised layers (margin t) and
    ask for the target signs with slacks e (maximise t - PENALTY sum e)."""
    n = chain.n_in
    done: list[np.ndarray] = []
    for want in target:
        if budget.spent():
            return None
        pre = pre_activations(chain, done + [want])[0]
        fixed = [_unit_rows(m, c, s) for (m, c), s in zip(pre[:-1], done, strict=True)]
        soft = _unit_rows(pre[-1][0], pre[-1][1], want)   # flat rows: zero slack possible
        if soft is None or any(r is None for r in fixed):
            return None
        k = len(soft[1])
        a = [np.hstack([r[0], np.ones((len(r[1]), 1)), np.zeros((len(r[1]), k))]) for r in fixed]
        a.append(np.hstack([soft[0], np.ones((k, 1)), -np.eye(k)]))
        box_a, box_b = _box_rows(n, box, k)
        b = np.concatenate([r[1] for r in fixed] + [soft[1], box_b])
        cost = np.concatenate([np.zeros(n), [-1.0], np.full(k, PENALTY)])
        x = _linprog(cost, np.vstack(a + [box_a]), b,
                     [(None, None)] * n + [(0.0, T_CAP)] + [(0.0, None)] * k, budget)
        if x is None:
            return None
        z = pre[-1][0] @ x[:n] + pre[-1][1]
        done.append(np.where(want * z >= 0, want, -want))
    if budget.spent():
        return None
    ball = largest_ball(chain, done, box, budget)
    return None if ball is None else Region(done, ball[0], ball[1], jacobian_norm(chain, done))


def free_first_layer(chain: Chain, box: Box) -> bool:
    """W1 has full row rank and no box: x -> W1 x + b1 is onto, every first-layer
    pre-activation vector z1 is reached (x = W1^+ (z1 - b1))."""
    w1 = chain.affines[0].weight
    if box is not None or w1.shape[0] > w1.shape[1]:
        return False
    s = np.linalg.svd(w1, compute_uv=False)
    return bool(s[-1] > 1e-10 * s[0])


def ball_at(chain: Chain, x: np.ndarray) -> Region | None:
    """The region of x and the largest ball around x inside it: on the region every z_i
    is affine, so the ball of radius min_i |z_i(x)| / |m_i| keeps every sign."""
    first = chain.affines[0]
    m, c, signs, radius = first.weight, first.bias, [], np.inf
    for layer in range(len(chain.slopes)):
        z, size = m @ x + c, np.linalg.norm(m, axis=1)
        live = size > 0
        if np.any(z[~live] == 0):
            return None
        if live.any():
            radius = min(radius, float(np.min(np.abs(z[live]) / size[live])))
        signs.append(np.where(z > 0, 1.0, -1.0))
        sigma, nxt = _slope(chain, layer, signs[-1]), chain.affines[layer + 1]
        m, c = nxt.weight @ (sigma[:, None] * m), nxt.weight @ (sigma * c) + nxt.bias
    if not radius > MIN_RADIUS * max(1.0, float(np.abs(x).max())):
        return None
    return Region(signs, x, radius, jacobian_norm(chain, signs))


def realise_free(chain: Chain, target: list[np.ndarray], solve=None) -> Region | None:
    """Without LPs, when the first layer is free (free_first_layer): its target signs
    exactly, the second layer's by least squares on its rows with nonnegative active
    values (NNLS: W2[:, A] h ~ s2 - b2, h >= 0), later layers as they fall. `solve`:
    steer.preimage(chain) when the caller has it."""
    from scipy.optimize import nnls
    s1 = target[0]
    active = s1 > 0
    h = np.ones(int(active.sum()))
    if len(target) > 1 and active.any():
        w2, b2 = chain.affines[1].weight, chain.affines[1].bias
        h = nnls(w2[:, active], target[1] - b2, maxiter=10 * active.sum())[0]
    floor = 1e-3 * max(float(h.max(initial=0.0)), 1e-6)
    z1 = np.full(len(s1), -max(float(h.mean()) if h.size else 1.0, floor))
    z1[active] = np.maximum(h, floor)
    return ball_at(chain, (solve or steer.preimage(chain))(z1))


def steered(chain: Chain, target: list[np.ndarray], deadline: float, solve) -> Region | None:
    """The region of the best point of lower/steer.py's walk from `target` (first layer
    onto: the point is x = solve(z1) = W1^+ (z1 - b1))."""
    z1 = steer.steer(chain, target, deadline=deadline)
    return None if z1 is None else ball_at(chain, solve(z1))


def flip_gains(chain: Chain, signs: list[np.ndarray]) -> list[np.ndarray]:
    """||J(P with unit i of layer l flipped)|| for every unit: J' = J + d a b^T with a the
    downstream column, b the upstream row, d the slope change; through J' J'^T (exact)."""
    rows, jac = pre_activations(chain, signs)
    gram = jac @ jac.T
    out = []
    for layer, s in enumerate(signs):
        a = _downstream(chain, signs, layer)                          # (n_out, h)
        b = rows[layer][0]                                            # (h, n_in)
        d = np.where(s > 0, chain.slopes[layer] - 1.0, 1.0 - chain.slopes[layer])
        jb = jac @ b.T                                                # (n_out, h)
        cross = d[:, None, None] * (a.T[:, :, None] * jb.T[:, None, :])
        new = (gram[None] + cross + cross.transpose(0, 2, 1)
               + (d * d * np.einsum("hn,hn->h", b, b))[:, None, None]
               * (a.T[:, :, None] * a.T[:, None, :]))
        out.append(np.sqrt(np.maximum(np.linalg.eigvalsh(new)[:, -1], 0.0)))
    return out


def walk(chain: Chain, region: Region, box: Box, budget: LpBudget,
         tries: int = WALK_TRIES) -> Region:
    """Move to the flipped neighbour with the largest ||J|| among the `tries` best
    predicted flips that an LP finds a ball in; stop when none of them is reachable."""
    while not budget.spent():
        gains = flip_gains(chain, region.signs)
        flat = np.concatenate(gains)
        order = [i for i in np.argsort(-flat, kind="stable")[:tries]
                 if flat[i] > region.norm * (1 + IMPROVE)]
        moved = None
        for i in order:
            layer = int(np.searchsorted(np.cumsum([len(g) for g in gains]), i, side="right"))
            unit = int(i - sum(len(g) for g in gains[:layer]))
            signs = [s.copy() for s in region.signs]
            signs[layer][unit] *= -1
            if budget.spent():
                break
            ball = largest_ball(chain, signs, box, budget)
            if ball is not None:
                moved = Region(signs, ball[0], ball[1], jacobian_norm(chain, signs))
                break
        if moved is None or moved.norm <= region.norm * (1 + IMPROVE):
            return region
        region = moved
    return region


# --- 4. certify, and the entry point --------------------------------------------------

def region_pairs(fn: NetFunction, chain: Chain, regions: list[Region]) -> Pairs:
    """Per region the pair x -/+ 0.45 r v (v: J(P)'s top right singular vector): both in
    the ball, so the quotient is ||J(P) v|| up to rounding. Values: batched quotients of
    the exact network (ranking); the caller certifies the best point by point."""
    ps, qs, sigmas = [], [], []
    for region in regions:
        _, s, vt = np.linalg.svd(pre_activations(chain, region.signs)[1], full_matrices=False)
        step = 0.45 * region.radius * vt[0]
        ps.append(region.point - step)
        qs.append(region.point + step)
        sigmas.append(s[0])
    p, q = (torch.tensor(np.array(v), dtype=torch.float64) for v in (ps, qs))
    f = fn.exact_batch(torch.cat([p, q]))
    values = quotients(f[: len(p)], f[len(p):], p, q)
    return Pairs(values, p, q, torch.tensor(sigmas, dtype=torch.float64))


def lp_sized(chain: Chain) -> bool:
    return sum(chain.widths) * (chain.n_in + 1 + max(chain.widths)) <= MAX_LP_ENTRIES


def applicable(chain: Chain, box: Box, max_units: int = MAX_UNITS) -> bool:
    """A chain with at least one activation layer (an affine map has one pattern), small
    enough for the LPs or with a first layer that least squares can steer."""
    return (len(chain.widths) > 0 and sum(chain.widths) <= max_units and chain.n_in <= MAX_INPUTS
            and chain.affines[-1].weight.shape[0] <= 64
            and (lp_sized(chain) or free_first_layer(chain, box)))


def pattern_regions(chain: Chain, box: Box, budget_s: float,
                    max_lps: int = MAX_LPS) -> list[Region]:
    """Regions reached from the SeqLip patterns: the target as found, and after the block
    sign ascent of ||J(P)||; each realised, then walked uphill."""
    deadline = time.perf_counter() + budget_s
    budget = LpBudget(max_lps, deadline)
    first = seqlip_targets(chain, deadline)
    targets = [first]
    if time.perf_counter() < deadline:
        better = sign_ascent(chain, first, deadline=deadline)
        if any(np.any(a != b) for a, b in zip(better, first, strict=True)):
            targets.append(better)
    found, free = [], free_first_layer(chain, box)
    solve = steer.preimage(chain) if free and not lp_sized(chain) else None
    for target in targets:
        if time.perf_counter() > deadline:
            break
        if solve is not None:
            for region in (realise_free(chain, target, solve),
                           steered(chain, target, deadline, solve)):
                if region is not None:
                    found.append(region)
            continue
        region = realise(chain, target, box, budget)
        if region is not None:
            found.append(walk(chain, region, box, budget))
    return found


@dataclass
class PatternResult:
    pairs: Pairs | None       # None: not applicable, or no region found
    cut: bool = False         # the time cap ended the phase (the value may depend on speed)


def pattern_pairs(graph, fn: NetFunction, box: Box, budget_s: float, max_lps: int = MAX_LPS,
                  max_units: int = MAX_UNITS) -> PatternResult:
    """Secant pairs in the regions of the SeqLip patterns, then the best pairs of a short
    Jacobian-norm ascent (lower/ascent.py) started at their centres. No pairs when the
    graph is not a small ReLU-family chain or nothing was found within the counts."""
    deadline = time.perf_counter() + budget_s
    chain = _chain(graph, fn, box, max_units, deadline)
    if chain is None:
        return PatternResult(None, time.perf_counter() > deadline)
    try:
        with np.errstate(all="ignore"):
            regions = pattern_regions(chain, box, deadline - time.perf_counter(), max_lps)
            regions = [r for r in regions if np.isfinite(r.norm) and np.all(np.isfinite(r.point))]
            pairs = region_pairs(fn, chain, regions) if regions else None
    except (np.linalg.LinAlgError, ValueError):   # overflowing weights: no witness here
        return PatternResult(None)
    if pairs is not None and time.perf_counter() < deadline:
        pairs = _concat(pairs, _ascend(fn, regions, box, deadline))
    return PatternResult(pairs, time.perf_counter() > deadline)


def _chain(graph, fn: NetFunction, box: Box, max_units: int,
           deadline: float = math.inf) -> Chain | None:
    from lipcheck.errors import UserError
    from lipcheck.estimators.exact.pwl_chain import hidden_units, pwl_chain
    if hidden_units(graph) > max_units or fn.n_in > MAX_INPUTS:
        return None
    try:
        chain = pwl_chain(graph, deadline)
    except (UserError, RuntimeError, ValueError):   # OutOfTime is a RuntimeError
        return None
    return chain if applicable(chain, box, max_units) and _finite(chain) else None


def _finite(chain: Chain) -> bool:
    """Every weight and bias finite, and small enough that products over the chain stay
    finite (badly scaled nets are left to the other searches)."""
    scale = 1.0
    for affine in chain.affines:
        if not (np.all(np.isfinite(affine.weight)) and np.all(np.isfinite(affine.bias))):
            return False
        largest = max(float(np.abs(affine.weight).max(initial=0.0)), 1.0)
        scale *= largest * (1 + affine.weight.shape[1])

    return scale < 1e150


def _ascend(fn: NetFunction, regions: list[Region], box: Box, deadline: float) -> Pairs:
    from lipcheck.estimators.lower.ascent import jacobian_ascent
    from lipcheck.estimators.lower.cost import Clock
    xs = torch.tensor(np.array([r.point for r in regions]), dtype=torch.float64)
    lrs = ASCENT_LR * xs.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    schedule = torch.tensor([[5.0, 30.0]] * len(xs), dtype=torch.float64)
    # no step of the ascent starts that cannot end before the deadline
    clock = Clock(deadline, getattr(fn, "forward_s", 0.0))
    return jacobian_ascent(fn, xs, ASCENT_STEPS, lrs, box, schedule, clock=clock)


def _concat(a: Pairs, b: Pairs) -> Pairs:
    return Pairs(torch.cat([a.values, b.values]), torch.cat([a.p, b.p]), torch.cat([a.q, b.q]),
                 torch.cat([a.sigmas, b.sigmas]))
