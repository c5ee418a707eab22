"""Batched ascents for the lower-bound search: Jacobian-norm ascent on a smoothed copy
of the network (steering only) and pairwise-quotient ascent on the exact network.

Each row of the batch is an independent search (Adam is elementwise; the smoothing
width is per row), so a row's trajectory does not depend on the others. Both return
per-row best `Pairs` whose values are batched quotients of the exact network: the
caller certifies the best one point by point (lower_search.certify).
"""
from __future__ import annotations

import time

import torch

from lipcheck.estimators.lower.cost import Clock
from lipcheck.estimators.lower.netfn import NetFunction
from lipcheck.estimators.lower.search import (
    Box,
    Pairs,
    chunks,
    clamp,
    grad,
    jacobian_pairs,
    quotients,
)


class Adam:
    """Plain Adam ascent on tensors updated in place (torch.optim pulls in torch._dynamo,
    seconds of import time that a 1-second budget cannot afford). A learning rate may
    be a tensor that broadcasts against its parameter (one per row)."""

    def __init__(self, params: list[torch.Tensor], lrs: list[float | torch.Tensor],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-12) -> None:
        self.params, self.lrs, self.betas, self.eps, self.t = params, lrs, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def ascend(self, grads: list[torch.Tensor]) -> None:
        self.t += 1
        b1, b2 = self.betas
        with torch.no_grad():
            for p, g, m, v, lr in zip(self.params, grads, self.m, self.v, self.lrs, strict=False):
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                step = (m / (1 - b1 ** self.t)) / ((v / (1 - b2 ** self.t)).sqrt() + self.eps)
                p.add_(lr * step)


def jacobian_ascent(fn: NetFunction, x0: torch.Tensor, steps: int, lrs: torch.Tensor, box: Box,
                    sharpness: torch.Tensor | None = None, check_every: int = 10,
                    clock: Clock | None = None) -> Pairs:
    """Adam ascent of ||J_s(x) v|| for each row (J_s: the smoothed network, sharpness
    annealed geometrically from sharpness[:, 0] to sharpness[:, 1], one schedule per row,
    default 1 -> 30; v kept the top singular vector by one power step per iteration);
    the exact network's secant pairs every `check_every` steps; the best per row. With a
    clock, a step starts only when it and the check after it fit before the deadline."""
    if sharpness is None:
        sharpness = torch.tensor([[1.0, 30.0]], dtype=torch.float64).expand(len(x0), 2)
    rows = len(x0)
    best, v = jacobian_pairs(fn, x0, box, clock=clock)
    x = x0.detach().clone().requires_grad_(True)
    opt = Adam([x], [lrs])
    checked = True
    for k in range(steps):
        if clock is not None and not clock.fits(clock.estimate("step", rows) +
                                                clock.estimate("point", rows)):
            break
        start = time.perf_counter()
        ratio = sharpness[:, 1] / sharpness[:, 0]
        fn.smoothing = sharpness[:, 0] * ratio ** (k / max(steps - 1, 1))

        try:
            v = _ascent_step(fn, x, v, opt, box)
        finally:
            fn.smoothing = None
        if clock is not None:
            clock.record("step", start, rows)
        checked = False
        if (k + 1) % check_every == 0 or k + 1 == steps:
            best.improve(jacobian_pairs(fn, x.detach(), box, v, clock)[0])
            checked = True
    if not checked and (clock is None or clock.fits(clock.estimate("point", rows))):
        best.improve(jacobian_pairs(fn, x.detach(), box, v, clock)[0])
    return best


def _ascent_step(fn: NetFunction, x: torch.Tensor, v: torch.Tensor, opt: Adam,
                 box: Box) -> torch.Tensor:
    """One Adam step on sum_rows ||J_s(x) v||, then one power step for v. J v comes from
    the double-vjp trick (torch.func would import torch._dynamo: seconds)."""
    with torch.enable_grad():
        y = fn.batch(x)
        u = torch.zeros_like(y, requires_grad=True)
        g = grad((y * u).sum(), x, create_graph=True)
        if not g.requires_grad:
            return v
        jv = grad((g * v).sum(), u, create_graph=True)
        norms = jv.norm(dim=1)
        step = grad(norms.sum(), x, retain_graph=True) if norms.requires_grad else None
        w = grad((y * jv.detach()).sum(), x)
    if step is not None:
        opt.ascend([step])
    with torch.no_grad():
        x.copy_(clamp(x, box))
    size = w.norm(dim=1, keepdim=True)
    return torch.where(size > 0, w / size.clamp_min(1e-300), v).detach()


def pairwise_ascent(fn: NetFunction, x0: torch.Tensor, d0: torch.Tensor, steps: int,
                    lrs: torch.Tensor, box: Box, clock: Clock | None = None) -> Pairs:
    """Adam ascent of ||f(x) - f(x + d)|| / ||d|| for each row, exact network; every
    iterate is a candidate; the best per row. With a clock, a step starts only when it
    fits before the deadline."""
    x = x0.detach().clone().requires_grad_(True)
    d = d0.detach().clone().requires_grad_(True)
    d_lrs = 0.05 * d0.norm(dim=1, keepdim=True) / d0.shape[1] ** 0.5
    opt = Adam([x, d], [lrs, d_lrs])
    zeros = torch.zeros(x0.shape[0], dtype=x0.dtype)
    best = Pairs(zeros.clone(), x0.detach().clone(), x0.detach().clone(), zeros)
    for _ in range(steps):
        if clock is not None and not clock.fits(clock.estimate("pair_step", len(x0))):
            break
        start = time.perf_counter()
        with torch.enable_grad():
            value = _pair_quotients(fn, x, x + d)
        found = Pairs(value.detach(), x.detach().clone(), (x + d).detach().clone(), zeros)
        best.improve(found)
        opt.ascend(list(torch.autograd.grad(value.sum(), [x, d], materialize_grads=True)))
        with torch.no_grad():
            x.copy_(clamp(x, box))
            d.copy_(clamp(x + d, box) - x)
        if clock is not None:
            clock.record("pair_step", start, len(x0))
    return best


def _pair_quotients(fn: NetFunction, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Differentiable batched quotients (their values are the ranking quotients)."""
    parts = []
    for s in chunks(fn, p.shape[0], 2):
        f = fn.batch(torch.cat([p[s], q[s]]))
        n = s.stop - s.start
        raw = (f[:n] - f[n:]).norm(dim=1) / (p[s] - q[s]).norm(dim=1).clamp_min(1e-300)
        margin = quotients(f[:n].detach(), f[n:].detach(), p[s].detach(), q[s].detach())
        parts.append(raw + (margin - raw).detach())
    return torch.cat(parts)
