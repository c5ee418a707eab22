"""Branch and bound on ReLU units: is r . f(x) > 0 on all of B(x0, eps)?

A *property* is (sample, row r). A *domain* is the ball with some units' signs fixed
(splits). Each domain gets a lower bound of r . f over it from `relu_bounds.backward`,
maximised over alpha in [0, 1] and beta >= 0 by Adam (every iterate is a valid bound; the
best is kept); domains whose bound is positive are done, the others are split on one
unstable unit (the largest estimated relaxation loss, BaBSR-style) into z >= 0 and z <= 0,
which together cover the domain. A property is certified when no domain is left. The
limits are counts (domains per property, optionally rounds, iterations), so results are
reproducible (what is unfinished is not certified). A short PGD attack first drops
margins that do not hold (a point of the ball with a negative margin: no bound can certify
those).

A bound counts only when it exceeds ROUNDING x the magnitude of its terms plus `slack`
(the float64 rounding of the backward pass, ~1e-13 relative, with room).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from lipcheck.propagation.relu_bounds import (
    ROUNDING,
    Range,
    Relax,
    backward,
    clamp_split,
    crown_ranges,
    default_alpha,
    refine_ranges,
)
from lipcheck.propagation.relu_net import ReluNet

RANGE_ENTRIES = 1 << 24   # CROWN ranges: balls per chunk x 2 width^2 at most (128 MB)
GROUP = 512               # margins searched together (memory: domains x units)


@dataclass
class Limits:
    domains: int = 400        # domains created per property before it is given up
    batch: int = 256          # domains bounded together per round
    rounds: int | None = None  # rounds of splitting (None: until every margin is done)
    root_iters: int = 20
    iters: int = 10
    lr: float = 0.1
    candidates: int = 3       # units compared per split (1: the score alone)
    refine: bool = False      # re-bound every layer's ranges on each new domain (slow)
    attack_steps: int = 30
    attack_restarts: int = 3


@dataclass
class Outcome:
    certified: torch.Tensor               # (P,) bool
    attacked: torch.Tensor                # (P,) bool: a point with a negative margin found
    domains: torch.Tensor                 # (P,) domains created
    rounds: int = 0
    seconds: float = 0.0


@dataclass
class Domains:
    prop: torch.Tensor                    # (D,) property index
    splits: list[torch.Tensor]            # (D, n_k) int: +1, -1, 0
    alphas: list[torch.Tensor]            # (D, 1, n_k)
    betas: list[torch.Tensor]             # (D, 1, n_k)
    ranges: list[Range]                   # (D, n_k) each: z_k's range on the domain
    lower: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    def take(self, index: torch.Tensor) -> Domains:
        return Domains(self.prop[index], [s[index] for s in self.splits],
                       [a[index] for a in self.alphas], [b[index] for b in self.betas],
                       [(lo[index], hi[index]) for lo, hi in self.ranges], self.lower[index])

    @staticmethod
    def cat(parts: list[Domains]) -> Domains:
        return Domains(torch.cat([p.prop for p in parts]),
                       [torch.cat(x) for x in zip(*[p.splits for p in parts], strict=True)],
                       [torch.cat(x) for x in zip(*[p.alphas for p in parts], strict=True)],
                       [torch.cat(x) for x in zip(*[p.betas for p in parts], strict=True)],
                       [(torch.cat([lo for lo, _ in x]), torch.cat([hi for _, hi in x]))
                        for x in zip(*[p.ranges for p in parts], strict=True)],
                       torch.cat([p.lower for p in parts]))


class _Problem:
    """The net, the balls' ranges and the properties (sample index, row) being proved."""

    def __init__(self, net: ReluNet, centers: torch.Tensor, eps: float, sample: torch.Tensor,
                 rows: torch.Tensor, slack: float, refine: bool = False,
                 prior: list[Range | None] | None = None) -> None:
        self.net, self.eps, self.slack = net, eps, slack
        self.centers, self.sample, self.rows = centers, sample, rows
        self.ranges = chunked_ranges(net, centers, eps, prior)
        self.refine = refine

    def bound(self, dom: Domains, keep: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(certified lower bound, raw bound) of each domain's r . f; where rounding could
        decide the sign the first is below 0 (the raw bound, at most 0, minus 1)."""
        s = self.sample[dom.prop]
        ranges = dom.ranges
        row = self.rows[dom.prop]
        lam = (row @ self.net.weights[-1])[:, None, :]
        const = (row @ self.net.biases[-1])[:, None]
        relax = Relax([a.clamp(0, 1) for a in dom.alphas], [b.clamp(min=0) for b in dom.betas],
                      dom.splits)
        low, mag = backward(self.net, lam, const, len(self.ranges) - 1, ranges,
                            self.centers[s], self.eps, relax, keep)
        low, mag = low[:, 0], mag[:, 0]
        safe = low - ROUNDING * mag - self.slack
        return torch.where(safe > 0, safe, low.detach().clamp(max=0) - 1.0), low

    def optimise(self, dom: Domains, iters: int, lr: float) -> Domains:
        """Adam on alpha and beta; each domain keeps its best certified bound (each
        pass's bound is that of the parameters it ran with, before the step)."""
        params = [t.clone().requires_grad_(True) for t in dom.alphas + dom.betas]
        n = len(dom.alphas)
        best = dom
        opt = torch.optim.Adam(params, lr=lr)
        for step in range(iters + 1):
            current = Domains(dom.prop, dom.splits, [p.detach().clone() for p in params[:n]],
                              [p.detach().clone() for p in params[n:]], dom.ranges)
            trial = Domains(dom.prop, dom.splits, params[:n], params[n:], dom.ranges)
            safe, raw = self.bound(trial)
            current.lower = safe.detach()
            best = current if step == 0 else _better(best, current)
            if step == iters:
                break
            opt.zero_grad()
            (-raw.sum()).backward()
            opt.step()
            with torch.no_grad():
                for p in params[:n]:
                    p.clamp_(0, 1)
                for p in params[n:]:
                    p.clamp_(min=0)
        return best

    def _evaluate(self, dom: Domains) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.bound(dom)

    def split(self, dom: Domains, candidates: int = 1) -> tuple[Domains, Domains]:
        """(two children of each domain, on one unit; the domains with no unit left to
        split, unchanged). The unit: of the `candidates` with the largest estimated
        loss (BaBSR-style), the one whose worse child has the larger bound at the
        parent's parameters (filtered smart branching, De Palma et al. 2021)."""
        flat = self._scores(dom)
        top = flat.topk(min(candidates, flat.shape[1]), dim=1)
        ok = top.values[:, 0] > 0
        stuck = dom.take((~ok).nonzero()[:, 0])
        dom = dom.take(ok.nonzero()[:, 0])
        units, valid = top.indices[ok], top.values[ok] > 0
        if units.shape[1] > 1:
            units = units.gather(1, self._pick(dom, units, valid)[:, None])
        children = Domains.cat([_with_split(dom, units[:, 0], sign) for sign in (1, -1)])
        if self.refine:
            children.ranges = refine_ranges(self.net, children.ranges, children.splits,
                                            self.centers[self.sample[children.prop]], self.eps)
        return children, stuck

    def _scores(self, dom: Domains) -> torch.Tensor:
        keep: list[torch.Tensor] = []
        with torch.no_grad():
            self.bound(dom, keep)
        scores = []
        for k, lam in enumerate(keep):
            lo, hi = clamp_split(*dom.ranges[k], dom.splits[k])
            lo, hi = lo.clone(), hi.clone()
            lo[:, self.net.linear[k]] = 0.0
            scores.append(_loss(lam[:, 0], lo, hi, dom.alphas[k][:, 0].clamp(0, 1)))
        return torch.cat(scores, dim=1)

    def _pick(self, dom: Domains, units: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(D,) which column of `units` to split on: the best worse child."""
        worst = []
        for c in range(units.shape[1]):
            both = [self._evaluate(_with_split(dom, units[:, c], sign))[1] for sign in (1, -1)]
            worst.append(torch.where(valid[:, c], torch.minimum(*both), -torch.inf))
        return torch.stack(worst, dim=1).argmax(dim=1)


def _with_split(dom: Domains, unit: torch.Tensor, sign: int) -> Domains:
    """A copy of the domains with flat unit `unit` (D,) split to `sign`, its beta 0."""
    child = dom.take(torch.arange(len(dom.prop)))
    child.splits = [s.clone() for s in child.splits]
    child.betas = [b.clone() for b in child.betas]
    start = 0
    for k, sk in enumerate(child.splits):
        n = sk.shape[1]
        rows = ((unit >= start) & (unit < start + n)).nonzero()[:, 0]
        sk[rows, unit[rows] - start] = sign
        child.betas[k][rows, 0, unit[rows] - start] = 0.0
        start += n
    return child


def _loss(lam, lo, hi, alpha):
    """Estimated gain of splitting each unit: what its relaxation gives away."""
    unstable = (lo < 0) & (hi > 0)
    width = torch.where(unstable, hi - lo, 1.0)
    upper_loss = -lam * hi * (-lo) / width
    lower_loss = lam * torch.maximum((1 - alpha) * hi, -alpha * lo)
    return torch.where(unstable, torch.where(lam < 0, upper_loss, lower_loss), 0.0)


def _better(a: Domains, b: Domains) -> Domains:
    """Per domain, the parameters with the larger certified bound."""
    pick = b.lower > a.lower

    def mix(x, y):
        return torch.where(pick.view(-1, *([1] * (x.dim() - 1))), y, x)
    out = Domains(a.prop, a.splits, [mix(x, y) for x, y in zip(a.alphas, b.alphas, strict=True)],
                  [mix(x, y) for x, y in zip(a.betas, b.betas, strict=True)], a.ranges)
    out.lower = torch.maximum(a.lower, b.lower)
    return out


def attack(net: ReluNet, centers: torch.Tensor, eps: float, rows: torch.Tensor,
           limits: Limits, seed: int = 0) -> torch.Tensor:
    """(P,) the smallest r . f found on each ball by L2 PGD (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    best = (rows * net.run(centers)).sum(dim=1)
    for _ in range(limits.attack_restarts):
        delta = torch.randn(centers.shape, generator=gen, dtype=torch.float64)
        delta = eps * 0.5 * delta / torch.linalg.norm(delta, dim=1, keepdim=True)
        for _ in range(limits.attack_steps):
            delta.requires_grad_(True)
            margin = (rows * net.run(centers + delta)).sum(dim=1)
            (grad,) = torch.autograd.grad(margin.sum(), delta)
            with torch.no_grad():
                best = torch.minimum(best, margin.detach())
                step = grad / torch.linalg.norm(grad, dim=1, keepdim=True).clamp(min=1e-30)
                delta = delta - 0.25 * eps * step
                norm = torch.linalg.norm(delta, dim=1, keepdim=True)
                delta = delta * torch.clamp(eps / norm.clamp(min=1e-30), max=1.0)
        with torch.no_grad():
            best = torch.minimum(best, (rows * net.run(centers + delta)).sum(dim=1))
    return best


def verify(net: ReluNet, centers: torch.Tensor, eps: float, sample: torch.Tensor,
           rows: torch.Tensor, limits: Limits | None = None, slack: float = 1e-9,
           prior: list[Range | None] | None = None) -> Outcome:
    """Which properties rows_p . f > 0 hold on all of B(centers[sample_p], eps): centers
    (N, n), sample (P,), rows (P, n_out). Certified ones are proved; the others are
    unknown (or attacked: a point with a negative margin was found). `prior`: other
    sound ranges (N, n_k) of hidden layers' inputs on the balls, intersected with CROWN's."""
    limits = limits or Limits()
    if len(sample) > GROUP:
        parts = [verify(net, centers, eps, sample[i:i + GROUP], rows[i:i + GROUP], limits,
                        slack, prior) for i in range(0, len(sample), GROUP)]
        return Outcome(torch.cat([p.certified for p in parts]),
                       torch.cat([p.attacked for p in parts]),
                       torch.cat([p.domains for p in parts]), max(p.rounds for p in parts),
                       sum(p.seconds for p in parts))
    start = time.perf_counter()
    count = len(sample)
    attacked = attack(net, centers[sample], eps, rows, limits) <= 0
    certified = torch.zeros(count, dtype=torch.bool)
    created = torch.zeros(count, dtype=torch.long)
    live = (~attacked).nonzero()[:, 0]
    outcome = Outcome(certified, attacked, created)
    if not len(live):
        return outcome
    used, local_sample = torch.unique(sample[live], return_inverse=True)
    problem = _Problem(net, centers[used], eps, local_sample, rows[live], slack, limits.refine,
                       _rows(prior, used))
    dom = _roots(problem, len(live))
    dom = problem.optimise(dom, limits.root_iters, limits.lr)
    local_created = torch.ones(len(live), dtype=torch.long)
    failed = torch.zeros(len(live), dtype=torch.bool)
    while True:
        dom = dom.take((dom.lower <= 0).nonzero()[:, 0])
        failed[dom.prop[local_created[dom.prop] >= limits.domains]] = True
        dom = dom.take((~failed[dom.prop]).nonzero()[:, 0])
        if not len(dom.prop) or outcome.rounds == limits.rounds:
            break
        outcome.rounds += 1
        chosen, rest = _choose(dom, limits.batch)
        children, stuck = problem.split(dom.take(chosen), limits.candidates)
        failed[stuck.prop] = True          # no unit left to split: nothing more to try
        local_created += torch.bincount(children.prop, minlength=len(live))
        children = problem.optimise(children, limits.iters, limits.lr)
        dom = Domains.cat([dom.take(rest), children])
    failed[dom.prop[dom.lower <= 0]] = True
    certified[live] = ~failed
    created[live] = local_created
    outcome.seconds = time.perf_counter() - start
    return outcome


def chunked_ranges(net: ReluNet, centers: torch.Tensor, eps: float,
                   prior: list[Range | None] | None = None) -> list[Range]:
    """crown_ranges over the balls, a few at a time (RANGE_ENTRIES bounds the memory)."""
    chunk = max(1, min(32, RANGE_ENTRIES // (2 * max(net.widths) ** 2)))
    parts = [crown_ranges(net, centers[i:i + chunk], eps, _rows(prior, i, i + chunk))
             for i in range(0, len(centers), chunk)]
    return [(torch.cat([p[k][0] for p in parts]), torch.cat([p[k][1] for p in parts]))
            for k in range(len(parts[0]))]


def _rows(prior: list[Range | None] | None, *index) -> list[Range | None] | None:
    """The prior ranges of some balls: rows `index` (a tensor) or `start, stop`."""
    if prior is None:
        return None
    pick = index[0] if len(index) == 1 else slice(*index)
    return [None if r is None else (r[0][pick], r[1][pick]) for r in prior]


def _roots(problem: _Problem, count: int) -> Domains:
    s = problem.sample
    splits = [torch.zeros(count, lo.shape[1], dtype=torch.float64) for lo, _ in problem.ranges]
    alphas = [default_alpha(lo[s], hi[s])[:, None, :] for lo, hi in problem.ranges]
    betas = [torch.zeros(count, 1, lo.shape[1], dtype=torch.float64) for lo, _ in problem.ranges]
    ranges = [(lo[s], hi[s]) for lo, hi in problem.ranges]
    return Domains(torch.arange(count), splits, alphas, betas, ranges,
                   torch.full((count,), -torch.inf))


def _choose(dom: Domains, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `batch` domains, spread over the properties (each property's worst first)."""
    order = torch.argsort(dom.lower, stable=True)
    order = order[torch.argsort(dom.prop[order], stable=True)]   # by property, worst first
    props = dom.prop[order]
    first = torch.searchsorted(props, props)                       # each group's start
    rank = torch.arange(len(props)) - first
    pick = order[torch.argsort(rank, stable=True)][:batch]
    mask = torch.zeros(len(dom.prop), dtype=torch.bool)
    mask[pick] = True
    return mask.nonzero()[:, 0], (~mask).nonzero()[:, 0]
