"""SeqLip (Scaman & Virmaux 2018) on a chain M_k D_{k-1} ... D_1 M_1.

With thin SVDs M_i = U_i S_i V_i^T, the chain's Jacobian factors as
  U_k [S~_k V_k^T D_{k-1} U_{k-1} S~_{k-1}] ... [S~_2 V_2^T D_1 U_1 S~_1] V_1^T
(S~ = S at both ends, S^(1/2) inside), so its norm is at most the product over pairs of
max over D of the bracket's norm. Each pair's max is at a vertex of the slope box.

- exact: each pair's max by enumeration or branch and bound: a certified upper bound
  (for one activation, k = 2, it is the exact max over the box).
- greedy: the paper's greedy rule per pair: a heuristic estimate, never a bound. Pairs
  with more than ASCENT_MIN_UNITS units use greedy.ascent_max (linearized ascent, then
  capped sweeps of the rule): also an estimate, faster, not the paper's path.
- lowrank: the top-k singular triplets of each part (randomized SVD on the real
  operator) and the greedy rule: a heuristic estimate (truncation is not bounded).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

from lipcheck.estimators.exact.pairmax import MAX_NODES, exact_max
from lipcheck.estimators.heuristic.greedy import ascent_max, greedy_max
from lipcheck.estimators.upper.chains import Chain, LinearPart
from lipcheck.estimators.upper.segments import Segment
from lipcheck.settings import Settings
from lipcheck.spectral.operator import LinearOperator

POWER_STEPS = 6
ASCENT_MIN_UNITS = 2048   # larger pairs: linearized ascent + capped polish (greedy.ascent_max)


@dataclass
class Factor:
    u: np.ndarray   # (n_out, r)
    s: np.ndarray   # (r,)
    v: np.ndarray   # (n_in, r)


@dataclass
class ChainBound:
    value: float
    certified: bool
    complete: bool
    detail: str
    seconds: float = 0.0
    cut_by_budget: bool = False  # the wall-clock safety cap stopped it (not reproducible)
    # Set when the chain is the branch of a residual block bounded as a whole: a bound of the
    # span from the block's input to its Add (`value` stays a bound of the branch alone).
    segment: Segment | None = None


def dense_factor(part: LinearPart) -> Factor:
    u, s, vt = scipy.linalg.svd(part.matrix(), full_matrices=False, lapack_driver="gesvd")
    return Factor(u, s, vt.T)


def _batched(op: LinearOperator):
    """Block products with the operator and its adjoint (autograd of the linear map)."""
    forward = torch.func.vmap(op.apply)

    def apply(block: np.ndarray) -> np.ndarray:       # (n_in, b) -> (n_out, b)
        x = torch.from_numpy(np.ascontiguousarray(block.T)).to(op.dtype).reshape(-1, *op.in_shape)
        with torch.no_grad():
            return forward(x).reshape(block.shape[1], -1).T.cpu().numpy()

    def adjoint(block: np.ndarray) -> np.ndarray:     # (n_out, b) -> (n_in, b)
        c = torch.from_numpy(np.ascontiguousarray(block.T)).to(op.dtype).reshape(-1, *op.out_shape)
        x = torch.zeros((block.shape[1], *op.in_shape), dtype=op.dtype, requires_grad=True)
        (grad,) = torch.autograd.grad(forward(x), x, grad_outputs=c)
        return grad.reshape(block.shape[1], -1).T.cpu().numpy()
    return apply, adjoint


def randomized_factor(op: LinearOperator, rank: int, seed: int) -> Factor:
    """Top-`rank` singular triplets by a randomized range finder with power steps
    (Halko, Martinsson & Tropp 2011) on the real operator."""
    apply, adjoint = _batched(op)
    width = min(rank + max(10, rank // 2), op.n_in, op.n_out)
    omega = np.random.default_rng(seed).standard_normal((op.n_in, width))
    q = np.linalg.qr(apply(omega))[0]
    for _ in range(POWER_STEPS):
        q = np.linalg.qr(apply(np.linalg.qr(adjoint(q))[0]))[0]
    b = adjoint(q).T                                   # (width, n_in) = Q^T A
    ub, s, vt = np.linalg.svd(b, full_matrices=False)
    keep = min(rank, len(s))
    return Factor(q @ ub[:, :keep], s[:keep], vt[:keep].T)


def pair_matrices(factors: list[Factor]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(X_i, Y_i) with pair i's matrix X_i diag(sigma) Y_i, for i = 1..k-1."""
    k = len(factors)
    scale = [f.s if i in (0, k - 1) else np.sqrt(f.s) for i, f in enumerate(factors)]
    left = [f.u * sc for f, sc in zip(factors, scale, strict=True)]       # U_i S~_i    (n, r)
    right = [(f.v * sc).T for f, sc in zip(factors, scale, strict=True)]  # S~_i V_i^T  (r, n)
    return [(right[i + 1], left[i]) for i in range(k - 1)]


def _product(values: list[float]) -> float:
    return math.prod(values) if values else 0.0


def exact_chain(chain: Chain, settings: Settings, deadline: float,
                max_nodes: int = MAX_NODES) -> ChainBound:
    """Each pair by enumeration or branch and bound (at most `max_nodes` boxes a pair)."""
    start = time.monotonic()
    pairs = pair_matrices([dense_factor(p) for p in chain.parts])
    values, notes, complete, cut = [], [], True, False
    for i, ((x, y), (lo, hi)) in enumerate(zip(pairs, chain.slopes, strict=True)):
        result = exact_max(x, y, lo, hi, deadline, max_nodes)
        values.append(result.value)
        complete &= result.complete
        cut |= result.cut_by_budget
        notes.append(f"pair {i + 1} (n={x.shape[1]}): {result.detail}")
    value = _product(values) * (1 + 1e-12 * len(values))
    return ChainBound(value, True, complete, "; ".join(notes), time.monotonic() - start, cut)


def greedy_chain(factors: list[Factor], slopes: list[tuple[float, float]],
                 deadline: float) -> ChainBound:
    start = time.monotonic()
    values, notes, cut = [], [], False
    for i, ((x, y), (lo, hi)) in enumerate(zip(pair_matrices(factors), slopes, strict=True)):
        fast = x.shape[1] > ASCENT_MIN_UNITS
        result = (ascent_max if fast else greedy_max)(x, y, lo, hi, deadline)
        values.append(result.value)
        cut |= result.cut_by_budget
        state = ("local maximum" if result.finished else
                 "stopped by the time budget (safety cap)" if result.cut_by_budget else "sweep cap")
        how = ("linearized ascent + single-flip sweeps (not the paper's path), steps + "
               if fast else "")
        notes.append(f"pair {i + 1} (n={x.shape[1]}): {how}{result.sweeps} sweeps, {state}")
    return ChainBound(_product(values), False, False, "; ".join(notes),
                      time.monotonic() - start, cut)


def lowrank_factors(chain: Chain, settings: Settings, rank: int) -> list[Factor]:
    factors = []
    for part in chain.parts:
        n_out, n_in = part.shape
        if part.fits_dense(settings) and min(n_out, n_in) <= 4 * rank:
            f = dense_factor(part)
            factors.append(Factor(f.u[:, :rank], f.s[:rank], f.v[:, :rank]))
        else:
            factors.append(randomized_factor(part.operator, rank, settings.seed))
    return factors
