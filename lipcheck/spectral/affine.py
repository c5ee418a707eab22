"""The bound of an affine node: pick a method, compute, label it honestly."""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

from lipcheck.graph import Node, OpKind
from lipcheck.rules.registry import BoundContext, NodeBound
from lipcheck.spectral.operator import (LinearOperator, NormResult, dense_norm, fits_dense,
                                        node_operator, power_norm)

# Certified norm methods for particular ops (FFT, Gram iteration, ...), tried by
# `affine_bound` when the dense Jacobian is too large. Each returns None when it
# does not apply to the node.
Certifier = Callable[[Node, BoundContext, LinearOperator], NormResult | None]
CERTIFIERS: dict[OpKind, list[Certifier]] = {}


def register_certifier(op: OpKind, fn: Certifier) -> Certifier:
    CERTIFIERS.setdefault(op, []).append(fn)
    return fn


def affine_bound(node: Node, ctx: BoundContext) -> NodeBound:
    start = time.perf_counter()
    op = node_operator(node, ctx)
    result = _norm(node, ctx, op)
    bound = NodeBound(value=result.value, method=result.method, certified=result.certified,
                      iterations=result.iterations, converged=result.converged)
    if result.method == "power-iteration":
        bound.estimate = result.value
        if not result.converged:
            bound.warnings.append(("power_not_converged",
                                   f"power iteration stopped after {result.iterations} iterations "
                                   f"without reaching tol={ctx.settings.tol:g}"))
    bound.seconds = time.perf_counter() - start
    return bound


def _norm(node: Node, ctx: BoundContext, op: LinearOperator) -> NormResult:
    method = ctx.settings.layer_method
    s = ctx.settings
    if method == "power":
        return _power(node, ctx, op)
    if method in ("auto", "exact") and fits_dense(op, ctx):
        return dense_norm(op)
    for certifier in CERTIFIERS.get(node.op, []):
        result = certifier(node, ctx, op)
        if result is not None:
            return result
    return _power(node, ctx, op)


def _power(node: Node, ctx: BoundContext, op: LinearOperator) -> NormResult:
    """Power iteration in Settings.dtype (certificates always use float64); float64 again
    when float32 overflows (weights near 1e19 and above)."""
    s = ctx.settings
    working = op if s.dtype == "float64" else node_operator(node, ctx, torch.float32)
    result = power_norm(working, s.max_iter, s.tol, s.seed)
    if working is not op and not math.isfinite(result.value):
        result = power_norm(op, s.max_iter, s.tol, s.seed)
    return result
