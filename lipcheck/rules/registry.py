"""The rule registry: for each IR op, how to run it and how to bound it.

A rule has two small functions. `run(node, inputs)` evaluates the op with torch on
a list of input tensors (constants included, in ONNX order) and returns the list of
outputs. `bound(node, ctx)` returns a `NodeBound`: the node's Lipschitz constant
with respect to its dynamic inputs (L2 norms), how it was obtained and whether it
is certified (a proven upper bound) or an estimate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

import torch

from lipcheck.graph import Graph, Node, OpKind
from lipcheck.settings import Settings


class Merge(str, Enum):
    """How a node combines the Lipschitz constants L_i of its dynamic inputs."""

    SINGLE = "single"  # one dynamic input: L_out = c * L_in
    SUM = "sum"        # L_out = c * sum(L_i)          (Add, Sub, Sum)
    RSS = "rss"        # L_out = c * sqrt(sum(L_i^2))  (Concat, elementwise Max/Min)


class Method(str, Enum):
    ANALYTIC = "analytic"
    EXACT_SVD = "exact-svd"
    POWER = "power-iteration"
    FFT = "fft"
    GRAM = "gram"
    UNBOUNDED = "unbounded"
    CONSTANT = "constant"


@dataclass
class NodeBound:
    value: float
    method: str
    certified: bool
    merge: Merge = Merge.SINGLE
    iterations: int | None = None
    converged: bool | None = None
    estimate: float | None = None  # a lower estimate (power iteration) beside a certified value
    detail: str = ""
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (code, message)
    seconds: float = 0.0

    @property
    def finite(self) -> bool:
        return math.isfinite(self.value)


@dataclass
class BoundContext:
    graph: Graph
    settings: Settings

    def const(self, node: Node, position: int) -> torch.Tensor | None:
        return self.graph.constant(node, position)

    def dynamic(self, node: Node) -> list[int]:
        return self.graph.dynamic_inputs(node)


RunFn = Callable[[Node, list[torch.Tensor]], list[torch.Tensor]]
BoundFn = Callable[[Node, BoundContext], NodeBound]


@dataclass(frozen=True)
class Rule:
    op: OpKind
    family: str
    run: RunFn
    bound: BoundFn
    summary: str          # the bound in words, for docs/operators.md
    affine: bool = False  # affine in its dynamic input: the operator norm of the linear part


RULES: dict[OpKind, Rule] = {}


def register(rule: Rule) -> Rule:
    if rule.op in RULES:
        raise ValueError(f"a rule for {rule.op.value} is already registered")
    RULES[rule.op] = rule
    return rule


def get_rule(op: OpKind) -> Rule:
    try:
        return RULES[op]
    except KeyError:
        raise NotImplementedError(f"no Lipschitz rule registered for {op.value}") from None


def analytic(value: float, merge: Merge = Merge.SINGLE, detail: str = "") -> NodeBound:
    return NodeBound(value=float(value), method=Method.ANALYTIC.value, certified=True,
                     merge=merge, detail=detail)


def unbounded(reason: str) -> NodeBound:
    return NodeBound(value=math.inf, method=Method.UNBOUNDED.value, certified=True,
                     detail=reason, warnings=[("unbounded_op", reason)])


def constant_bound(value: float, summary: str) -> BoundFn:
    """A bound function that returns the same analytic constant for every node."""
    def bound(node: Node, ctx: BoundContext) -> NodeBound:
        return analytic(value, detail=summary)
    return bound


def unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> RunFn:
    def run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [fn(inputs[0])]
    return run
