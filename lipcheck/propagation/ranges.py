"""Ranges of every step's input on an input set: interval bounds, then CROWN.

`propagate(program, input_set)` returns, for each ReLU-family or max-pool step, lower
and upper bounds (B, n) of its input over each set. Interval arithmetic runs forward;
with method "crown" (the default) the input of every step that follows an affine step is
also bounded by back-substitution (Zhang et al., NeurIPS 2018): the affine map, then each
earlier step replaced by linear upper/lower relaxations valid on the ranges already
found, down to the input, where the set's exact affine range concretises it. Both are
sound; the tighter of the two is kept, per unit. Bounds are widened by a relative 1e-9
(plus 1e-12) against float64 rounding.

Relaxations on [l, u] with l < 0 < u: ReLU-family y = max(z, alpha z), chord above,
the line of slope 1 (when u >= -l) or alpha below; max pool y = max_i x_i: below by the
entry with the largest lower bound, above by the best at the box centre of three affine
upper bounds (`pool_upper`; exact when one entry dominates its window).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lipcheck.propagation.input_set import InputSet
from lipcheck.propagation.program import Act, Add, Affine, MaxPool, Program, sources

Bounds = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Ranges:
    pre: dict[int, Bounds] = field(default_factory=dict)   # step index -> its input range
    output: Bounds | None = None

    def out(self) -> Bounds:
        """The output range; an error before propagation has set it."""
        if self.output is None:
            raise ValueError("ranges not propagated: no output range")
        return self.output

    @property
    def batch(self) -> int:
        """Sets in the batch: the rows of the output range."""
        return self.out()[0].shape[0]

    def unstable(self, program: Program) -> int:
        """Activation inputs whose sign is not fixed on the set, summed over the batch."""
        return sum(int(((lo < 0) & (hi > 0)).sum()) for i, (lo, hi) in self.pre.items()
                   if isinstance(program.steps[i], Act))


def widen(lo: torch.Tensor, hi: torch.Tensor) -> Bounds:
    tol = 1e-9 * (lo.abs() + hi.abs()) + 1e-12
    return lo - tol, hi + tol


def _interval(step, bounds: Bounds, *more: Bounds) -> Bounds:
    lo, hi = bounds
    if isinstance(step, Add):
        return lo + more[0][0], hi + more[0][1]
    if isinstance(step, Affine):
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        mid = mid @ step.weight.T + step.bias
        rad = rad @ step.weight.abs().T
        return mid - rad, mid + rad
    if isinstance(step, Act):
        return torch.where(lo >= 0, lo, step.alpha * lo), torch.where(hi >= 0, hi, step.alpha * hi)
    return _pool_gather(step, lo).amax(dim=2), _pool_gather(step, hi).amax(dim=2)


def _pool_gather(step: MaxPool, x: torch.Tensor) -> torch.Tensor:
    padded = torch.cat([x, torch.full_like(x[:, :1], -torch.inf)], dim=1)
    return padded[:, step.windows]                      # (B, n_out, k)


def act_relaxation(alpha: float, lo: torch.Tensor, hi: torch.Tensor):
    """(upper slope, upper offset, lower slope, lower offset), each (B, n)."""
    one = torch.ones_like(lo)
    dead, live = hi <= 0, lo >= 0
    span = torch.where(dead | live, one, hi - lo)
    chord = torch.where(dead, alpha * one, torch.where(live, one, (hi - alpha * lo) / span))
    t_up = torch.where(dead | live, 0 * one, alpha * lo - chord * lo)
    s_low = torch.where(dead, alpha * one, torch.where(live | (hi >= -lo), one, alpha * one))
    return chord, t_up, s_low, torch.zeros_like(lo)


def pool_relaxation(step: MaxPool, lo: torch.Tensor, hi: torch.Tensor):
    """(winner index (B, n_out), dominated (B, n_out), max upper bound (B, n_out))."""
    lw, uw = _pool_gather(step, lo), _pool_gather(step, hi)
    slot = lw.argmax(dim=2, keepdim=True)
    others = uw.scatter(2, slot, torch.full_like(slot, -torch.inf, dtype=uw.dtype))
    dominated = lw.gather(2, slot).squeeze(2) >= others.amax(dim=2)
    winner = step.windows.expand(lo.shape[0], -1, -1).gather(2, slot).squeeze(2)
    return winner, dominated, uw.amax(dim=2)


def _back_act(lam, const, step: Act, bounds: Bounds):
    s_up, t_up, s_low, t_low = act_relaxation(step.alpha, *bounds)
    pos, neg = lam.clamp(min=0), lam.clamp(max=0)
    const = const + torch.einsum("bmn,bn->bm", pos, t_up) + torch.einsum("bmn,bn->bm", neg, t_low)
    return pos * s_up[:, None, :] + neg * s_low[:, None, :], const


def pool_upper(step: MaxPool, lo: torch.Tensor, hi: torch.Tensor):
    """y = max_k x_k <= sum_k w_k x_k + c on the box, w >= 0 (B, n_out, k), c (B, n_out).

    For w >= 0 the smallest valid c is max_j [(1 - w_j) u_j - sum_{i != j} w_i l_i] (each
    term is the largest of x_j - sum w_i x_i on the box). Per window the candidate with the
    smallest value at the box centre is kept, among: the constant max_k u_k (w = 0), the
    entry with the largest lower bound (w = e_k: exact when it dominates), and weights
    proportional to how far each upper bound reaches above the largest lower bound."""
    lw, uw = _pool_gather(step, lo), _pool_gather(step, hi)
    valid = (step.windows < step.n_in).expand_as(lw)
    l0, u0 = torch.where(valid, lw, 0.0), torch.where(valid, uw, 0.0)
    top = lw.amax(dim=2, keepdim=True)
    reach = torch.where(valid, (uw - top).clamp(min=0), 0.0)
    spread = reach / reach.sum(dim=2, keepdim=True).clamp(min=1e-300)
    winner = torch.zeros_like(lw).scatter(2, lw.argmax(dim=2, keepdim=True), 1.0)
    best_w, best_c = torch.zeros_like(lw), uw.amax(dim=2)
    best_score = best_c
    for w in (winner, spread):
        terms = (1 - w) * u0 + w * l0 - (w * l0).sum(dim=2, keepdim=True)
        c = torch.where(valid, terms, -torch.inf).amax(dim=2)
        score = (w * (l0 + u0) / 2).sum(dim=2) + c
        better = score < best_score
        best_w = torch.where(better[..., None], w, best_w)
        best_c = torch.where(better, c, best_c)
        best_score = torch.minimum(score, best_score)
    return best_w, best_c


def _back_pool(lam, const, step: MaxPool, bounds: Bounds):
    winner, _, _ = pool_relaxation(step, *bounds)
    weights, offset = pool_upper(step, *bounds)
    pos, neg = lam.clamp(min=0), lam.clamp(max=0)
    const = const + (pos * offset[:, None, :]).sum(dim=2)
    batch, m, n_out = lam.shape
    k = step.windows.shape[1]
    out = torch.zeros(batch, m, step.n_in + 1, dtype=lam.dtype)
    up = (pos[..., None] * weights[:, None]).reshape(batch, m, n_out * k)
    out.scatter_add_(2, step.windows.reshape(1, 1, -1).expand(batch, m, -1), up)
    out.scatter_add_(2, winner[:, None, :].expand_as(lam), neg)
    return out[:, :, :step.n_in], const


def _push(pending: dict, value: int, lam: torch.Tensor) -> None:
    pending[value] = pending[value] + lam if value in pending else lam


def back_substitute(program: Program, pending: dict, const: torch.Tensor, upto: int,
                    ranges: Ranges, input_set: InputSet) -> torch.Tensor:
    """Upper bound over each set of sum_v lam_v . value_v + const, for the coefficients
    `pending` (value -> (B, m, n_v)) on values written before step `upto`."""
    for i in range(upto - 1, -1, -1):
        lam = pending.pop(i + 1, None)
        if lam is None:
            continue
        step, src = program.steps[i], sources(program.steps, i)
        if isinstance(step, Affine):
            const = const + lam @ step.bias
            lam = lam @ step.weight
        elif isinstance(step, Act):
            lam, const = _back_act(lam, const, step, ranges.pre[i])
        elif isinstance(step, MaxPool):
            lam, const = _back_pool(lam, const, step, ranges.pre[i])
        for v in src:
            _push(pending, v, lam)
    lam = pending.pop(0, None)
    if lam is None:
        return const
    return input_set.affine_range(lam, const)[1]


def _crown(program: Program, value: int, ranges: Ranges, input_set: InputSet) -> Bounds:
    """CROWN bounds of `value`, written by an affine step."""
    step = program.steps[value - 1]
    assert isinstance(step, Affine), "CROWN bounds values written by affine steps"
    batch = input_set.batch
    w = step.weight.expand(batch, -1, -1)
    pending = {sources(program.steps, value - 1)[0]: torch.cat([w, -w], dim=1)}
    const = torch.cat([step.bias, -step.bias]).expand(batch, -1)
    upper = back_substitute(program, pending, const, value - 1, ranges, input_set)
    m = step.weight.shape[0]
    return -upper[:, m:], upper[:, :m]


def _propagate_chunk(program: Program, input_set: InputSet, method: str) -> Ranges:
    ranges = Ranges()
    values = [input_set.interval()]
    tightened: set[int] = set()
    for i, step in enumerate(program.steps):
        src = sources(program.steps, i)
        if not isinstance(step, (Affine, Add)):
            v = src[0]
            if v not in tightened:
                if v > 0 and isinstance(program.steps[v - 1], Affine) and (
                        method == "crown" or sources(program.steps, v - 1) == (0,)):
                    c_lo, c_hi = _crown(program, v, ranges, input_set)
                    values[v] = (torch.maximum(values[v][0], c_lo),
                                 torch.minimum(values[v][1], c_hi))
                values[v] = widen(*values[v])
                tightened.add(v)
            ranges.pre[i] = values[v]
        values.append(_interval(step, *(values[v] for v in src)))
    ranges.output = values[-1]
    return ranges


def propagate(program: Program, input_set: InputSet, method: str = "crown",
              chunk: int = 32) -> Ranges:
    """Ranges of every non-affine step's input, for each set of the batch."""
    if method not in ("crown", "interval"):
        raise ValueError(f"unknown propagation method {method!r}")
    parts = [_propagate_chunk(program, input_set.slice(s, s + chunk), method)
             for s in range(0, input_set.batch, chunk)]
    merged = Ranges()
    for key in parts[0].pre:
        merged.pre[key] = _cat([p.pre[key] for p in parts])
    merged.output = _cat([p.out() for p in parts])
    return merged


def _cat(parts: list[Bounds]) -> Bounds:
    """The chunks' bounds stacked along the batch."""
    return torch.cat([lo for lo, _ in parts]), torch.cat([hi for _, hi in parts])
