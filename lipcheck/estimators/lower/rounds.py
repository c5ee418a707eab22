"""Certified lower bounds of the Lipschitz constant (L2) of the whole network.

For any two inputs p != q, ||f(p) - f(q)|| / ||p - q|| <= Lip(f): every quotient we
evaluate (exact network, float64, minus a rounding margin) is a certified lower
bound, and so is ||J(x)|| wherever f is differentiable, which we certify through a
secant quotient along J's top singular direction (see lower/search.py).

The search runs in deterministic rounds within a time budget:
  round 0  screening: `screen` seeded random points, the Jacobian norm at each; and,
           for a tiny piecewise-linear chain, the witness of the exact enumeration;
  round r  Jacobian-norm ascent from the next `starts_per_round` best screened points
           (fresh random points once they run out), all in one batch, then a
           pairwise-quotient ascent from the pairs it found.
With the same seed and the same number of rounds the value is identical; the bound's
`extra["rounds"]` records how many the budget allowed, and `lower_bound(...,
rounds=N)` replays them. With `input_range` every point stays in the box [lo, hi]^n:
the value is then a lower bound of the constant on the box (hence also of the global
constant), and the detail says the search was restricted.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from lipcheck.errors import UserError
from lipcheck.estimators.lower.ascent import jacobian_ascent, pairwise_ascent
from lipcheck.estimators.lower.cost import Clock, predicted_forward_s
from lipcheck.estimators.lower.netfn import NetFunction
from lipcheck.estimators.lower.search import (
    Box,
    Candidate,
    Pairs,
    certified_quotient,
    certify,
    jacobian_pairs,
)
from lipcheck.graph import Graph
from lipcheck.results import GlobalBound

DEFAULT_BUDGET_S = 10.0
DEFAULT_ROUNDS = 1   # one batched ascent of starts_per_round points: ~1-2 s on models/digits_*
MIN_FORWARDS = 16    # forward passes of the smallest useful search (one screened point)
PREDICTION_SLACK = 4.0  # predicted forward passes ran up to 4x slower and 4x faster than measured
TRIAL_MAX_FORWARD_S = 0.02  # larger models run their rows one at a time (no batch trial)


@dataclass
class LowerConfig:
    screen: int = 256                       # random points evaluated in round 0
    # no box: N(0, s^2) and (alternate cycles) uniform [0, s] points, s cycling over scales
    scales: tuple[float, ...] = (0.3, 1.0, 3.0, 30.0)
    starts_per_round: int = 16              # points ascended together (one batch) per round
    ascent_steps: int = 60
    pair_steps: int = 40
    lr: float = 0.1                         # Adam step, relative to the point scale
    # smoothing schedules (start, end) annealed over the ascent; row i of a round uses
    # schedule i % len (a portfolio: which one finds the larger Jacobian varies by net)
    sharpness: tuple[tuple[float, float], ...] = ((5.0, 30.0),)
    exact_share: float = 0.3                # budget share for the exact-region witness
    exact_max_units: int = 64               # hidden units at most for trying it
    exact_max_lps: int = 5000
    pattern_share: float = 0.5              # budget share (a cap) for the activation-pattern phase
    pattern_max_units: int = 2048           # hidden units at most for it (0: off)


@dataclass
class LowerBound(GlobalBound):
    """A GlobalBound with the pair that attains it and the seconds of each phase (neither
    serialised into the bound: api.py puts the phases in the report's timings)."""

    witness_data: Candidate | None = field(default=None, repr=False)
    phases: dict[str, float] = field(default_factory=dict, repr=False)


@dataclass
class _Search:
    fn: NetFunction
    box: Box
    seed: int
    config: LowerConfig
    best: Candidate | None = None
    clock: Clock = field(default_factory=lambda: Clock(math.inf))
    starts: list[tuple[float, int]] = field(default_factory=list)  # (value, point index)
    phases: dict[str, float] = field(default_factory=dict)         # seconds per phase

    def offer(self, candidate: Candidate) -> None:
        if self.best is None or candidate.value > self.best.value:
            self.best = candidate

    def offer_pairs(self, pairs: Pairs, method: str) -> None:
        """Certify the row with the best batched quotient if it may beat the best."""
        if len(pairs.values) == 0:
            return
        row = int(torch.argmax(pairs.values))
        if self.best is None or float(pairs.values[row]) > self.best.value:
            self.offer(certify(self.fn, pairs, row, method))

    def scale(self, index: int) -> float:
        if self.box is not None:
            return self.box[1] - self.box[0]
        return self.config.scales[index % len(self.config.scales)]

    def random_point(self, index: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        if self.box is not None:
            lo, hi = self.box
            return lo + (hi - lo) * torch.rand(self.fn.n_in, generator=gen, dtype=torch.float64)
        if (index // len(self.config.scales)) % 2:   # every other cycle: uniform in [0, s]^n
            return self.scale(index) * torch.rand(self.fn.n_in, generator=gen, dtype=torch.float64)
        return self.scale(index) * torch.randn(self.fn.n_in, generator=gen, dtype=torch.float64)

    def points(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The random points with these indices (rows) and their scales (K, 1)."""
        xs = torch.stack([self.random_point(i) for i in indices])
        scales = torch.tensor([[self.scale(i)] for i in indices], dtype=torch.float64)
        return xs, scales


def lower_bound(graph: Graph, budget_s: float = DEFAULT_BUDGET_S, seed: int = 0,
                input_range: tuple[float, float] | None = None, pairwise: bool = True,
                rounds: int | None = None, config: LowerConfig | None = None) -> LowerBound:
    """The best certified lower bound found within `budget_s` seconds, or in `rounds`
    ascent rounds. With `rounds` the search is deterministic (the screen and the exact
    witness are count-limited) and `budget_s` is only a cap: when the cap stops it early,
    `extra["cut_by_budget"]` says so and the value depends on the machine's speed. The cap
    holds: no step starts whose predicted cost ends after it (see lower/cost.py)."""
    start = time.perf_counter()
    box = _check_range(input_range)
    clock = Clock(start + budget_s, predicted_forward_s(graph))
    # the prediction may be PREDICTION_SLACK x pessimistic; building the function costs a
    # float64 copy of every weight (VGG-11: 1.1 GB), so a search that cannot fit is not begun
    if not clock.fits(clock.forward_s * max(1.0, MIN_FORWARDS / PREDICTION_SLACK)):
        return _not_searched(clock.forward_s, "predicted", budget_s, seed, box, start)
    fn = NetFunction(graph, trial=clock.forward_s <= TRIAL_MAX_FORWARD_S)
    clock.forward_s = fn.forward_s
    if not clock.fits(MIN_FORWARDS * clock.forward_s):
        return _not_searched(clock.forward_s, "measured", budget_s, seed, box, start)
    search = _Search(fn, box, seed, config or LowerConfig(), clock=clock)
    search.phases["setup"] = time.perf_counter() - start
    with torch.random.fork_rng(devices=[]):
        _timed(search, "patterns", _pattern_witness, graph, search, budget_s)
        _timed(search, "exact_region", _exact_witness, graph, search, budget_s)
        screened = _timed(search, "screen", _screen, search)
        done = _timed(search, "rounds", _rounds, search, pairwise, rounds)
    result = _bound(search, time.perf_counter() - start, done, screened)
    result.extra["cut_by_budget"] = rounds is not None and (
        done < rounds or screened < search.config.screen or clock.cut)
    return result


def _timed(search: _Search, phase: str, body, *args):
    start = time.perf_counter()
    try:
        return body(*args)
    finally:
        search.phases[phase] = time.perf_counter() - start


def _not_searched(forward_s: float, how: str, budget_s: float, seed: int, box: Box,
                  start: float) -> LowerBound:
    detail = (f"not searched: one forward pass of the network takes {forward_s:.3g} s "
              f"({how}), and the smallest search ({MIN_FORWARDS} passes) does not fit "
              f"the {budget_s:g} s cap (raise --lower-budget); 0 random starts, 0 ascent rounds")
    extra = {"witness": None, "rounds": 0, "seed": seed, "input_range": list(box) if box else None,
             "jacobian_norm": None, "cut_by_budget": True}
    return LowerBound("none", 0.0, True, "lower", time.perf_counter() - start, detail, extra, None)


def _check_range(input_range: tuple[float, float] | None) -> Box:
    if input_range is None:
        return None
    lo, hi = (float(v) for v in input_range)
    if not hi > lo:
        raise UserError(f"--input-range {lo},{hi}: LO must be below HI")
    return lo, hi


# --- activation-pattern phase (issue 12 item 3): lower/patterns.py ---------------------
PATTERNS = True   # bench/bench_patterns.py --no-patterns turns it off (the "before" column)


def _pattern_witness(graph: Graph, search: _Search, budget_s: float) -> None:
    """For a small ReLU-family MLP, certify the regions of SeqLip's activation patterns
    (LP counts decide the value; `pattern_share * budget_s` is only a cap)."""
    if not PATTERNS or search.config.pattern_max_units <= 0:
        return
    from lipcheck.estimators.lower.patterns import pattern_pairs
    cap = min(search.config.pattern_share * budget_s, max(search.clock.left(), 0.0))
    found = pattern_pairs(graph, search.fn, search.box, cap,
                          max_units=search.config.pattern_max_units)
    search.clock.cut = search.clock.cut or found.cut
    if found.pairs is not None:
        search.offer_pairs(found.pairs, "activation-pattern")
# --- end of the activation-pattern phase ---------------------------------------------


def _exact_witness(graph: Graph, search: _Search, budget_s: float) -> None:
    """For a tiny ReLU-family chain, certify the exact enumeration's best region: limited
    by its LP count (reproducible) and by a share of the time cap (a cut is recorded)."""
    from lipcheck.estimators.exact.pwl_chain import hidden_units, pwl_chain
    if hidden_units(graph) > search.config.exact_max_units or search.fn.n_in > 4096:
        return
    try:
        chain = pwl_chain(graph)
    except (UserError, RuntimeError, ValueError):
        return
    if sum(chain.widths) > search.config.exact_max_units:
        return
    from lipcheck.estimators.exact.regions import exact_chain
    clock = search.clock
    seconds = min(search.config.exact_share * budget_s,
                  clock.left() - clock.estimate("point", 1 + search.config.screen))
    if seconds <= 0 or not clock.fits(seconds):
        clock.cut = True
        return
    result = exact_chain(chain, search.box, max_lps=search.config.exact_max_lps,
                         max_seconds=seconds)
    clock.cut = clock.cut or (not result.complete and result.lps < search.config.exact_max_lps
                              and result.method == "exact-enumeration")
    if result.witness is not None and clock.fits(clock.estimate("point")):
        x = torch.tensor(result.witness, dtype=torch.float64)[None]
        search.offer_pairs(jacobian_pairs(search.fn, x, search.box, clock=clock)[0],
                           "exact-region")


def _screen(search: _Search, chunk: int = 64) -> int:
    """Round 0: certified Jacobian values at seeded random points; starts best first.
    Batches grow 1, 2, 4, ... up to `chunk`, and shrink to what the clock says fits
    before the deadline (the points and their values do not depend on the batching)."""
    done, size, clock = 0, 1, search.clock
    while done < search.config.screen:
        per_point = clock.estimate("point")
        fit = int(clock.left() / per_point) if per_point > 0 else size
        count = min(size, fit, search.config.screen - done)
        if count < 1:
            clock.cut = True
            break
        indices = list(range(done, done + count))
        size = min(2 * size, chunk)
        pairs, _ = jacobian_pairs(search.fn, search.points(indices)[0], search.box, clock=clock)
        search.offer_pairs(pairs, "jacobian-ascent")
        # one pair per row of the points (secant_pairs is batched over rows)
        search.starts += [(float(v), i) for v, i in zip(pairs.values, indices, strict=True)]
        done += len(indices)
    search.starts.sort(key=lambda item: (-item[0], item[1]))
    return done


def _rounds(search: _Search, pairwise: bool, rounds: int | None) -> int:
    done, clock, rows = 0, search.clock, search.config.starts_per_round
    while rounds is None or done < rounds:
        # a round: the starts' directions, a step, and the checks after it
        if not clock.fits(clock.estimate("step", rows) + 2 * clock.estimate("point", rows)):
            break
        _one_round(search, done, pairwise)
        done += 1
    return done


def _round_starts(search: _Search, index: int) -> list[int]:
    """Point indices for round `index`: the next best screened, then fresh ones."""
    k, screen = search.config.starts_per_round, search.config.screen
    ranked = [i for _, i in search.starts]
    return [ranked[j] if j < len(ranked) else screen + j for j in range(index * k, index * k + k)]


def _one_round(search: _Search, index: int, pairwise: bool) -> None:
    cfg = search.config
    xs, scales = search.points(_round_starts(search, index))
    schedules = torch.tensor([cfg.sharpness[i % len(cfg.sharpness)] for i in range(len(xs))],
                             dtype=torch.float64)
    found = jacobian_ascent(search.fn, xs, cfg.ascent_steps, cfg.lr * scales, search.box,
                            schedules, clock=search.clock)
    search.offer_pairs(found, "jacobian-ascent")
    if pairwise:
        d = found.q - found.p
        size = d.norm(dim=1, keepdim=True)
        even = torch.ones_like(d) / d.shape[1] ** 0.5
        d = torch.where(size > 0, d / size.clamp_min(1e-300), even)

        pairs = pairwise_ascent(search.fn, found.p, 1e-2 * scales * d, cfg.pair_steps,
                                cfg.lr * scales, search.box, search.clock)
        search.offer_pairs(pairs, "pairwise")


def _bound(search: _Search, seconds: float, rounds: int, screened: int) -> LowerBound:
    best = search.best or Candidate(0.0, "none", np.zeros(0), np.zeros(0))
    where = ("whole input space" if search.box is None else
             f"search restricted to the input box [{search.box[0]:g}, {search.box[1]:g}]^n "
             "(a lower bound on the box, hence also globally)")
    detail = (f"{best.method} witness; {screened} random starts, {rounds} ascent rounds; {where}")
    extra = {"witness": None, "rounds": rounds, "seed": search.seed,
             "input_range": list(search.box) if search.box else None,
             "jacobian_norm": best.jacobian_norm}
    return LowerBound(best.method, best.value, True, "lower", seconds, detail, extra, best,
                      dict(search.phases))


def save_witness(path: str, bound: LowerBound) -> None:
    """Store the pair attaining `bound` (npz: x, y, value, method); records the path."""
    data = bound.witness_data
    if data is None:
        raise UserError(f"--save-witness {path}: the lower bound has no witness")
    with open(path, "wb") as fh:
        np.savez(fh, x=data.x, y=data.y, value=np.float64(data.value), method=data.method)
    bound.extra["witness"] = str(path)


def load_witness(path: str) -> Candidate:
    with np.load(path, allow_pickle=False) as npz:
        return Candidate(float(npz["value"]), str(npz["method"]), npz["x"].copy(), npz["y"].copy())


def witness_value(graph: Graph, witness: Candidate) -> float:
    """Recompute the certified quotient of a witness pair on the graph."""
    fn = NetFunction(graph)
    x, y = (torch.tensor(a, dtype=torch.float64) for a in (witness.x, witness.y))
    if x.numel() != fn.n_in or y.numel() != fn.n_in:
        raise UserError(f"witness has {x.numel()} inputs, the model takes {fn.n_in}")
    return certified_quotient(fn, x, y)
