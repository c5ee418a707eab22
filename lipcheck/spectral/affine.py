"""The bound of an affine node: pick a method, compute, label it honestly."""
from __future__ import annotations

import time
from typing import Callable

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
        return power_norm(op, s.max_iter, s.tol, s.seed)
    if method in ("auto", "exact") and fits_dense(op, ctx):
        return dense_norm(op)
    for certifier in CERTIFIERS.get(node.op, []):
        result = certifier(node, ctx, op)
        if result is not None:
            return result
    return power_norm(op, s.max_iter, s.tol, s.seed)
