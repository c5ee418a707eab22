"""sdp-net: LipSDP-Neuron of the whole network, written as one layered ReLU network.

`propagation.relu_net` writes a program of affine steps, residual sums, ReLUs and max
pools as f(x) = W_L s(... s(W_1 x + b_1) ...) + b_L, each hidden unit a ReLU (slopes in
[0, 1]) or the identity (slope exactly 1: a value carried past a layer, a residual
block's input, or the `b` of a pool's max(a, b) = relu(a - b) + b). LipSDP-Neuron of that
net (sdp_certificate's Q with per-unit slopes: identity units have a = b = 1, whose
constraint -(dphi - dz)^2 >= 0 holds with equality) bounds the whole network at once,
pools and residual sums included, with one multiplier per unit: the chain methods
(sdp-conv, ECLipsE) stop at a pool or compose residual blocks, and sdp-conv shares a
multiplier across a channel's positions.

The multipliers: L-BFGS (strong Wolfe line search) on rho(Lam), the smallest rho with
Q(rho, Lam) >= 0, by block elimination from the last layer (`sdp_net_rho.Rho`: sdp_schur's
recursion with per-unit slopes, in float64, its gradient by the recursion's adjoint), from an
ECLipsE-Fast-like start: first on two log scales per layer (its ReLUs' multipliers and
its identity units'), 40 evaluations, then on every unit's log multiplier (on digits_cnn
300 evaluations reach 158.7 with the first phase, 168.9 without). rho is the largest
eigenvalue of the last block, where several meet (a kink L-BFGS crawls along), so each
phase minimises its smoothing mu log sum exp(lambda / mu) at a fixed mu, from a tenth of
rho down by sqrt(10) a stage (`stages`), keeping the best point by rho itself: at 600
evaluations digits_cnn 154.8 -> 150.6, at 192 digits_resnet 825.7 -> 651.7. A point where a Schur
complement is not positive definite gets a value 1e6 times the start's, which the line
search backs off from. A multiplier
is capped at 1e3 times its layer's largest start: an identity unit's constraint is an
equality, so its multiplier would grow without end (to 1e15 on a tiny net, where Q's
float64 check fails; at 1e4 one of three digits_cnn balls of `--around` needed +10 % to
pass, at 1e3 +1e-6, and the values elsewhere were equal); capped, the equality is
enforced a little less (a bound a little looser, never unsound: any Lam >= 0 is valid).
A multiplier is kept at least 1e-4 times its layer's largest start: on an input set a
unit with slope 0 has no gradient, and L-BFGS once sent one to 2e-24, where Q's diagonal
entry left the float64 check nothing to work with; at 1e-6 the smoothed search spread a
layer's multipliers over 9 decades on digits_cnn's balls (`--around`, most ReLUs [1, 1]),
and the check refused all three at every raise; at 1e-4 they pass at +1e-3 (60.12 /
56.23 / 62.26), and the global values did not move (no multiplier reaches the floor).
The number of evaluations decides the value (reproducible); the clock only caps
(`cut_by_budget`).

The certificate: the full Q at the best multipliers, verified PSD in float64 by
sdp_certificate.verified_psd_scaled (a Cholesky of D Q D, D powers of two equilibrating
the diagonal, with the forming error bounded from the same sums in absolute values) at
rho raised by 1e-6 relative (then 1e-5 ... 1e-1). The plain check (verified_psd, a
shift of a multiple of tr(Q) on every coordinate) needed +1 % on digits_cnn, whose
identity units' multipliers are 1e2 times the ReLUs'; scaled, +1e-6 passes.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from lipcheck.estimators.upper.sdp_certificate import (
    VERIFY_MAX_DIM,
    assemble,
    magnitude,
    reduce_ends,
    verified_psd_scaled,
)
from lipcheck.estimators.upper.sdp_net_rho import Rho, evaluation_work
from lipcheck.graph import Graph, OpKind
from lipcheck.numerics import well_scaled
from lipcheck.propagation.program import Program, UnsupportedLocal, build_program
from lipcheck.propagation.relu_net import ReluNet, relu_form
from lipcheck.results import GlobalBound

MAX_EVALUATIONS, QUICK_EVALUATIONS = 5000, 600   # rho(Lam) evaluations (a count: the value)
FULL_RATE = 8e9        # --method sdp-net: multiply-adds per second of its share of
                       # --time-budget (a count from the option's value, not the clock;
                       # this box does 1.4-1.8e10 a second on digits_cnn / digits_resnet)
QUICK_TOTAL_WORK = 6e11  # --method auto: multiply-adds of the whole search at most, so
                         # min(600, this / one evaluation's), if that is >= SCALE_EVALUATIONS
HISTORY = 20           # L-BFGS memory
RAISES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)   # rho raised by these (relative)
CHECKS_RESERVED = 6    # the search stops in time for this many predicted float64 checks:
                       # the first runs cold (0.72 s against 0.26 s warm and 0.22 s
                       # predicted on pool2's Q of 2412) and certify predicts the next at
                       # the slowest so far; with 3, pool2's `auto` under load lost its
                       # certificate (+1e-6 refused, no time for +1e-5)
INFEASIBLE = 1e6       # an infeasible point's value: this times the start's (finite)
SCALE_EVALUATIONS = 40  # first phase: two multiplier scales per layer
GROWTH = 1e3           # a multiplier grows to at most this times its layer's largest start
FLOOR = 1e4            # ... and falls to at least this times less
RESTART_GAIN = 1e-6    # L-BFGS restarts from the best point while a run gains this much
SMOOTHING = 0.1        # the first stage's mu: this times rho at the start
SMOOTHING_RATIO = 10 ** 0.5   # each next stage's mu: this times smaller (x best rho so far)
STAGE_EVALUATIONS = 140       # evaluations a stage, about; 2 to MAX_STAGES stages
MAX_STAGES = 8


@dataclass
class NetSdp:
    rho: float                 # best rho(Lam) found (uncertified)
    lams: list[np.ndarray]
    evaluations: int
    cut_by_budget: bool


class _Stop(Exception):
    """Ends the search: the evaluations are spent, or (`clock`) the next would end late."""

    def __init__(self, clock: bool) -> None:
        self.clock = clock


def unit_slopes(net: ReluNet) -> list[tuple[np.ndarray, np.ndarray]]:
    """(a, b) per hidden unit of each layer: [0, 1] for a ReLU, [1, 1] for the identity."""
    return [(lin.numpy().astype(np.float64), np.ones(len(lin))) for lin in net.linear]


@dataclass
class _Best:
    value: float
    at: list[torch.Tensor]


class _Search:
    """The evaluations of rho shared by the search's phases: a count, the clock, and the
    best point seen (as multipliers)."""

    def __init__(self, rho: Rho, deadline: float) -> None:
        self.rho, self.deadline = rho, deadline
        self.count, self.slowest, self.high, self.mu = 0, 0.0, math.inf, 0.0
        self.best: tuple[float, list[np.ndarray]] | None = None

    def run(self, params: list[torch.Tensor], lams: Callable[[], list[torch.Tensor]],
            until: int) -> None:
        """L-BFGS on `params` (`lams()` the multipliers they give) up to evaluation `until`,
        restarted from this phase's best point while a run gains RESTART_GAIN (its line
        search stops where it backs into an infeasible point)."""
        phase = _Best(math.inf, [t.detach().clone() for t in params])

        def closure() -> torch.Tensor:
            value = self.evaluate(params, lams, until)
            if value.item() < phase.value:
                phase.value, phase.at = value.item(), [t.detach().clone() for t in params]
            return value

        while self.count < until:
            before = phase.value
            with torch.no_grad():
                for t, at in zip(params, phase.at, strict=True):
                    t.copy_(at)
            left = until - self.count
            try:
                torch.optim.LBFGS(params, lr=1.0, max_iter=left, max_eval=left,
                                  history_size=HISTORY, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-12, tolerance_change=1e-14).step(closure)
            except _Stop as stop:
                if stop.clock:
                    raise
                return
            if math.isfinite(before) and not phase.value < before * (1 - RESTART_GAIN):
                return

    def evaluate(self, params: list[torch.Tensor], lams: Callable[[], list[torch.Tensor]],
                 until: int) -> torch.Tensor:
        if self.count >= until:
            raise _Stop(clock=False)
        if self.count and time.monotonic() + self.slowest > self.deadline:
            raise _Stop(clock=True)
        began = time.monotonic()
        self.count += 1
        for t in params:
            t.grad = None
        point = lams()
        try:
            value = self.rho(point, self.mu)
            top = self.rho.top
            if not (torch.isfinite(value) and math.isfinite(top)):
                raise np.linalg.LinAlgError("not finite")
        except (np.linalg.LinAlgError, RuntimeError):   # torch's LinAlgError is a RuntimeError
            value = torch.stack([(t * 0).sum() for t in params]).sum() + self.high
            top = math.inf
        if self.count == 1:
            self.high = INFEASIBLE * abs(value.item()) + 1.0
        value.backward()
        if top < self.high and (self.best is None or top < self.best[0]):
            self.best = (top, [lam.detach().numpy().copy() for lam in point])
        self.slowest = max(self.slowest, time.monotonic() - began)
        return value


def search(weights: list[np.ndarray], slopes: list[tuple[np.ndarray, np.ndarray]],
           evaluations: int, deadline: float) -> NetSdp | None:
    """`evaluations` evaluations of rho (fewer if the clock says the next would end after
    `deadline`): first L-BFGS on two scales per layer (its ReLUs' and its identity units'
    multipliers, SCALE_EVALUATIONS), then on every unit's log multiplier, in `stages`. Each
    minimises rho's smoothing at a fixed mu, from SMOOTHING x rho (the scales' phase and the
    first stage) down by SMOOTHING_RATIO a stage. The best point seen by rho itself, or
    None if the start fails."""
    rho = Rho(weights, slopes)
    try:
        with torch.no_grad():
            start = rho.start()
            t, _ = rho.forward(start)
    except (np.linalg.LinAlgError, RuntimeError):
        return None
    tops = [lam.max().log() for lam in start]
    caps = [(top - math.log(FLOOR), top + math.log(GROWTH)) for top in tops]
    found = _Search(rho, deadline)
    found.mu = SMOOTHING * max(float(torch.linalg.eigvalsh(t)[-1]), 0.0)   # 0: rho itself
    scales = [torch.zeros(2, dtype=torch.float64, requires_grad=True) for _ in start]

    def scaled() -> list[torch.Tensor]:
        return [torch.clamp(lam.log() + torch.where(p > 0, g[1], g[0]), *cap).exp()
                for lam, p, g, cap in zip(start, rho.p, scales, caps, strict=True)]

    cut = False
    try:
        found.run(scales, scaled, min(SCALE_EVALUATIONS, evaluations))
        for k, until in enumerate(stages(evaluations)):
            if found.best is None:
                break
            found.mu = SMOOTHING / SMOOTHING_RATIO ** k * max(found.best[0], 0.0)
            logs = [torch.from_numpy(np.log(lam)).requires_grad_() for lam in found.best[1]]
            found.run(logs, partial(_clamped, logs, caps), until)
    except _Stop as stop:
        cut = stop.clock
    if found.best is None:
        return None
    return NetSdp(found.best[0], found.best[1], found.count, cut)


def _clamped(logs: list[torch.Tensor], caps: list[tuple[torch.Tensor, torch.Tensor]]
             ) -> list[torch.Tensor]:
    return [torch.clamp(t, *cap).exp() for t, cap in zip(logs, caps, strict=True)]


def stages(evaluations: int) -> list[int]:
    """Where each per-unit stage ends (an evaluation count): the evaluations after the
    scales' phase in 2 to MAX_STAGES equal parts of about STAGE_EVALUATIONS."""
    left = evaluations - SCALE_EVALUATIONS
    if left <= 0:
        return []
    parts = max(2, min(MAX_STAGES, round(left / STAGE_EVALUATIONS)))
    return [SCALE_EVALUATIONS + left * (k + 1) // parts for k in range(parts)]


def certify(weights: list[np.ndarray], slopes: list[tuple[np.ndarray, np.ndarray]],
            found: NetSdp, deadline: float = math.inf) -> float | None:
    """found.rho raised by the first of RAISES with Q(rho, Lam) verified PSD in float64, or
    None. After the first check, none starts that (as slow as the slowest so far) would
    end after `deadline`."""
    inner = max(w.shape[0] for w in weights)
    slowest = 0.0
    for raise_by in RAISES:
        if slowest and time.monotonic() + slowest > deadline:
            return None
        began = time.monotonic()
        rho = found.rho * (1 + raise_by)
        q = assemble(weights, slopes, rho, found.lams)  # type: ignore[arg-type]
        if verified_psd_scaled(q, magnitude(weights, slopes, rho, found.lams), inner):
            return rho
        slowest = max(slowest, time.monotonic() - began)
    return None


def check_seconds(weights: list[np.ndarray]) -> float:
    """Predicted seconds of one float64 check: a Cholesky of Q and forming Q and its
    absolute sums (two Gram products per layer), at this thread's matmul rate."""
    from lipcheck.estimators.lower.cost import machine_rate
    n = weights[0].shape[1] + sum(w.shape[0] for w in weights[:-1])
    grams = sum(w.shape[1] ** 2 * w.shape[0] for w in weights)
    return (n ** 3 / 3 + 2 * grams) / machine_rate() + 0.01


def activation_units(graph: Graph) -> int:
    """Entries into the graph's ReLUs and max pools: a floor on the ReLU form's units,
    known before anything is built."""
    return sum(math.prod(n.input_shapes[0]) for n in graph.nodes
               if n.op in (OpKind.RELU, OpKind.MAX_POOL) and n.input_shapes)


def well_scaled_net(net: ReluNet) -> bool:
    """The layers' norms (Frobenius: an upper bound, cheap) and their product in the range
    where the float64 algebra is safe (numerics.well_scaled)."""
    norms = [float(torch.linalg.matrix_norm(w)) for w in net.weights]
    return well_scaled(norms + [math.prod(norms)])


def dense_form(program: Program) -> tuple[ReluNet, list[np.ndarray]] | None:
    """The program's ReLU form and its weights with both ends reduced (reduce_ends), or
    None where sdp-net does not apply: not a ReLU form, no hidden layer, weights outside
    the safe float64 range, or Q (input block + hidden units) past VERIFY_MAX_DIM."""
    try:
        net = relu_form(program)
    except UnsupportedLocal:
        return None
    if not net.widths or not well_scaled_net(net):
        return None
    weights = reduce_ends([w.numpy() for w in net.weights])
    if weights[0].shape[1] + sum(net.widths) > VERIFY_MAX_DIM:
        return None
    return net, weights


def full_evaluations(weights: list[np.ndarray], seconds: float,
                     slopes: list[tuple[np.ndarray, np.ndarray]] | None = None) -> int:
    """`--method sdp-net`'s count: FULL_RATE x `seconds` (its share of --time-budget)
    multiply-adds, at most MAX_EVALUATIONS and at least what `--method auto` gives it (and
    SCALE_EVALUATIONS). A longer budget buys a tighter bound, the same on every machine; a
    slow machine's clock may still cut it."""
    work = FULL_RATE * seconds / evaluation_work(weights, slopes)
    count = MAX_EVALUATIONS if not work < MAX_EVALUATIONS else int(work)   # inf, nan: the cap
    return max(SCALE_EVALUATIONS, quick_evaluations(weights, slopes=slopes), count)


def quick_evaluations(weights: list[np.ndarray], runs: int = 1,
                      slopes: list[tuple[np.ndarray, np.ndarray]] | None = None) -> int:
    """Evaluations each of `runs` searches gets in QUICK_TOTAL_WORK (at most QUICK_EVALUATIONS)."""
    work = evaluation_work(weights, slopes) * runs
    return min(QUICK_EVALUATIONS, int(QUICK_TOTAL_WORK // work))


def certified_lipschitz(weights: list[np.ndarray], slopes: list[tuple[np.ndarray, np.ndarray]],
                        evaluations: int) -> float | None:
    """search, then certify: the certified bound sqrt(rho') (1 + 1e-9), or None."""
    found = search(weights, slopes, evaluations, math.inf)
    verified = None if found is None else certify(weights, slopes, found)
    return None if verified is None else math.sqrt(verified) * (1 + 1e-9)


def sdp_net(graph: Graph, deadline: float, quick: bool, seconds: float = 60.0
            ) -> GlobalBound | None:
    """The certified sdp-net bound of the whole graph, or None where it does not apply
    (ops outside the ReLU form, Q larger than the float64 check takes, or in quick mode
    fewer than SCALE_EVALUATIONS evaluations in QUICK_TOTAL_WORK multiply-adds)."""
    start = time.monotonic()
    if activation_units(graph) > VERIFY_MAX_DIM:
        return None
    try:
        form = dense_form(build_program(graph))
    except UnsupportedLocal:
        return None
    if form is None:
        return None
    net, weights = form
    slopes = unit_slopes(net)
    size = weights[0].shape[1] + sum(net.widths)
    evaluations = quick_evaluations(weights, slopes=slopes) if quick \
        else full_evaluations(weights, seconds, slopes)
    if evaluations < SCALE_EVALUATIONS:
        return None
    check = check_seconds(weights)
    found = search(weights, slopes, evaluations, deadline - CHECKS_RESERVED * check)
    carried = int(sum(int(lin.sum()) for lin in net.linear))
    extra = {"units": int(sum(net.widths)), "identity_units": carried,
             "layers": net.widths, "q_size": int(size),
             "evaluations": 0 if found is None else found.evaluations,
             "cut_by_budget": bool(found is not None and found.cut_by_budget)}
    if quick:
        extra["mode"] = "quick"
    head = (f"LipSDP-Neuron of the whole network as a ReLU net ({sum(net.widths)} units in "
            f"{len(net.widths)} layers, {carried} of them identity units carrying pools' and "
            f"residual values), per-unit multipliers")
    seconds = time.monotonic() - start
    if found is None:
        return GlobalBound("sdp-net", math.inf, False, kind="estimate", seconds=seconds,
                           detail=head + ": no feasible start", extra=extra)
    verified = certify(weights, slopes, found, deadline)
    seconds = time.monotonic() - start
    cut = "cut short by the time budget (value not reproducible); " if found.cut_by_budget else ""
    if verified is None:
        return GlobalBound("sdp-net", math.sqrt(max(found.rho, 0.0)), False, kind="estimate",
                           seconds=seconds, extra=extra,
                           detail=cut + head + f" after {found.evaluations} L-BFGS evaluations: "
                           "the float64 check of Q failed (an estimate, not a bound)")
    return GlobalBound("sdp-net", math.sqrt(verified) * (1 + 1e-9), True, kind="upper",
                       seconds=seconds, extra=extra,
                       detail=cut + head + f" after {found.evaluations} L-BFGS evaluations; "
                       f"certified by a float64 Cholesky of Q (size {size})")
