"""sdp-conv: LipSDP-Neuron for conv/activation chains closed by a dense layer, per frequency.

The chain is embedded as circular convolutions on one coarse grid (see conv_chain).
Multipliers shared by all coarse positions of a channel and phase make LipSDP-Neuron's
hidden blocks translation invariant, so the ECLipsE-style Schur recursion stays block
diagonal in frequency:
  X_0(w) = I,  X_i(w) = T_i - (b/2)^2 T_i A_i(w) X_{i-1}(w)^{-1} A_i(w)^H T_i,
and the dense closing layer gives rho(T) = lambda_max(sum_w B(w) X_{k-1}(w)^{-1} B(w)^H)
(every X_i positive definite). The multipliers start at ECLipsE-Fast's scalars and are
improved by a fixed number of L-BFGS iterations on log rho (autograd through batched complex
Cholesky); then sdp_conv_cert proves the final (rho, T) in float64. On chains of two
hidden convs, sdp_conv_neuron then continues with one multiplier per real neuron (its own
float64 certificate; kept where smaller). Iteration counts
decide the value; the deadline only cuts it short (reported): an evaluation starts only
if it and the certificate (its cost predicted by sdp_cost) end before the deadline.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from lipcheck.estimators.upper.chain_cost import too_slow
from lipcheck.estimators.upper.chains import Chain
from lipcheck.estimators.upper.conv_chain import CircularChain, circular_chain, half_frequencies
from lipcheck.estimators.upper.eclipse import eclipse
from lipcheck.estimators.upper.residual_block import find_block
from lipcheck.estimators.upper.sdp_conv_cert import certify, final_or_start
from lipcheck.estimators.upper.sdp_conv_neuron import improve
from lipcheck.estimators.upper.sdp_cost import (
    Budget,
    certificate_seconds,
    may_start,
    over_work,
    warm_optimiser,
)
from lipcheck.estimators.upper.sdp_residual import sdp_residual
from lipcheck.estimators.upper.seqlip import ChainBound
from lipcheck.settings import Settings

STEPS = 40           # L-BFGS iterations on the multipliers, per smoothing stage
SHARPNESS = (30.0, 300.0)  # smooth maximum of the eigenvalues of S: sharper stage by stage
HISTORY = 20
INFEASIBLE = 1e3     # log rho given to multipliers that make some X_i indefinite
DENSE_MAX_WIDTH = 4096      # hidden width up to which ECLipsE-Fast is tried as well
MAX_BLOCK_ENTRIES = 2**24   # F * D^2 of the certificate's blocks (complex128: 256 MB)


def _symbols(model: CircularChain) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The layers' and the border's blocks at one frequency of each conjugate pair, and
    the pairs' weights."""
    keep, weight = half_frequencies(model.grid)
    a = [torch.from_numpy(model.symbol(i)[keep]) for i in range(len(model.taps))]
    return a, torch.from_numpy(model.border()[keep]), torch.from_numpy(weight)


def spectrum(a: list[torch.Tensor], border: torch.Tensor, weight: torch.Tensor,
             ts: list[torch.Tensor], slope: float):
    """The eigenvalues of S(T) = sum_w B X_{k-1}^{-1} B^H by the Schur recursion, or None
    where some X_i is not positive definite."""
    half2 = (slope / 2) ** 2
    k = a[0] @ a[0].mH
    for i, t in enumerate(ts):
        tc = t.to(k.dtype)
        x = torch.diag_embed(tc) - half2 * tc[:, None] * k * tc[None, :]
        low, info = torch.linalg.cholesky_ex(x)
        if bool((info != 0).any()):
            return None
        nxt = a[i + 1] if i + 1 < len(a) else border
        y = torch.linalg.solve_triangular(low, nxt.mH, upper=False)
        k = y.mH @ y
    s = (weight[:, None, None] * k.real).sum(dim=0)   # k(-w) = conj k(w): the sum is real
    return torch.linalg.eigvalsh((s + s.mT) / 2)


