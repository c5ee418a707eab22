"""Elementwise activations: the bound is the exact sup |f'(x)| over the real line."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lipcheck.graph import Node, OpKind
from lipcheck.rules.registry import (
    BoundContext,
    NodeBound,
    Rule,
    analytic,
    constant_bound,
    register,
    unary,
    unbounded,
)

FAMILY = "activations"
ROUNDING = 1e-12  # relative margin on constants found by a numerical maximisation


def _golden_max(fn: Callable[[float], float], lo: float, hi: float, steps: int = 200) -> float:
    """Maximum of a unimodal function on [lo, hi] by golden-section search."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    for _ in range(steps):
        if fn(c) > fn(d):
            b, d = d, c
            c = b - ratio * (b - a)
        else:
            a, c = c, d
            d = a + ratio * (b - a)
    return max(fn(a), fn(b), fn((a + b) / 2)) * (1 + ROUNDING)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _silu_slope(x: float) -> float:
    s = _sigmoid(x)
    return s * (1 + x * (1 - s))


def _gelu_tanh_slope(x: float) -> float:
    c, a = math.sqrt(2 / math.pi), 0.044715
    t = math.tanh(c * (x + a * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * a * x * x)


def _mish_slope(x: float) -> float:
    t = math.tanh(math.log1p(math.exp(x)))
    return t + x * (1 - t * t) * _sigmoid(x)


# GELU'(x) = Phi(x) + x phi(x) peaks at x = sqrt(2): Phi(sqrt 2) + sqrt(2) phi(sqrt 2).
GELU_CONSTANT = (0.5 * (1 + math.erf(1.0)) + math.exp(-1.0) / math.sqrt(math.pi)) * (1 + ROUNDING)
GELU_TANH_CONSTANT = _golden_max(_gelu_tanh_slope, 0.5, 3.0)
SILU_CONSTANT = _golden_max(_silu_slope, 1.0, 4.0)
MISH_CONSTANT = _golden_max(_mish_slope, 0.5, 3.0)
ERF_CONSTANT = 2 / math.sqrt(math.pi) * (1 + ROUNDING)
SELU_ALPHA, SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875


def _simple(op: OpKind, fn: Callable[[torch.Tensor], torch.Tensor], value: float,
            summary: str) -> None:
    register(Rule(op, FAMILY, unary(fn), constant_bound(value, summary), summary))


def _attr(node: Node, name: str, default: float) -> float:
    return float(node.attrs.get(name, default))


_simple(OpKind.RELU, torch.relu, 1.0, "1")
_simple(OpKind.SIGMOID, torch.sigmoid, 0.25, "1/4")
_simple(OpKind.TANH, torch.tanh, 1.0, "1")
_simple(OpKind.SOFTSIGN, F.softsign, 1.0, "1 (f' = 1/(1+|x|)^2)")
_simple(OpKind.ABS, torch.abs, 1.0, "1")
_simple(OpKind.NEG, torch.neg, 1.0, "1")
_simple(OpKind.SILU, F.silu, SILU_CONSTANT, f"sup|f'| = {SILU_CONSTANT:.6f}")
_simple(OpKind.MISH, F.mish, MISH_CONSTANT, f"sup|f'| = {MISH_CONSTANT:.6f}")
_simple(OpKind.ERF, torch.erf, ERF_CONSTANT, "2/sqrt(pi)")
_simple(OpKind.HARD_SWISH, F.hardswish, 1.5, "3/2 (slope (2x+3)/6 at x=3)")


def _leaky_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [F.leaky_relu(inputs[0], _attr(node, "alpha", 0.01))]


def _leaky_bound(node: Node, ctx: BoundContext) -> NodeBound:
    return analytic(max(1.0, abs(_attr(node, "alpha", 0.01))))


register(Rule(OpKind.LEAKY_RELU, FAMILY, _leaky_run, _leaky_bound, "max(1, |alpha|)"))


def _prelu_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x, slope = inputs
    return [torch.where(x >= 0, x, x * slope)]


def _prelu_bound(node: Node, ctx: BoundContext) -> NodeBound:
    slope = ctx.const(node, 1)
    if slope is None:
        return unbounded("PRelu with a data-dependent slope is a product of two signals")
    return analytic(max(1.0, float(slope.abs().max())) if slope.numel() else 1.0)


register(Rule(OpKind.PRELU, FAMILY, _prelu_run, _prelu_bound, "max(1, max|slope|)"))


def _elu_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x, alpha = inputs[0], _attr(node, "alpha", 1.0)
    return [torch.where(x > 0, x, alpha * torch.expm1(x))]


register(Rule(OpKind.ELU, FAMILY, _elu_run,
              lambda node, ctx: analytic(max(1.0, abs(_attr(node, "alpha", 1.0)))),
              "max(1, |alpha|)"))


def _selu_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x = inputs[0]
    alpha, gamma = _attr(node, "alpha", SELU_ALPHA), _attr(node, "gamma", SELU_GAMMA)
    return [gamma * torch.where(x > 0, x, alpha * torch.expm1(x))]


def _selu_bound(node: Node, ctx: BoundContext) -> NodeBound:
    alpha, gamma = _attr(node, "alpha", SELU_ALPHA), _attr(node, "gamma", SELU_GAMMA)
    return analytic(abs(gamma) * max(1.0, abs(alpha)))


register(Rule(OpKind.SELU, FAMILY, _selu_run, _selu_bound, "|gamma| max(1, |alpha|)"))


def _celu_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [F.celu(inputs[0], _attr(node, "alpha", 1.0))]


register(Rule(OpKind.CELU, FAMILY, _celu_run, constant_bound(1.0, "1"),
              "1 (f' = exp(x/alpha) <= 1 for x < 0)"))


def _hard_sigmoid_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    alpha, beta = _attr(node, "alpha", 0.2), _attr(node, "beta", 0.5)
    return [torch.clamp(alpha * inputs[0] + beta, 0.0, 1.0)]


register(Rule(OpKind.HARD_SIGMOID, FAMILY, _hard_sigmoid_run,
              lambda node, ctx: analytic(abs(_attr(node, "alpha", 0.2))), "|alpha|"))


def _softplus_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    beta = _attr(node, "beta", 1.0)
    return [F.softplus(inputs[0], beta=beta, threshold=float(node.attrs.get("threshold", 20.0)))]


register(Rule(OpKind.SOFTPLUS, FAMILY, _softplus_run, constant_bound(1.0, "1"),
              "1 (f' = sigmoid(beta x))"))


def _gelu_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [F.gelu(inputs[0], approximate=str(node.attrs.get("approximate", "none")))]


def _gelu_bound(node: Node, ctx: BoundContext) -> NodeBound:
    tanh = node.attrs.get("approximate", "none") == "tanh"
    return analytic(GELU_TANH_CONSTANT if tanh else GELU_CONSTANT)


register(Rule(OpKind.GELU, FAMILY, _gelu_run, _gelu_bound,
              f"sup|f'| = {GELU_CONSTANT:.6f} (tanh form {GELU_TANH_CONSTANT:.6f})"))


def _clip_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    lo, hi = node.attrs.get("min"), node.attrs.get("max")
    x = inputs[0]
    if lo is not None:
        x = torch.clamp(x, min=lo)
    if hi is not None:
        x = torch.clamp(x, max=hi)
    return [x]


register(Rule(OpKind.CLIP, FAMILY, _clip_run, constant_bound(1.0, "1"), "1 (Relu6 too)"))
