"""The bound of an affine node: pick a method, compute, label it honestly.

Methods (Settings.layer_method): "exact" (dense Jacobian SVD; UserError when the operator
is too large for it), "fft" / "gram" (the op's certifier: for Conv and ConvTranspose the
FFT block bound with a Cholesky certificate, or with Gram iteration), "power" (power
iteration: an estimate, not certified), "auto" (exact when the dense SVD fits and its
predicted time is within Settings.layer_budget; else the op's certifier; else power
iteration). Beside every certified value that is not exact, a few warm-started Lanczos
steps give the lower estimate (NodeBound.estimate).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from lipcheck.bounds import BoundContext, NodeBound
from lipcheck.errors import UserError
from lipcheck.graph import Node, OpKind
from lipcheck.spectral import layer_clock
from lipcheck.spectral.conv_norm import conv_certifier, is_pointwise
from lipcheck.spectral.operator import (
    DENSE_SECONDS_PER_FLOP,
    LinearOperator,
    NormResult,
    apply_with_adjoint,
    bounded_matrix_norm,
    dense_jacobian,
    fits_dense,
    lanczos_estimate,
    matrix_norm,
    node_operator,
    power_norm,
)

# Certified norm methods for particular ops (FFT, Gram iteration, ...), tried by
# `affine_bound` when the dense Jacobian is too large. Each returns None when it
# does not apply to the node. A result may carry `detail`, `start` (a warm start for the
# estimate) and `start_on_output` (the start lives on the output space).
Certifier = Callable[[Node, BoundContext, LinearOperator], NormResult | None]
CERTIFIERS: dict[OpKind, list[Certifier]] = {}
# Lanczos steps, warm-started; Settings.extra["estimate_iters"] overrides (0: none)
ESTIMATE_ITERS = 4


def register_certifier(op: OpKind, fn: Certifier) -> Certifier:
    CERTIFIERS.setdefault(op, []).append(fn)
    return fn


register_certifier(OpKind.CONV, conv_certifier)
register_certifier(OpKind.CONV_TRANSPOSE, conv_certifier)


def affine_bound(node: Node, ctx: BoundContext) -> NodeBound:
    start = time.perf_counter()
    op = node_operator(node, ctx)  # one forward pass: what a Lanczos step costs, about 4x
    step_s = 4 * (time.perf_counter() - start)
    result = _norm(node, ctx, op)
    bound = NodeBound(value=result.value, method=result.method, certified=result.certified,
                      iterations=result.iterations, converged=result.converged,
                      detail=getattr(result, "detail", ""))
    if result.method == "power-iteration":
        bound.estimate = result.value
        if not result.converged:
            bound.warnings.append(("power_not_converged",
                                   f"power iteration stopped after {result.iterations} iterations "
                                   f"without reaching tol={ctx.settings.tol:g}"))
    elif result.method in ("exact-svd", "exact-gram"):  # exact up to a 1e-6 margin: no gap to show
        bound.estimate = result.value
    else:
        bound.estimate = _estimate(node, ctx, op, result, step_s)
    bound.seconds = time.perf_counter() - start
    return bound


def _norm(node: Node, ctx: BoundContext, op: LinearOperator) -> NormResult:
    method = ctx.settings.layer_method
    if method == "power":
        return _power(node, ctx, op)
    if (method == "exact" and fits_dense(op, ctx)) \
            or (method == "auto" and _prefer_dense(node, op, ctx)):
        dense = _dense(node, op)
        if dense is not None:
            return dense
    elif method == "exact":
        raise UserError(f"node {node.name!r} ({node.op.value}): --layer-method exact needs a dense "
                        f"{op.n_out}x{op.n_in} Jacobian, above the limits (exact_max_dim="
                        f"{ctx.settings.exact_max_dim}); use auto, fft or gram")
    for certifier in CERTIFIERS.get(node.op, []):
        result = certifier(node, ctx, op)
        if result is not None:
            return result
    return _power(node, ctx, op)


def _dense(node: Node, op: LinearOperator) -> NormResult | None:
    """The dense Jacobian's certified norm; None when --layer-budget ran out on the way and
    the op has a certifier (which `_norm` tries next). Without one: the one-pass bound of
    the Jacobian when it was formed, else power iteration (an estimate)."""
    try:
        jacobian = dense_jacobian(op)
        if node.op in CERTIFIERS:
            return NormResult(matrix_norm(jacobian), True, "exact-svd")
    except layer_clock.LayerBudgetSpent as exc:
        layer_clock.note_cut(exc.what)
        return None
    return bounded_matrix_norm(jacobian)


# `auto` takes the tightest certified method that fits Settings.layer_budget: the dense
# Jacobian SVD (exact) when it fits the dense limits and its predicted time is within the
# budget, else the op's certifier. Time model (one thread, measured on 3x3 convs:
# 2.2 s at 2048 x 2048, 15 s at 4096 x 4096): DENSE_SECONDS_PER_FLOP * small^2 * large.
DENSE_CHEAP_ENTRIES = 2**20


def dense_seconds(op: LinearOperator) -> float:
    small, large = sorted((op.n_in, op.n_out))
    return DENSE_SECONDS_PER_FLOP * small * small * large


def _prefer_dense(node: Node, op: LinearOperator, ctx: BoundContext) -> bool:
    if not fits_dense(op, ctx) or is_pointwise(node, ctx):
        return False
    if node.op not in CERTIFIERS or op.n_in * op.n_out <= DENSE_CHEAP_ENTRIES:
        return True
    return dense_seconds(op) <= ctx.settings.layer_budget


def _power(node: Node, ctx: BoundContext, op: LinearOperator) -> NormResult:
    """Power iteration in Settings.dtype (certificates always use float64); float64 again
    when float32 overflows (weights near 1e19 and above)."""
    s = ctx.settings
    working = op if s.dtype == "float64" else node_operator(node, ctx, torch.float32)
    result = power_norm(working, s.max_iter, s.tol, s.seed)
    if working is not op and not math.isfinite(result.value):
        result = power_norm(op, s.max_iter, s.tol, s.seed)
    return result


def _estimate(node: Node, ctx: BoundContext, op: LinearOperator, result: NormResult,
              step_s: float = 0.0) -> float | None:
    """Lanczos steps while they fit --layer-budget (`step_s`: a step's predicted time)."""
    iters = int(ctx.settings.extra.get("estimate_iters", ESTIMATE_ITERS))
    if iters <= 0 or op.n_in == 0 or op.n_out == 0 or not layer_clock.has(2 * step_s):
        return None
    working = op if ctx.settings.dtype == "float64" else node_operator(node, ctx, torch.float32)
    v = _start(working, result, ctx.settings.seed)
    sigma = lanczos_estimate(working, v, iters)
    return min(sigma, result.value) if math.isfinite(sigma) else None


def _start(op: LinearOperator, result: NormResult, seed: int) -> torch.Tensor:
    start = getattr(result, "start", None)
    if start is None or start.numel() == 0:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(op.in_shape, generator=gen, dtype=torch.float64).to(op.device, op.dtype)
    if getattr(result, "start_on_output", False):
        u = _fit(start, op.out_shape[1:]).reshape(op.out_shape).to(op.device, op.dtype)
        zero = torch.zeros(op.in_shape, dtype=op.dtype, device=op.device)
        return apply_with_adjoint(op, zero)[1](u)
    return _fit(start, op.in_shape[1:]).reshape(op.in_shape).to(op.device, op.dtype)


def _fit(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad or crop x (channels, spatial...) to `shape`."""
    out = torch.zeros(shape, dtype=x.dtype)
    index = tuple(slice(0, min(a, b)) for a, b in zip(x.shape, shape, strict=True))
    out[index] = x[index]
    return out