def fast_start(a: list[torch.Tensor], slope: float) -> list[torch.Tensor]:
    """ECLipsE-Fast's scalar multipliers: t_i = 2 / (b^2 max_w lambda_max K_i(w))."""
    ts, k = [], a[0] @ a[0].mH
    for i in range(len(a)):
        top = float(torch.linalg.eigvalsh((k + k.mH) / 2)[..., -1].max())
        t = torch.full((k.shape[-1],), 2.0 / (slope * slope * max(top, 1e-300)),
                       dtype=torch.float64)
        ts.append(t)
        if i + 1 < len(a):
            x = torch.diag_embed(t.to(k.dtype)) - (slope / 2) ** 2 * t[:, None] * k * t[None, :]
            y = torch.linalg.solve_triangular(torch.linalg.cholesky(x), a[i + 1].mH, upper=False)
            k = y.mH @ y
    return ts


class _Stop(Exception):
    pass


def optimise(model: CircularChain, steps: int, budget: Budget,
             symbols: tuple | None = None, start: list[torch.Tensor] | None = None
             ) -> tuple[list[np.ndarray], int, bool]:
    """Multipliers from L-BFGS (strong Wolfe line search, at most `steps` iterations per
    smoothing stage) on a smooth maximum of log eig S(T) over log t, from ECLipsE-Fast's
    start; the smoothing sharpens stage by stage (the top eigenvalue of S may be multiple
    at the optimum, where log rho is not differentiable). An infeasible point (some X_i
    indefinite) gets a large value, which the line search backs off from. No evaluation
    starts unless the budget allows it (it and the certificate end before the deadline;
    predicted from what the slowest evaluation so far took).
    Returns the best feasible multipliers seen (by rho), the evaluations used, and
    whether the deadline cut the search short. `symbols` (_symbols(model)) and `start`
    (fast_start) if at hand."""
    a, border, weight = symbols if symbols is not None else _symbols(model)
    start = start if start is not None else fast_start(a, model.slope)
    logs = [torch.log(t).requires_grad_(True) for t in start]
    best: dict[str, Any] = {"value": math.inf, "ts": [torch.exp(t.detach()) for t in logs],
                            "evals": 0, "budget": budget}
    cut = False
    for sharpness in SHARPNESS:
        opt = torch.optim.LBFGS(logs, lr=1, max_iter=steps, history_size=HISTORY,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                                tolerance_change=1e-13)
        try:
            opt.step(_closure(opt, logs, a, border, weight, model.slope, sharpness, best))
        except _Stop:
            cut = True
            break
    return [t.numpy() for t in best["ts"]], best["evals"], cut


def _closure(opt, logs, a, border, weight, slope: float, sharpness: float, best: dict):
    def closure():
        now = time.monotonic()
        if not best["budget"].allows(best.get("eval_seconds")):
            raise _Stop   # leave the certificate its time
        best["evals"] += 1
        opt.zero_grad()
        ts = [torch.exp(t) for t in logs]
        ev = spectrum(a, border, weight, ts, slope)
        if ev is None or not bool(torch.isfinite(ev.detach()).all()) or float(ev[-1].detach()) <= 0:
            penalty = sum(t.sum() for t in logs) * 0 + INFEASIBLE
            penalty.backward()
            best["eval_seconds"] = max(best.get("eval_seconds", 0.0), time.monotonic() - now)
            return penalty
        top = float(ev[-1].detach())
        if top < best["value"]:
            best["value"], best["ts"] = top, [t.detach().clone() for t in ts]
        smooth = torch.logsumexp(sharpness * (ev / ev[-1].detach() - 1), 0) / sharpness
        loss = torch.log(ev[-1]) + smooth
        loss.backward()
        best["eval_seconds"] = max(best.get("eval_seconds", 0.0), time.monotonic() - now)
        return loss
    return closure


