"""Search steps for certified lower bounds: Jacobian top direction, secant certificate,
Jacobian-norm ascent (on a smoothed network) and pairwise-quotient ascent.

Every number these return as `Candidate.value` is a pairwise quotient
||f(p) - f(q)|| / ||p - q|| of the exact network at two points in the search box,
computed in float64 and lowered by a rounding margin: a certified lower bound of the
Lipschitz constant that needs no differentiability. A Jacobian candidate uses the
pair x -/+ (t/2) v with v its top right singular vector and t tiny, so that the
quotient equals ||J(x) v|| wherever f is differentiable around x (piecewise-linear
nets away from a kink), and is still a valid lower bound where it is not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lipcheck.estimators.netfn import NetFunction

DENSE_OUT = 32          # form J row by row (vector-Jacobian products) up to this many outputs
REL_MARGIN = 1e-9       # relative margin on every certified quotient
ROUND_FACTOR = 1e-12    # ... plus this times (|f(p)| + |f(q)|) / |f(p) - f(q)|: cancellation
SECANT_STEPS = (1e-4, 1e-6)
Box = tuple[float, float] | None


class Adam:
    """Plain Adam ascent on tensors updated in place (torch.optim pulls in torch._dynamo,
    seconds of import time that a 1-second budget cannot afford)."""

    def __init__(self, params: list[torch.Tensor], lrs: list[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-12) -> None:
        self.params, self.lrs, self.betas, self.eps, self.t = params, lrs, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def ascend(self, grads: list[torch.Tensor]) -> None:
        self.t += 1
        b1, b2 = self.betas
        with torch.no_grad():
            for p, g, m, v, lr in zip(self.params, grads, self.m, self.v, self.lrs):
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                step = (m / (1 - b1 ** self.t)) / ((v / (1 - b2 ** self.t)).sqrt() + self.eps)
                p.add_(lr * step)


@dataclass
class Candidate:
    value: float                  # certified lower bound
    method: str                   # "jacobian-ascent", "pairwise", "exact-region"
    x: np.ndarray                 # the pair that certifies it
    y: np.ndarray
    jacobian_norm: float | None = None  # ||J(x) v|| (float64, information only)


def certified_from(fp: torch.Tensor, fq: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> float:
    num, den = float((fp - fq).norm()), float((p - q).norm())
    if den == 0.0 or num == 0.0 or not math.isfinite(num):
        return 0.0
    rel = REL_MARGIN + ROUND_FACTOR * (float(fp.norm()) + float(fq.norm())) / num
    return max(num / den * (1.0 - rel), 0.0)


def certified_quotient(fn: NetFunction, p: torch.Tensor, q: torch.Tensor) -> float:
    """||f(p) - f(q)|| / ||p - q|| of the exact network, float64, minus the margin."""
    return certified_from(fn.exact(p), fn.exact(q), p, q)


def clamp(x: torch.Tensor, box: Box) -> torch.Tensor:
    return x if box is None else x.clamp(box[0], box[1])


def _outputs(fn: NetFunction, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        return x, fn(x)


def _vjp(y: torch.Tensor, x: torch.Tensor, u: torch.Tensor, **kw) -> torch.Tensor:
    kw.setdefault("allow_unused", True)
    (g,) = torch.autograd.grad(y, x, u, retain_graph=True, **kw)
    return torch.zeros_like(x) if g is None else g


def top_direction(fn: NetFunction, x: torch.Tensor, v0: torch.Tensor | None = None,
                  iters: int = 40) -> tuple[float, torch.Tensor]:
    """(||J(x)|| estimate, top right singular vector) of fn as it is now (smoothed or not)."""
    x, y = _outputs(fn, x)
    if not y.requires_grad:
        return 0.0, torch.zeros_like(x)
    if y.numel() <= DENSE_OUT:
        rows = [_vjp(y, x, torch.eye(y.numel(), dtype=y.dtype)[i]) for i in range(y.numel())]
        jac = torch.stack(rows)
        if not bool(torch.isfinite(jac).all()):  # overflow (weights near 1e154+): no witness
            return 0.0, torch.zeros_like(x)
        _, s, vh = torch.linalg.svd(jac, full_matrices=False)
        return float(s[0]), vh[0]
    return _power(y, x, v0, iters)


def _power(y: torch.Tensor, x: torch.Tensor, v0: torch.Tensor | None,
           iters: int) -> tuple[float, torch.Tensor]:
    """Power iteration on J^T J; J v by the double-vjp trick (no J is formed)."""
    u = torch.zeros_like(y, requires_grad=True)
    with torch.enable_grad():
        g = _vjp(y, x, u, create_graph=True)
    v = torch.randn_like(x) if v0 is None else v0.clone()
    v, sigma = v / v.norm().clamp_min(1e-300), 0.0
    for _ in range(iters):
        jv = _vjp(g, u, v) if g.requires_grad else torch.zeros_like(y)
        w = _vjp(y, x, jv)
        previous, sigma = sigma, float(jv.norm())
        if float(w.norm()) == 0.0:
            break
        v = w / w.norm()
        if abs(sigma - previous) <= 1e-9 * sigma:
            break
    return sigma, v.detach()


def certify_direction(fn: NetFunction, x: torch.Tensor, v: torch.Tensor,
                      box: Box) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The best secant quotient along v through x (pairs clamped to the box)."""
    scale = max(1.0, float(x.abs().max()))
    best = (0.0, x, x)
    for t in SECANT_STEPS:
        p, q = clamp(x - 0.5 * t * scale * v, box), clamp(x + 0.5 * t * scale * v, box)
        value = certified_quotient(fn, p, q)
        if value > best[0]:
            best = (value, p, q)
    return best


