"""sdp-conv, per neuron: LipSDP-Neuron with one multiplier per real neuron (two-conv chains).

Measured on the first-row CNN (docs/methods/sdp-conv.md, "Per-neuron multipliers"): the
channel-wise circular LMI loses 0.7 % to its non-real ("dummy") slots and ~6 % or more to
the multipliers being shared by all positions of a channel. This step starts from the
channel-wise optimum (restricted to the real neurons, scaled by its rho: feasible, and
already without the dummies), improves every neuron's multiplier by L-BFGS (in float32)
on a smooth maximum of log eig(P + C D^{-1} C^T) (neuron_eval: block-tridiagonal Cholesky
over row slabs), for at most `steps` evaluations (a count: reproducible) and while the deadline
leaves time for one more evaluation and the certificate, then proves the best point in
float64 (neuron_cert).
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from lipcheck.estimators.upper.conv_chain import CircularChain
from lipcheck.estimators.upper.neuron_cert import NeuronCertificate, certify
from lipcheck.estimators.upper.neuron_conv import NeuronChain, neuron_chain
from lipcheck.estimators.upper.neuron_eval import NeuronProblem
from lipcheck.estimators.upper.sdp_cost import SAFETY, may_start
from lipcheck.settings import Settings

STEPS = 60                 # evaluations of rho(T), at most
QUICK_STEPS = 24           # in --method auto (sdp-conv:quick): ~30 s on the first-row CNN
SHARPNESS = (300.0, 3000.0)
HISTORY = 20
INFEASIBLE = 1e3
MAX_SECOND = 6000          # second-layer neurons (the certificate's dense block)
MAX_INPUT = 3000           # input entries (the certificate's head)
CERT_FACTOR = 2.0          # certificate / one Cholesky of the second layer's block as
                           # extrapolated from the probe (which over-predicts a 4608-row one
                           # 1.5-2x): 3.3 s measured against 2 x 2.6 s on the first-row CNN
PROBE_SIZE = 1024          # rows of the Cholesky timed to predict the certificate
CERT_PER_EVAL = 3.0        # certificate / one float32 evaluation with its gradient (1.7-3
                           # measured on the first-row CNN)
SEARCH_DTYPE = torch.float32   # the search's arithmetic (the certificate is float64): on the
                               # first-row CNN rho agrees to 3e-8, the gradient to 5e-5, 1.7x faster


def applies(model: CircularChain) -> bool:
    """Two hidden conv layers of sizes the dense certificate handles."""
    if len(model.layers) != 2:
        return False
    first, second = model.layers
    n0 = first.weight.shape[1] * first.in_size[0] * first.in_size[1]
    d2 = second.weight.shape[0] * second.out_size[0] * second.out_size[1]
    return d2 <= MAX_SECOND and n0 <= MAX_INPUT


def start_point(model: CircularChain, ts: list[np.ndarray], rho: float) -> list[np.ndarray]:
    """The circular model's multipliers (per channel and phase, scaled by 1/rho) on the
    real neurons, position-major, times rho: Q(rho, T) >= 0 holds there (the real
    network's LMI is a principal part of the circular one)."""
    out = []
    for i, layer in enumerate(model.layers):
        (ph, pw), c = model.phases[i + 1], layer.weight.shape[0]
        mh, mw = layer.out_size
        r, col, ch = np.meshgrid(np.arange(mh), np.arange(mw), np.arange(c), indexing="ij")
        out.append(rho * np.asarray(ts[i])[(ch * ph * pw + (r % ph) * pw + col % pw).ravel()])
    return out


def search(problem: NeuronProblem, start: list[np.ndarray], steps: int, deadline: float,
           reserve: float) -> tuple[list[np.ndarray], float, int, bool]:
    """The best multipliers seen (by rho), rho there, evaluations used, and whether the
    deadline stopped the search (no evaluation starts unless it and the certificate end
    before the deadline; an evaluation is predicted at the slowest so far, the certificate
    at `reserve` seconds or, once an evaluation was timed, SAFETY * CERT_PER_EVAL times
    the slowest where that is smaller)."""
    logs = [torch.log(torch.from_numpy(t)).requires_grad_(True) for t in start]
    best: dict[str, Any] = {"rho": math.inf, "ts": [t.copy() for t in start], "evals": 0,
                            "slowest": 0.0, "cut": False}
    for sharpness in SHARPNESS:
        opt = torch.optim.LBFGS(logs, lr=1, max_iter=steps, history_size=HISTORY,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                                tolerance_change=1e-14)
        try:
            opt.step(_closure(opt, logs, problem, sharpness, best, steps, deadline, reserve))
        except _Stop:
            break
    return best["ts"], best["rho"], best["evals"], best["cut"]


class _Stop(Exception):
    pass


def _closure(opt, logs, problem, sharpness, best, steps, deadline, reserve):
    def closure():
        if best["evals"] >= steps:
            raise _Stop
        # the certificate's time: predicted from a timed Cholesky until an evaluation
        # was measured, then CERT_PER_EVAL times the slowest (same load), if smaller
        held = min(reserve, SAFETY * CERT_PER_EVAL * best["slowest"]) if best["evals"] \
            else reserve
        if best["evals"] and not may_start(deadline, best["slowest"], held):
            best["cut"] = True
            raise _Stop
        began = time.monotonic()
        best["evals"] += 1
        opt.zero_grad()
        ts = [torch.exp(t) for t in logs]
        ev = problem.spectrum(*ts)
        if ev is None or not bool(torch.isfinite(ev.detach()).all()) \
                or float(ev[-1].detach()) <= 0:
            loss = sum(t.sum() for t in logs) * 0 + INFEASIBLE
        else:
            top = float(ev[-1].detach())
            if top < best["rho"]:
                best["rho"], best["ts"] = top, [t.detach().numpy().copy() for t in ts]
            loss = torch.log(ev[-1]) + torch.logsumexp(sharpness * (ev / ev[-1].detach() - 1),
                                                       0) / sharpness
        loss.backward()
        best["slowest"] = max(best["slowest"], time.monotonic() - began)
        return loss
    return closure


def certificate_seconds(chain: NeuronChain) -> float:
    """Predicted seconds of the float64 certificate: CERT_FACTOR dense Choleskys of the
    second layer's block, from a Cholesky of at most PROBE_SIZE rows timed on this machine
    now (the faster of two: the first call also pays for LAPACK's start), scaled by the
    cube of the sizes."""
    size = min(PROBE_SIZE, chain.dims[2])
    probe = np.eye(size) * 2.0
    probe[0, -1] = probe[-1, 0] = 0.5
    took = math.inf
    for _ in range(2):
        began = time.perf_counter()
        np.linalg.cholesky(probe)
        took = min(took, time.perf_counter() - began)
    return CERT_FACTOR * took * (chain.dims[2] / size) ** 3 + 0.1


def improve(model: CircularChain, ts: list, rho: float, settings: Settings,
            deadline: float) -> tuple[float, str, bool] | None:
    """sdp-conv's hook: the certified per-neuron bound, its detail and whether the deadline
    cut its search, where it applies, fits before the deadline and proves a smaller rho
    than the channel-wise certificate's `rho` (multipliers `ts`); else None.
    settings.extra["sdp_conv_neuron_steps"] (default STEPS, QUICK_STEPS under the quick
    limits of --method auto; 0 turns it off)."""
    quick = "sdp_conv_max_work" in settings.extra
    steps = int(settings.extra.get("sdp_conv_neuron_steps", QUICK_STEPS if quick else STEPS))
    if steps <= 0:
        return None
    try:
        found = refine(model, [np.asarray(t, dtype=np.float64) for t in ts], rho, steps,
                       deadline)
    except (np.linalg.LinAlgError, torch.linalg.LinAlgError, MemoryError):
        found = None   # the channel-wise certificate stands
    if found is None:
        return None
    cert, evals, cut = found
    if not cert.verified or cert.rho >= rho:
        return None
    detail = (f"per-neuron multipliers on the real neurons, {evals} evaluations"
              f"{' (cut by the deadline)' if cut else ''}: float64 Schur + Cholesky: "
              f"{cert.detail}")
    return math.sqrt(cert.rho) * (1 + 1e-9), detail, cut


def refine(model: CircularChain, ts: list[np.ndarray], rho: float,
           steps: int, deadline: float) -> tuple[NeuronCertificate, int, bool] | None:
    """The per-neuron certificate from the channel-wise point (ts, rho), its evaluations
    and whether the deadline cut the search; None where it does not apply or there is no
    time for one evaluation and the certificate."""
    if not applies(model):
        return None
    chain = neuron_chain(model.layers, model.close, model.slope)
    if chain is None:
        return None
    reserve = SAFETY * certificate_seconds(chain)
    if not may_start(deadline, reserve / CERT_PER_EVAL, reserve):   # one evaluation and
        return None                                                # the certificate
    problem = NeuronProblem(chain, SEARCH_DTYPE)
    found, _, evals, cut = search(problem, start_point(model, ts, rho), steps, deadline,
                                  reserve)
    return certify(chain, found[0], found[1], deadline=deadline), evals, cut