def sdp_conv(chain: Chain, settings: Settings, deadline: float) -> ChainBound | None:
    """The certified sdp-conv bound of one chain, or None where it does not apply."""
    start = time.monotonic()
    if chain.graph is None:
        return None
    if (block := find_block(chain, settings)) is not None:
        return _with_dense(sdp_residual(block, settings, deadline), chain, settings, deadline)
    model, _ = circular_chain(chain, chain.graph)
    if model is None:
        return None
    if model.freqs * sum(model.dims) ** 2 > MAX_BLOCK_ENTRIES \
            or over_work(settings.extra, model.freqs, sum(model.dims)):
        return None
    steps = int(settings.extra.get("sdp_conv_steps", STEPS))
    warm_optimiser()
    predicted = certificate_seconds(model.freqs, sum(model.dims))
    if not may_start(deadline, predicted, predicted):   # the start costs about one evaluation
        return ChainBound(chain.autolip_product, chain.autolip_certified, False,
                          f"sdp-conv not run: its certificate alone (predicted {predicted:.2g} s) "
                          "does not fit in the time left: AutoLip product kept",
                          time.monotonic() - start, True)
    symbols = _symbols(model)
    begin = fast_start(symbols[0], model.slope)
    first, took = _timed_certificate(model, begin, deadline)
    ts, evals, cut = optimise(model, steps, Budget.measured(deadline, predicted, took),
                              symbols, begin)
    cert = _timed_certificate(model, ts, deadline)[0] if evals else first
    seconds = time.monotonic() - start
    head = (f"sdp-conv: {model.grid}x{model.grid} frequencies, blocks of {sum(model.dims)}, "
            f"channel-wise multipliers, {evals} evaluations"
            f"{' (cut by the deadline)' if cut else ''}")
    cut = cut or cert.stopped
    cert, head = final_or_start(first, cert, head)
    if not cert.verified:
        return ChainBound(chain.autolip_product, chain.autolip_certified, False,
                          f"{head}; certificate refused ({cert.detail}): AutoLip product kept",
                          seconds, cut)
    value = math.sqrt(cert.rho) * (1 + 1e-9)
    detail = f"{head}; float64 arrow Cholesky: {cert.detail}"
    neuron = improve(model, begin if cert is first else ts, cert.rho, settings, deadline)
    if neuron is not None:
        value, cut = neuron[0], cut or neuron[2]
        detail = f"{detail}; then {neuron[1]}"
    seconds = time.monotonic() - start
    if chain.autolip_certified:
        value = min(value, chain.autolip_product)
    found = ChainBound(value, True, True, detail, seconds, cut)
    return _with_dense(found, chain, settings, deadline)


def _timed_certificate(model: CircularChain, ts: list, deadline: float):
    """certify(model, ts) before the deadline, and the seconds it took."""
    begin = time.monotonic()
    cert = certify(model, [np.asarray(t, dtype=np.float64) for t in ts], deadline=deadline)
    return cert, time.monotonic() - begin


def _with_dense(result: ChainBound | None, chain: Chain, settings: Settings,
                deadline: float) -> ChainBound | None:
    """On chains small enough for dense matrices, ECLipsE-Fast (per-neuron multipliers,
    its own float64 check) where it is smaller and fits before the deadline (the same
    cost gate as the eclipse-fast method): both are certified bounds of the same
    quantity (for a residual block, of its branch; the block's segment bound is kept)."""
    if result is None or not settings.extra.get("sdp_conv_dense", True) \
            or not chain.dense(settings) \
            or max(p.shape[0] for p in chain.parts[:-1]) > DENSE_MAX_WIDTH \
            or too_slow(chain, "eclipse-fast", deadline) is not None:
        return result
    dense = eclipse([p.matrix() for p in chain.parts], chain.slopes, True,
                    deadline - time.monotonic())
    if not dense.certified or (result.certified and dense.value >= result.value):
        return result
    return ChainBound(dense.value, True, True,
                      f"{result.detail}; ECLipsE-Fast on the dense chain is smaller and is kept: "
                      f"{dense.value:.9g} ({dense.detail})", result.seconds + dense.seconds,
                      result.cut_by_budget, segment=result.segment)
