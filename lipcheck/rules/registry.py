"""The rule registry: for each IR op, how to run it and how to bound it.

A rule has two small functions. `run(node, inputs)` evaluates the op with torch on
a list of input tensors (constants included, in ONNX order; an absent optional input is
None, although `RunFn` says Tensor: the rules with optional inputs check) and returns the list
of outputs. `bound(node, ctx)` returns a `NodeBound`: the node's Lipschitz constant
with respect to its dynamic inputs (L2 norms), how it was obtained and whether it
is certified (a proven upper bound) or an estimate.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lipcheck.bounds import BoundContext, Merge, Method, NodeBound, analytic, unbounded  # noqa: F401 (re-exported)
from lipcheck.errors import GraphError
from lipcheck.graph import Node, OpKind

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
    derivation: str = ""  # the proof of the bound, for docs/operators.md (optional)


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


def constant_bound(value: float, summary: str) -> BoundFn:
    """A bound function that returns the same analytic constant for every node."""
    def bound(node: Node, ctx: BoundContext) -> NodeBound:
        return analytic(value, detail=summary)
    return bound


def constant_input(node: Node, ctx: BoundContext, position: int) -> torch.Tensor:
    """The input at `position`, which the rule needs to be a constant (GraphError if not)."""
    tensor = ctx.const(node, position)
    if tensor is None:
        raise GraphError(f"node {node.name!r} ({node.op.value}): input {position} must be a "
                         "constant")
    return tensor


def unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> RunFn:
    def run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [fn(inputs[0])]
    return run