def jacobian_candidate(fn: NetFunction, x: torch.Tensor, box: Box, method: str,
                       v0: torch.Tensor | None = None) -> tuple[Candidate, torch.Tensor]:
    """The certified candidate of the exact network's Jacobian at x, and its direction."""
    smoothing, fn.smoothing = fn.smoothing, None
    try:
        sigma, v = top_direction(fn, x, v0)
        value, p, q = certify_direction(fn, x.detach(), v, box)
    finally:
        fn.smoothing = smoothing
    return Candidate(value, method, p.numpy().copy(), q.numpy().copy(), sigma), v


def jacobian_ascent(fn: NetFunction, x0: torch.Tensor, steps: int, lr: float, box: Box,
                    sharpness: tuple[float, float] = (1.0, 30.0),
                    check_every: int = 10) -> Candidate:
    """Adam ascent of ||J_s(x) v|| for the smoothed network (sharpness annealed up, v
    kept the top singular vector); the exact network is certified along the way."""
    best, v = jacobian_candidate(fn, x0, box, "jacobian-ascent")
    x = x0.detach().clone().requires_grad_(True)
    opt = Adam([x], [lr])
    for k in range(steps):
        fn.smoothing = sharpness[0] * (sharpness[1] / sharpness[0]) ** (k / max(steps - 1, 1))
        try:
            v = _ascent_step(fn, x, v, opt, box)
        finally:
            fn.smoothing = None
        if (k + 1) % check_every == 0 or k + 1 == steps:
            found, _ = jacobian_candidate(fn, x.detach(), box, "jacobian-ascent", v)
            best = found if found.value > best.value else best
    return best


def _ascent_step(fn: NetFunction, x: torch.Tensor, v: torch.Tensor, opt: Adam,
                 box: Box) -> torch.Tensor:
    """One Adam step on ||J_s(x) v||, then one power step for v. J v comes from the
    double-vjp trick (torch.func would import torch._dynamo: seconds)."""
    with torch.enable_grad():
        y = fn(x)
        u = torch.zeros_like(y, requires_grad=True)
        g = _vjp(y, x, u, create_graph=True)
        if not g.requires_grad:
            return v
        jv = _vjp(g, u, v, create_graph=True)
        grad = _vjp(jv.norm(), x, torch.ones(()), allow_unused=False) if jv.requires_grad else None
        w = _vjp(y, x, jv.detach())
    if grad is not None:
        opt.ascend([grad])
    with torch.no_grad():
        x.copy_(clamp(x, box))
    return w / w.norm() if float(w.norm()) > 0 else v


def pairwise_ascent(fn: NetFunction, x0: torch.Tensor, d0: torch.Tensor, steps: int, lr: float,
                    box: Box) -> Candidate:
    """Adam ascent of ||f(x) - f(x + d)|| / ||d|| for the exact network; every iterate
    is a certified candidate."""
    x = x0.detach().clone().requires_grad_(True)
    d = d0.detach().clone().requires_grad_(True)
    d_lr = 0.05 * float(d0.norm()) / math.sqrt(d0.numel())
    opt = Adam([x, d], [lr, d_lr])
    best = Candidate(0.0, "pairwise", x0.numpy().copy(), x0.numpy().copy())
    for _ in range(steps):
        fx, fy = fn(x), fn(x + d)
        value = certified_from(fx.detach(), fy.detach(), x.detach(), (x + d).detach())
        if value > best.value:
            best = Candidate(value, "pairwise", x.detach().numpy().copy(),
                             (x + d).detach().numpy().copy())
        quotient = (fx - fy).norm() / d.norm().clamp_min(1e-300)
        opt.ascend(list(torch.autograd.grad(quotient, [x, d], materialize_grads=True)))
        with torch.no_grad():
            x.copy_(clamp(x, box))
            d.copy_(clamp(x + d, box) - x)
    return best
