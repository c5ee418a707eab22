"""Fuse decomposed activations back into one IR node, so their bounds stay finite
and tight: GELU's Erf form, x*Sigmoid(x) (SiLU), x*HardSigmoid(x) (HardSwish),
x*Tanh(Softplus(x)) (Mish). A pattern is fused only when its intermediate values
have no other consumer and are not graph outputs."""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from lipcheck.graph import Node, OpKind

SQRT2 = math.sqrt(2.0)


class _View:
    def __init__(self, nodes: list[Node], constants: Mapping[str, torch.Tensor],
                 outputs: list[str]) -> None:
        self.constants = constants
        self.producer = {o: n for n in nodes for o in n.outputs}
        self.consumers: dict[str, list[Node]] = {}
        for n in nodes:
            for v in n.inputs:
                self.consumers.setdefault(v, []).append(n)
        self.outputs = set(outputs)

    def sole_consumer(self, node: Node, op: OpKind) -> Node | None:
        value = node.outputs[0]
        users = self.consumers.get(value, [])
        if value in self.outputs or len(users) != 1 or users[0].op != op:
            return None
        return users[0]

    def is_scalar(self, value: str, target: float) -> bool:
        t = self.constants.get(value)
        if t is None or t.numel() == 0 or not t.is_floating_point():
            return False
        return bool(torch.allclose(t.double(), torch.full_like(t.double(), target), rtol=1e-5))

    def other(self, node: Node, value: str) -> str | None:
        """The other operand of a binary node that reads `value`."""
        if len(node.inputs) != 2 or value not in node.inputs:
            return None
        return node.inputs[1] if node.inputs[0] == value else node.inputs[0]


def _gelu_scale(v: _View, pre: Node | None) -> str | None:
    """x when `pre` computes x / sqrt(2) (as Div or as Mul)."""
    if pre is None or len(pre.inputs) != 2:
        return None
    if pre.op == OpKind.DIV and v.is_scalar(pre.inputs[1], SQRT2):
        return pre.inputs[0]
    if pre.op == OpKind.MUL:
        for a, b in (pre.inputs, reversed(pre.inputs)):
            if v.is_scalar(b, 1 / SQRT2) and a not in v.constants:
                return a
    return None


def _match_gelu(v: _View, erf: Node) -> tuple[list[Node], str] | None:
    pre = v.producer.get(erf.inputs[0])
    x = _gelu_scale(v, pre)
    if pre is None or not x or not v.sole_consumer(pre, OpKind.ERF):
        return None
    add = v.sole_consumer(erf, OpKind.ADD)
    if add is None or not v.is_scalar(v.other(add, erf.outputs[0]) or "", 1.0):
        return None
    m1 = v.sole_consumer(add, OpKind.MUL)
    other = v.other(m1, add.outputs[0]) if m1 else None
    if m1 is None or other is None:
        return None
    if other == x or v.is_scalar(other, 0.5):
        m2 = v.sole_consumer(m1, OpKind.MUL)
        want = 0.5 if other == x else None
        last = v.other(m2, m1.outputs[0]) if m2 else None
        if m2 is not None and last is not None and \
                (v.is_scalar(last, 0.5) if want else last == x):
            return [pre, erf, add, m1, m2], x
        return None
    half = v.producer.get(other)
    if half is not None and half.op == OpKind.MUL and v.sole_consumer(half, OpKind.MUL) is m1 \
            and (scale := v.other(half, x)) is not None and v.is_scalar(scale, 0.5):
        return [half, pre, erf, add, m1], x
    return None


def _match_gated(v: _View, head: Node, chain: list[OpKind]) -> tuple[list[Node], str] | None:
    """head(x) -> ... -> Mul(x, .)"""
    x, nodes, current = head.inputs[0], [head], head
    for op in chain:
        consumer = v.sole_consumer(current, op)
        if consumer is None:
            return None
        nodes.append(consumer)
        current = consumer
    return (nodes, x) if v.other(current, nodes[-2].outputs[0]) == x else None


def _match(v: _View, node: Node) -> tuple[OpKind, list[Node], str] | None:
    found = None
    if node.op == OpKind.ERF:
        found = (OpKind.GELU, _match_gelu(v, node))
    elif node.op == OpKind.SIGMOID:
        found = (OpKind.SILU, _match_gated(v, node, [OpKind.MUL]))
    elif node.op == OpKind.HARD_SIGMOID and math.isclose(node.attrs.get("alpha", 0.2), 1 / 6,
                                                         rel_tol=1e-5) \
            and math.isclose(node.attrs.get("beta", 0.5), 0.5, rel_tol=1e-6):
        found = (OpKind.HARD_SWISH, _match_gated(v, node, [OpKind.MUL]))
    elif node.op == OpKind.SOFTPLUS:
        found = (OpKind.MISH, _match_gated(v, node, [OpKind.TANH, OpKind.MUL]))
    if found is None or found[1] is None:
        return None
    return found[0], found[1][0], found[1][1]


def _fused_node(op: OpKind, last: Node, matched: list[Node], x: str) -> Node:
    shape = next(n.input_shapes[n.inputs.index(x)] for n in matched if x in n.inputs)
    return Node(last.name, op, [x], [last.outputs[0]], {}, f"fused {op.value}",
                [tuple(shape)], list(last.output_shapes))


def fuse_patterns(nodes: list[Node], constants: Mapping[str, torch.Tensor],
                  outputs: list[str]) -> list[Node]:
    nodes = list(nodes)
    while True:
        v = _View(nodes, constants, outputs)
        match = next((m for m in (_match(v, n) for n in nodes) if m), None)
        if match is None:
            return nodes
        op, matched, x = match
        order = {id(n): i for i, n in enumerate(nodes)}
        last = max(matched, key=lambda n: order[id(n)])
        fused = _fused_node(op, last, matched, x)
        drop = {id(n) for n in matched}
        nodes = [fused if n is last else n for n in nodes if n is last or id(n) not in drop]
