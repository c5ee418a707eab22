"""Search primitives for certified lower bounds, on batches of points: Jacobians, top
singular directions, secant pairs, and the certified quotient.

Every number returned as `Candidate.value` is a pairwise quotient ||f(p) - f(q)|| /
||p - q|| of the exact network at two points in the search box, computed in float64
one point at a time (the same code path `witness_value` replays) and lowered by a
rounding margin: a certified lower bound of the Lipschitz constant that needs no
differentiability. A Jacobian candidate uses the pair x -/+ (t/2) v with v its top
right singular vector and t tiny, so that the quotient equals ||J(x) v|| wherever f
is differentiable around x, and is still a valid lower bound where it is not.

Batched values (`Pairs.values`) are the same quotients evaluated on a batch: used to
rank candidates only; the best is then certified point by point.

Every autograd call differentiates a scalar (no `grad_outputs`): torch.autograd.grad
with explicit grad_outputs imports torch.fx.experimental.symbolic_shapes (and sympy),
seconds that a short budget cannot afford.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from lipcheck.estimators.lower.cost import Clock
from lipcheck.estimators.lower.netfn import NetFunction

DENSE_OUT = 32          # form J (one batched backward) up to this many outputs
REL_MARGIN = 1e-9       # relative margin on every certified quotient
ROUND_FACTOR = 1e-12    # ... plus this times (|f(p)| + |f(q)|) / |f(p) - f(q)|: cancellation
SECANT_STEPS = (1e-4, 1e-6)
CHUNK_NUMEL = 1 << 23   # float64 values per batched pass, at most (64 MiB of activations)
Box = tuple[float, float] | None


@dataclass
class Candidate:
    value: float                  # certified lower bound
    method: str                   # "jacobian-ascent", "pairwise", "exact-region"
    x: np.ndarray                 # the pair that certifies it
    y: np.ndarray
    jacobian_norm: float | None = None  # ||J(x) v|| (float64, information only)


@dataclass
class Pairs:
    """One candidate pair per row: batched quotient (ranking only), p, q, ||J v||."""

    values: torch.Tensor          # (K,)
    p: torch.Tensor               # (K, n_in)
    q: torch.Tensor
    sigmas: torch.Tensor          # (K,) Jacobian norm estimate (0 for pairwise)

    def improve(self, other: Pairs) -> None:
        """Row-wise best of self and other, in place."""
        better = other.values > self.values
        self.values = torch.where(better, other.values, self.values)
        self.sigmas = torch.where(better, other.sigmas, self.sigmas)
        self.p = torch.where(better[:, None], other.p, self.p)
        self.q = torch.where(better[:, None], other.q, self.q)


def grad(scalar: torch.Tensor, inputs: torch.Tensor, **kw) -> torch.Tensor:
    """d scalar / d inputs (zeros where unused); no grad_outputs (see the module doc)."""
    (g,) = torch.autograd.grad(scalar, inputs, allow_unused=True, **kw)
    return torch.zeros_like(inputs) if g is None else g


def certified_from(fp: torch.Tensor, fq: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> float:
    num, den = float((fp - fq).norm()), float((p - q).norm())
    if den == 0.0 or num == 0.0 or not math.isfinite(num):
        return 0.0
    rel = REL_MARGIN + ROUND_FACTOR * (float(fp.norm()) + float(fq.norm())) / num
    return max(num / den * (1.0 - rel), 0.0)


def quotients(fp: torch.Tensor, fq: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """certified_from for each row (for ranking: rows are evaluated in a batch)."""
    num, den = (fp - fq).norm(dim=1), (p - q).norm(dim=1)
    ok = (den > 0) & (num > 0) & torch.isfinite(num)
    safe = torch.where(ok, num, torch.ones_like(num))
    rel = REL_MARGIN + ROUND_FACTOR * (fp.norm(dim=1) + fq.norm(dim=1)) / safe
    value = safe / torch.where(ok, den, torch.ones_like(den)) * (1.0 - rel)
    return torch.where(ok, value.clamp_min(0.0), torch.zeros_like(value))


def certified_quotient(fn: NetFunction, p: torch.Tensor, q: torch.Tensor) -> float:
    """||f(p) - f(q)|| / ||p - q|| of the exact network, float64, minus the margin."""
    return certified_from(fn.exact(p), fn.exact(q), p, q)


def certify(fn: NetFunction, pairs: Pairs, row: int, method: str) -> Candidate:
    p, q = pairs.p[row].detach(), pairs.q[row].detach()
    return Candidate(certified_quotient(fn, p, q), method, p.numpy().copy(), q.numpy().copy(),
                     float(pairs.sigmas[row]) or None)


def clamp(x: torch.Tensor, box: Box) -> torch.Tensor:
    return x if box is None else x.clamp(box[0], box[1])


def chunks(fn: NetFunction, rows: int, copies: int = 1) -> list[slice]:
    """Row slices small enough for one batched pass (each row run `copies` times)."""
    size = max(1, CHUNK_NUMEL // max(1, copies * fn.row_numel))
    return [slice(i, min(i + size, rows)) for i in range(0, rows, size)]


def jacobians(fn: NetFunction, xs: torch.Tensor) -> torch.Tensor:
    """J(x) for each row of xs: (K, n_out, n_in), from ONE backward pass over n_out
    copies of each row (d/dX of sum_i f_i(copy_i))."""
    k, n = xs.shape[0], fn.n_out
    rep = xs.detach().repeat_interleave(n, dim=0).requires_grad_(True)
    with torch.enable_grad():
        y = fn.batch(rep).reshape(k, n, n)
        trace = torch.diagonal(y, dim1=1, dim2=2).sum()
    if not trace.requires_grad:
        return torch.zeros(k, n, xs.shape[1], dtype=xs.dtype)
    return grad(trace, rep).reshape(k, n, -1)


def top_directions(fn: NetFunction, xs: torch.Tensor, v0: torch.Tensor | None = None,
                   iters: int = 40,
                   clock: Clock | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(||J(x)|| estimates (K,), top right singular vectors (K, n_in)) of fn as it is now
    (smoothed or not): SVD of the dense J up to DENSE_OUT outputs, else power iteration
    (fewer iterations when the next one would end after the clock's deadline)."""
    if fn.n_out > DENSE_OUT:
        return _power(fn, xs, v0, iters, clock)
    sig, vecs = [], []
    for part in chunks(fn, xs.shape[0], fn.n_out):
        jac = jacobians(fn, xs[part])
        bad = ~torch.isfinite(jac).flatten(1).all(dim=1)   # overflow: no witness there
        jac = torch.where(bad[:, None, None], torch.zeros_like(jac), jac)
        _, s, vh = torch.linalg.svd(jac, full_matrices=False)
        sig.append(s[:, 0])
        vecs.append(vh[:, 0])
    return torch.cat(sig), torch.cat(vecs)


