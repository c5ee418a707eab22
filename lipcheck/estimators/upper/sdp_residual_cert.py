"""The float64 certificate of a residual block y = S x + W2 s(W1 x) bounded as a unit.

With multipliers T = diag(t) per hidden channel and slopes in [0, b], rho >= Lip^2 when
  rho |dx|^2 - |S dx + W2 dh|^2 - dh^T T (b W1 dx - dh) >= 0   for all dx, dh,
i.e. per frequency w of the coarse grid (residual_block), with G = S^H A2 + (b/2) A1^H T,
  Q_w = [[rho I - S^H S, -G], [-G^H, T - A2^H A2]] >= 0.
The exact blocks at -w are the conjugates of those at w (real taps), so one frequency of
each conjugate pair is checked. Each shifted Q_w - cI is factored by Cholesky in float64;
Demmel's bound ||E||_2 <= gamma_{n+4} ||R||_F^2, plus the error of forming G, S^H S and
A2^H A2 from the taps (bounded from the taps' absolute sums), plus the diagonal's
rounding, must stay below c. Then every exact Q_w(rho) is positive definite.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from lipcheck.estimators.upper.conv_chain import CircularChain, half_frequencies
from lipcheck.estimators.upper.residual_block import ResidualModel
from lipcheck.spectral.freq_gram import UNIT_ROUNDOFF, gamma

RHO_SLACK = 1e-7


@dataclass
class Symbols:
    a1: np.ndarray      # (F, H, d0)
    a2: np.ndarray      # (F, c, H)
    s: np.ndarray       # (F, c, d0)
    keep: np.ndarray    # the frequencies (one of each conjugate pair)
    weight: np.ndarray


def symbols(model: ResidualModel) -> Symbols:
    keep, weight = half_frequencies(model.grid)
    return Symbols(model.branch.symbol(0)[keep], model.branch.symbol(1)[keep],
                   model.short.symbol(0)[keep], keep, weight)


def _size(chain: CircularChain, i: int) -> float:
    """||sum_a |k_a| ||_F: bounds ||A_i(w)||_F at every w."""
    return float(np.linalg.norm(np.abs(np.stack(list(chain.taps[i].values()))).sum(axis=0)))


def formation_error(model: ResidualModel, t: np.ndarray) -> float:
    """Bound on the spectral norm of (computed - exact) Q_w, every w."""
    b, s = model.branch, model.short
    size1, size2, size_s = _size(b, 0), _size(b, 1), _size(s, 0)
    e1, e2, e_s = b.symbol_error(0), b.symbol_error(1), s.symbol_error(0)
    c = b.dims[2]
    half = b.slope / 2
    err_sa2 = size_s * e2 + e_s * size2 + e_s * e2 + gamma(c) * (size_s + e_s) * (size2 + e2)
    err_g = err_sa2 + half * float(t.max()) * (e1 + gamma(4) * size1) \
        + gamma(2) * (size_s * size2 + half * float(t.max()) * size1)
    err_ss = 2 * size_s * e_s + e_s * e_s + gamma(c + 2) * (size_s + e_s) ** 2
    err_22 = 2 * size2 * e2 + e2 * e2 + gamma(c + 2) * (size2 + e2) ** 2
    return 2 * (2 * err_g + err_ss + err_22) * (1 + 1e-6)   # 2: the Hermitian part read


def _pieces(sym: Symbols, t: np.ndarray, slope: float):
    """G_w, S^H S and T - A2^H A2 per frequency."""
    a1h = sym.a1.conj().transpose(0, 2, 1)
    sh = sym.s.conj().transpose(0, 2, 1)
    g = sh @ sym.a2 + (slope / 2) * a1h * t[None, None, :]
    k = np.diag(t)[None] - sym.a2.conj().transpose(0, 2, 1) @ sym.a2
    return g, sh @ sym.s, k


def top_value(sym: Symbols, t: np.ndarray, slope: float, shift: float = 0.0) -> float:
    """max_w lambda_max(S^H S + G (K - shift)^{-1} G^H) (inf if some K - shift is not
    positive definite)."""
    g, ss, k = _pieces(sym, t, slope)
    try:
        low = np.linalg.cholesky(k - shift * np.eye(k.shape[-1])[None])
    except np.linalg.LinAlgError:
        return math.inf
    z = np.linalg.solve(low, g.conj().transpose(0, 2, 1))
    m = ss + z.conj().transpose(0, 2, 1) @ z
    return float(np.linalg.eigvalsh((m + m.conj().transpose(0, 2, 1)) / 2)[:, -1].max())


STOPPED = "stopped by the deadline before it ended"


def certify_residual(model: ResidualModel, t: np.ndarray, rho: float | None = None,
                     margin: bool = True, shift_scale: float = 1.25,
                     deadline: float = math.inf) -> tuple[float, bool, str]:
    """Prove Q_w(rho, T) > 0 at every frequency in float64; rho None: the smallest the
    shifted blocks allow (plus RHO_SLACK). margin=False drops the allowances (tests).
    The clock is read before each all-frequency step and each frequency's Cholesky: past
    `deadline` the check stops, not verified (detail STOPPED)."""
    sym, slope = symbols(model), model.branch.slope
    d0 = sym.s.shape[2]
    n = d0 + sym.a2.shape[2]
    form = formation_error(model, t) if margin else 0.0
    gm = gamma(n + 4)
    estimate = top_value(sym, t, slope)
    if not math.isfinite(estimate):
        return math.inf, False, "T - A2^H A2 is not positive definite"
    frob_guess = d0 * estimate * 2 + float(t.sum()) + 1.0
    shift = shift_scale * (gm * frob_guess + form) if margin else 0.0
    if time.monotonic() > deadline:
        return math.inf, False, STOPPED
    top = top_value(sym, t, slope, shift)
    if not math.isfinite(top):
        return math.inf, False, "T - A2^H A2 - shift is not positive definite"
    if rho is None:
        rho = shift + top * (1 + RHO_SLACK) + 1e-300
    frob = _factor_all(sym, t, slope, rho, shift, deadline)
    if frob is None:
        return rho, False, "a frequency block is not positive definite"
    if not math.isfinite(frob):
        return math.inf, False, STOPPED
    big = _size(model.short, 0) ** 2 + _size(model.branch, 1) ** 2
    rounding = 4 * UNIT_ROUNDOFF * (abs(rho) + shift + float(t.max()) + big)
    need = gm * frob * (1 + gamma(n * n + 2)) + form + rounding if margin else 0.0
    ok = (shift > need) if margin else True
    return rho, bool(ok), (
        f"rho {rho:.9g}, shift {shift:.3g} > rounding + formation {need:.3g}" if ok
        else f"shift {shift:.3g} below the rounding + formation bound {need:.3g}")


def _factor_all(sym: Symbols, t: np.ndarray, slope: float, rho: float, shift: float,
                deadline: float = math.inf) -> float | None:
    """Cholesky of every shifted Q_w (one frequency at a time: memory stays one block);
    the largest ||R||_F^2, None where one fails, inf once the deadline has passed."""
    g, ss, k = _pieces(sym, t, slope)
    d0, h = g.shape[1], g.shape[2]
    frob = 0.0
    for w in range(g.shape[0]):
        if time.monotonic() > deadline:
            return math.inf
        q = np.empty((d0 + h, d0 + h), dtype=np.complex128)
        q[:d0, :d0] = (rho - shift) * np.eye(d0) - ss[w]
        q[:d0, d0:] = -g[w]
        q[d0:, :d0] = -g[w].conj().T
        q[d0:, d0:] = k[w] - shift * np.eye(h)
        try:
            r = np.linalg.cholesky(q)
        except np.linalg.LinAlgError:
            return None
        frob = max(frob, float(np.sum(np.abs(r) ** 2)))
    return frob
