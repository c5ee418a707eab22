"""max over sigma in [lo, hi]^n of ||X diag(sigma) Y||: the per-pair problem of SeqLip.

The norm is convex in sigma, so its maximum over the box is at a vertex. Three
solvers, each honest about what it returns:
- `enumerate_max`: every vertex (n <= ENUMERATE_MAX), certified and exact;
- `branch_and_bound`: best-first over vertices with a certified bound on each open
  box; exact when it completes, otherwise the largest open bound (still certified);
- `greedy_max`: the paper's greedy rule (Scaman & Virmaux 2018): start at sigma = hi,
  repeatedly make the single flip that increases the norm most, stop at a local
  maximum. A lower estimate of the maximum, never a bound.
"""
from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg

FLOAT64_MARGIN = 1e-9  # as lipcheck.spectral.operator (not imported: import cycle)

ENUMERATE_MAX = 16   # 2^16 vertices, batched
BATCH = 4096
MAX_OPEN = 50_000     # open boxes kept in memory at most
MAX_NODES = 2_000     # boxes expanded at most (a count, so the result is reproducible)
REL_TOL = 1e-9       # branch and bound stops when open bounds are within this of the best


@dataclass
class PairResult:
    value: float
    certified: bool          # value is proven >= the maximum
    complete: bool           # the maximum was found (value is the maximum, up to rounding)
    sigma: np.ndarray | None = None
    detail: str = ""
    cut_by_budget: bool = False  # the wall-clock safety cap stopped it (not reproducible)


def reduce_pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replace X (p, n) and Y (n, q) by factors with min(p, n) rows and min(q, n) columns
    and the same ||X diag(s) Y|| for every s (orthogonal factors drop out)."""
    if x.shape[0] > x.shape[1]:
        x = scipy.linalg.qr(x, mode="r")[0][: x.shape[1]]
    if y.shape[1] > y.shape[0]:
        y = scipy.linalg.qr(y.T, mode="r")[0][: y.shape[0]].T
    return x, y


def spectral(m: np.ndarray) -> float:
    if m.size == 0:
        return 0.0
    return float(scipy.linalg.svdvals(m, check_finite=False)[0])


def _batched_norms(x: np.ndarray, y: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    mats = np.einsum("pn,bn,nq->bpq", x, sigmas, y, optimize=True)
    gram = mats @ mats.transpose(0, 2, 1) if mats.shape[1] <= mats.shape[2] else \
        mats.transpose(0, 2, 1) @ mats
    return np.sqrt(np.maximum(np.linalg.eigvalsh(gram)[:, -1], 0.0))


def enumerate_max(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> PairResult:
    """Every vertex of the box; certified with a float64 rounding margin."""
    x, y = reduce_pair(x, y)
    n = x.shape[1]
    best, best_sigma = -1.0, None
    codes = np.arange(2**n, dtype=np.int64)
    for start in range(0, 2**n, BATCH):
        bits = (codes[start:start + BATCH, None] >> np.arange(n)) & 1
        sigmas = np.where(bits == 1, hi, lo).astype(np.float64)
        norms = _batched_norms(x, y, sigmas)
        i = int(np.argmax(norms))
        if norms[i] > best:
            best, best_sigma = float(norms[i]), sigmas[i]
    # Gram eigenvalues square the rounding: margin on top of the SVD margin
    value = best * (1 + FLOAT64_MARGIN + 1e-7)
    return PairResult(value, True, True, best_sigma, f"enumeration of 2^{n} vertices")


def alternating_ascent(x: np.ndarray, y: np.ndarray, lo: float, hi: float, sigma: np.ndarray,
                       steps: int = 50,
                       offset: np.ndarray | float = 0.0) -> tuple[float, np.ndarray]:
    """Local search on ||offset + X diag(sigma) Y||: top singular pair -> best vertex for
    it -> repeat. Returns a value attained at a vertex (a lower estimate of the max)."""
    best, best_sigma = -1.0, sigma
    for _ in range(steps):
        m = offset + x @ (sigma[:, None] * y)
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        if s.size == 0 or s[0] <= best * (1 + 1e-14):
            break
        best, best_sigma = float(s[0]), sigma
        score = (u[:, 0] @ x) * (y @ vt[0])
        sigma = np.where(score > 0, hi, lo)
    return best, best_sigma


class _Tree:
    """Best-first branch and bound, variables fixed in a fixed order (largest first)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> None:
        weight = np.linalg.norm(x, axis=0) * np.linalg.norm(y, axis=1)
        self.order = np.argsort(-weight)
        self.x, self.y = x[:, self.order], y[self.order]
        self.lo, self.hi = lo, hi
        self.center, self.radius = (lo + hi) / 2, (hi - lo) / 2
        # suffix quantities (free variables at depth d are order[d:]), computed when a box
        # of depth d is first bounded: n SVDs up front ran seconds past --time-budget
        self._free_sum: dict[int, np.ndarray] = {}
        self._free_slack: dict[int, float] = {}

    def free_sum(self, d: int) -> np.ndarray:
        if d not in self._free_sum:
            self._free_sum[d] = self.x[:, d:] @ self.y[d:]
        return self._free_sum[d]

    def free_slack(self, d: int) -> float:
        if d not in self._free_slack:
            self._free_slack[d] = self._slack(d)
        return self._free_slack[d]

    def _slack(self, d: int) -> float:
        if d >= self.x.shape[1]:
            return 0.0
        xs, ys = self.x[:, d:], self.y[d:]
        by_columns = float(np.sum(np.linalg.norm(xs, axis=0) * np.linalg.norm(ys, axis=1)))
        return min(by_columns, spectral(xs) * spectral(ys)) * (1 + 1e-12)

    def upper(self, fixed: np.ndarray) -> float:
        """Certified bound on the norm over every completion of `fixed` (depth = len)."""
        d = len(fixed)
        m = self.x[:, :d] @ (fixed[:, None] * self.y[:d]) + self.center * self.free_sum(d)
        slack = abs(self.radius) * self.free_slack(d)
        return (spectral(m) * (1 + FLOAT64_MARGIN) + slack) * (1 + 1e-12)

    def original(self, sigma: np.ndarray) -> np.ndarray:
        out = np.empty_like(sigma)
        out[self.order] = sigma
        return out

    def leaf(self, sigma: np.ndarray) -> float:
        return spectral(self.x @ (sigma[:, None] * self.y))

    def completion(self, fixed: np.ndarray) -> tuple[float, np.ndarray]:
        """A good vertex below `fixed` (lower estimate), sigma in the original order."""
        d = len(fixed)
        start = np.concatenate([fixed, np.full(self.x.shape[1] - d, self.hi)])
        offset = self.x[:, :d] @ (fixed[:, None] * self.y[:d])
        value, sigma = alternating_ascent(self.x[:, d:], self.y[d:], self.lo, self.hi, start[d:],
                                          steps=5, offset=offset)
        return value, self.original(np.concatenate([fixed, sigma]))