def top_direction(fn: NetFunction, x: torch.Tensor, v0: torch.Tensor | None = None,
                  iters: int = 40) -> tuple[float, torch.Tensor]:
    sigmas, vecs = top_directions(fn, x[None], None if v0 is None else v0[None], iters)
    return float(sigmas[0]), vecs[0]


def _power(fn: NetFunction, xs: torch.Tensor, v0: torch.Tensor | None,
           iters: int, clock: Clock | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Power iteration on J^T J for every row at once; J v by the double-vjp trick."""
    x = xs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = fn.batch(x)
        u = torch.zeros_like(y, requires_grad=True)
        g = grad((y * u).sum(), x, create_graph=True)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype) if v0 is None else v0.clone()
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
    sigma = torch.zeros(x.shape[0], dtype=x.dtype)
    if not (y.requires_grad and g.requires_grad):
        return sigma, torch.zeros_like(v)
    for _ in range(iters):
        if clock is not None and not clock.fits(clock.estimate("power", len(xs)) +
                                                clock.estimate("secant", len(xs))):
            break   # the secant pairs and their certification still have to fit
        start = time.perf_counter()
        jv = grad((g * v).sum(), u, retain_graph=True)
        w = grad((y * jv).sum(), x, retain_graph=True)
        previous, sigma = sigma, jv.norm(dim=1)
        norms = w.norm(dim=1, keepdim=True)
        v = torch.where(norms > 0, w / norms.clamp_min(1e-300), v)
        if clock is not None:
            clock.record("power", start, len(xs))
        if bool(((sigma - previous).abs() <= 1e-9 * sigma).all()):
            break
    return sigma.detach(), v.detach()


def secant_pairs(fn: NetFunction, xs: torch.Tensor, vs: torch.Tensor, sigmas: torch.Tensor,
                 box: Box) -> Pairs:
    """The best secant pair x -/+ (t/2) scale v per row over SECANT_STEPS (batched)."""
    scale = xs.abs().amax(dim=1, keepdim=True).clamp_min(1.0)
    best = None
    for t in SECANT_STEPS:
        p, q = clamp(xs - 0.5 * t * scale * vs, box), clamp(xs + 0.5 * t * scale * vs, box)
        found = _pairs_from(fn, p, q, sigmas)
        if best is None:
            best = found
        else:
            best.improve(found)
    assert best is not None, "SECANT_STEPS is not empty"
    return best



def _pairs_from(fn: NetFunction, p: torch.Tensor, q: torch.Tensor, sigmas: torch.Tensor) -> Pairs:
    values = []
    for s in chunks(fn, len(p), 2):
        f = fn.exact_batch(torch.cat([p[s], q[s]]))
        values.append(quotients(f[: s.stop - s.start], f[s.stop - s.start:], p[s], q[s]))
    return Pairs(torch.cat(values), p, q, sigmas.detach().clone())


def jacobian_pairs(fn: NetFunction, xs: torch.Tensor, box: Box, v0: torch.Tensor | None = None,
                   clock: Clock | None = None) -> tuple[Pairs, torch.Tensor]:
    """Secant pairs along the exact network's top directions at each row, and those
    directions."""
    smoothing, fn.smoothing = fn.smoothing, None
    start = time.perf_counter()
    try:
        sigmas, vs = top_directions(fn, xs.detach(), v0, clock=clock)
        return secant_pairs(fn, xs.detach(), vs, sigmas, box), vs
    finally:
        fn.smoothing = smoothing
        if clock is not None:
            clock.record("point", start, len(xs))
