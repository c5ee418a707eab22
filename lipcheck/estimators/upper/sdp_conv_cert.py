"""The float64 certificate of sdp-conv: the LipSDP-Neuron matrix, checked as an arrow.

With multipliers T_i = diag(t_i) (per channel and phase, the same at every coarse
position) and slopes in [0, b], LipSDP-Neuron divided by rho is
  Q/rho = H - M^T M / rho,   H block tridiagonal: I, T_1, ..., T_{k-1} on the diagonal,
  -(b/2) T_i A_i below it,
and H is block diagonal in the unitary DFT of the coarse grid: H_w, one (D x D) block per
frequency. Q >= 0 iff the arrow matrix [[diag_w H_w, B^H], [B, rho I]] >= 0 (B(w) is the
closing dense layer per frequency). This module proves that by one floating-point
Cholesky of the arrow shifted by c (blocks H_w - cI, then Z_w = L_w^{-1} B_w^H, then
S = (rho - c) I - sum_w Z_w^H Z_w): the computed factor R of A = arrow - cI satisfies
R^H R = A + E with ||E||_2 <= gamma_{n+4} ||R||_F^2 (Demmel; any order of the inner
products, substitution included), and the blocks themselves are off the exact ones by at
most `form` in spectral norm. So if c > gamma ||R||_F^2 + form + (rounding of the shifted
diagonal), the exact arrow is positive definite and sqrt(rho) bounds the chain.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from lipcheck.estimators.upper.conv_chain import CircularChain
from lipcheck.spectral.freq_gram import UNIT_ROUNDOFF, gamma

RHO_SLACK = 1e-7   # relative room left in the last Schur complement
CHUNK_ENTRIES = 2**20   # block entries factored between two reads of the clock (16 MB)


@dataclass
class Certificate:
    rho: float
    verified: bool
    shift: float        # c
    need: float         # what c had to exceed (rounding + formation)
    detail: str
    stopped: bool = False   # the deadline passed before the check ended


def blocks(model: CircularChain, ts: list[np.ndarray], symbols: list[np.ndarray],
           part: slice) -> np.ndarray:
    """H_w for the frequencies in `part`, (F', D, D) complex128; symbols[i] = A_i(w)."""
    dims, half = model.dims, model.slope / 2
    starts = np.cumsum([0] + dims)
    count = len(range(model.freqs)[part])
    out = np.zeros((count, starts[-1], starts[-1]), dtype=np.complex128)
    idx = np.arange(dims[0])
    out[:, idx, idx] = 1.0
    for i, t in enumerate(ts):
        lo, hi = starts[i + 1], starts[i + 2]
        out[:, np.arange(lo, hi), np.arange(lo, hi)] = t
        low = -half * t[None, :, None] * symbols[i][part]
        out[:, lo:hi, starts[i]:lo] = low
        out[:, starts[i]:lo, lo:hi] = low.conj().transpose(0, 2, 1)
    return out


@dataclass
class Arrow:
    """The arrow's frequency blocks, formed a chunk at a time (`blocks(part)`: H_w for the
    frequencies in `part`), its border B (F, n_out, d_last) and the diagonals of its
    multiplier blocks (for the diagonal's rounding)."""
    freqs: int
    dim: int
    blocks: Callable[[slice], np.ndarray]
    border: np.ndarray
    diagonals: list[np.ndarray]


def formation_error(model: CircularChain, ts: list[np.ndarray]) -> float:
    """Bound on the spectral norm of (computed - exact) arrow: every H_w's off-diagonal
    blocks plus the border."""
    half, total = model.slope / 2, 0.0
    for i, t in enumerate(ts):
        stack = np.stack(list(model.taps[i].values()))
        size = float(np.linalg.norm(np.abs(stack).sum(axis=0)))
        total += half * float(np.max(t)) * (model.symbol_error(i) + gamma(4) * size)
    return (total + model.border_error()) * (1 + 1e-6)


class _Stopped(Exception):
    """The deadline passed between two chunks of frequencies."""


def _chunks(freqs: int, dim: int):
    """Frequency slices of at most CHUNK_ENTRIES block entries each."""
    step = max(1, CHUNK_ENTRIES // (dim * dim))
    return [slice(lo, min(freqs, lo + step)) for lo in range(0, freqs, step)]


def _shifted_sums(arrow: Arrow, shift: float, deadline: float):
    """sum_w Z_w^H Z_w and sum_w |L_w|^2 + |Z_w|^2 of the shifted arrow, its blocks formed
    and factored a chunk of frequencies at a time (the clock is read before each chunk:
    _Stopped once the deadline has passed); None where a block is not definite."""
    border, d = arrow.border, arrow.dim
    n_out = border.shape[1]
    gram = np.zeros((n_out, n_out), dtype=np.complex128)
    squares = 0.0
    for part in _chunks(arrow.freqs, d):
        if time.monotonic() > deadline:
            raise _Stopped
        block = arrow.blocks(part).copy()
        block[:, np.arange(d), np.arange(d)] -= shift
        try:
            low = np.linalg.cholesky(block)
        except np.linalg.LinAlgError:
            return None
        rhs = np.zeros((block.shape[0], d, n_out), dtype=np.complex128)
        rhs[:, d - border.shape[2]:, :] = border[part].conj().transpose(0, 2, 1)
        for w in range(block.shape[0]):
            z = scipy.linalg.solve_triangular(low[w], rhs[w], lower=True, check_finite=False)
            gram += z.conj().T @ z
            squares += float(np.sum(np.abs(z) ** 2))
        squares += float(np.sum(np.abs(low) ** 2))
    return gram, squares


def certify(model: CircularChain, ts: list[np.ndarray], rho: float | None = None,
            margin: bool = True, deadline: float = math.inf) -> Certificate:
    """Prove LipSDP-Neuron for multipliers ts; rho None: the smallest the shifted
    factorisation allows (plus RHO_SLACK). margin=False drops the rounding and formation
    allowances (for tests: such a check must not be trusted). The frequencies are formed
    and factored a chunk at a time and the work stops (not verified) once `deadline` has
    passed; a second attempt (larger shift) starts only if it ends before `deadline`
    (predicted: as long as the first)."""
    symbols = [model.symbol(i) for i in range(len(ts))]
    arrow = Arrow(model.freqs, sum(model.dims),
                  lambda part: blocks(model, ts, symbols, part), model.border(), list(ts))
    form = formation_error(model, ts) if margin else 0.0
    trace = model.freqs * (model.dims[0] + sum(float(np.sum(t)) for t in ts))
    return check_arrow(arrow, rho, form, trace, margin, deadline)


def final_or_start(first: Certificate, final: Certificate, head: str
                   ) -> tuple[Certificate, str]:
    """What a multiplier search reports: its final certificate, or the one of its start
    (certified before the search) where that is verified and the final one is not (e.g.
    stopped by the deadline) or proves a smaller rho; `head` says which."""
    if first.verified and (not final.verified or first.rho < final.rho):
        return first, f"{head}; the start's certificate is kept"
    return final, head


def check_arrow(arrow: Arrow, rho: float | None, form: float, trace: float, margin: bool,
                deadline: float = math.inf) -> Certificate:
    """The shifted arrow Cholesky with its margins: the shift from the trace of the
    blocks' diagonal and the formation error `form`, a second attempt with a larger shift
    if the first one's rounding bound exceeded it and it fits before the deadline."""
    start = time.monotonic()
    g = gamma(arrow.freqs * arrow.dim + arrow.border.shape[1] + 4)
    shift = 1.25 * (2 * g * trace + form) if margin else 0.0
    try:
        result = _attempt(arrow, rho, shift, form, margin, deadline)
        took = time.monotonic() - start
        if margin and not result.verified and result.need > 0 \
                and time.monotonic() + took <= deadline:
            result = _attempt(arrow, rho, 1.25 * result.need, form, margin, deadline)
    except _Stopped:
        return Certificate(math.inf, False, 0.0, 0.0, "stopped by the deadline before it ended",
                           stopped=True)
    return result


def _attempt(arrow: Arrow, rho: float | None, shift: float, form: float, margin: bool,
             deadline: float) -> Certificate:
    n_out, d = arrow.border.shape[1], arrow.dim
    g = gamma(arrow.freqs * d + n_out + 4)
    diag_max = max([1.0] + [float(np.max(t)) for t in arrow.diagonals])
    sums = _shifted_sums(arrow, shift, deadline)
    if sums is None:
        return Certificate(math.inf, False, shift, 0.0,
                           "a frequency block is not positive definite")
    gram, factor_squares = sums
    gram = (gram + gram.conj().T) / 2
    top = float(np.linalg.eigvalsh(gram)[-1])
    if rho is None:
        rho = shift + top * (1 + RHO_SLACK) + 1e-300
    s = (rho - shift) * np.eye(n_out) - gram
    try:
        r_s = np.linalg.cholesky(s)
    except np.linalg.LinAlgError:
        return Certificate(rho, False, shift, 0.0,
                           "the closing Schur complement is not positive definite")
    terms = arrow.freqs * d * (d + n_out) + r_s.size   # squares summed, in any order
    squares = factor_squares + float(np.sum(np.abs(r_s) ** 2))
    frob = squares * (1 + gamma(terms + 2))
    need = g * frob + form + 4 * UNIT_ROUNDOFF * (diag_max + abs(rho) + shift) if margin else 0.0
    ok = shift > need if margin else True
    detail = (f"rho {rho:.9g}, shift {shift:.3g} > rounding + formation {need:.3g}" if ok
              else f"shift {shift:.3g} below the rounding + formation bound {need:.3g}")
    return Certificate(rho, ok, shift, need, detail)