def branch_and_bound(x: np.ndarray, y: np.ndarray, lo: float, hi: float,
                     deadline: float = math.inf, max_nodes: int = MAX_NODES) -> PairResult:
    """Best-first search; stops after `max_nodes` expansions (reproducible) or, as a
    safety cap only, at `deadline`. Either way the value is a certified bound."""
    x, y = reduce_pair(x, y)
    tree = _Tree(x, y, lo, hi)
    n = x.shape[1]
    best, best_sigma = tree.completion(np.empty(0))
    pruned_max, counter, nodes = 0.0, itertools.count(), 0
    heap = [(-tree.upper(np.empty(0)), next(counter), np.empty(0))]
    cut, step = False, 0.0   # step: the last expansion's seconds, the next one's estimate
    while heap and nodes < max_nodes and len(heap) < MAX_OPEN:
        began = time.monotonic()
        if began + step >= deadline:   # start no expansion that cannot finish
            cut = True
            break
        neg_ub, _, fixed = heapq.heappop(heap)
        nodes += 1
        if -neg_ub <= best * (1 + REL_TOL):
            pruned_max = max(pruned_max, -neg_ub)
            heap = []
            break
        for value in (hi, lo):
            child = np.append(fixed, value)
            if len(child) == n:
                norm = tree.leaf(child)
                if norm > best:
                    best, best_sigma = norm, tree.original(child)
                continue
            ub = tree.upper(child)
            low, sig = tree.completion(child)
            if low > best:
                best, best_sigma = low, sig
            if ub <= best * (1 + REL_TOL):
                pruned_max = max(pruned_max, ub)
            else:
                heapq.heappush(heap, (-ub, next(counter), child))
        step = time.monotonic() - began
    open_max = max((-h[0] for h in heap), default=0.0)
    value = max(best * (1 + FLOAT64_MARGIN), pruned_max, open_max)
    complete = not heap
    why = ("the time budget (safety cap)" if cut
           else f"the cap of {max_nodes} boxes or {MAX_OPEN} open")

    detail = (f"branch and bound finished ({nodes} boxes)" if complete else
              f"branch and bound stopped by {why} with {len(heap)} open boxes: "
              f"certified bound {value:.6g}, best vertex found {best:.6g}")
    return PairResult(value, True, complete, best_sigma, detail, cut)


def exact_max(x: np.ndarray, y: np.ndarray, lo: float, hi: float, deadline: float,
              max_nodes: int = MAX_NODES) -> PairResult:
    if lo == hi:
        return PairResult(spectral(lo * (x @ y)) * (1 + FLOAT64_MARGIN), True, True)
    if x.shape[1] <= ENUMERATE_MAX:
        return enumerate_max(x, y, lo, hi)
    return branch_and_bound(x, y, lo, hi, deadline, max_nodes)
