"""Fuse written-out normalisations back into one IR node (both front ends), so that
their exact constant applies instead of an unbounded Pow/Sqrt/Div:

  LayerNorm:  d = x - ReduceMean(x); d / Sqrt(ReduceMean(d^2) + eps)
  RMSNorm:    x / Sqrt(ReduceMean(x^2) + eps)   or   x * Reciprocal(Sqrt(...))

over trailing axes (keepdims), where the square is Pow(., 2) or Mul(a, a) and eps is a
scalar constant. A following Mul/Add by the affine weights stays as its own node. A
pattern fuses only when its intermediate values have no other consumer and are not
graph outputs.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from lipcheck.graph import Node, OpKind

AddConstant = Callable[[str, torch.Tensor], str]


class _View:
    def __init__(self, nodes: list[Node], constants: Mapping[str, torch.Tensor],
                 outputs: list[str]) -> None:
        self.constants = constants
        self.producer = {o: n for n in nodes for o in n.outputs}
        self.users: dict[str, list[Node]] = {}
        for n in nodes:
            for v in dict.fromkeys(n.inputs):  # a node reading a value twice counts once
                self.users.setdefault(v, []).append(n)
        self.outputs = set(outputs)

    def only_user(self, node: Node, op: OpKind) -> Node | None:
        value = node.outputs[0]
        users = self.users.get(value, [])
        ok = value not in self.outputs and len(users) == 1 and users[0].op == op
        return users[0] if ok else None

    def scalar(self, value: str) -> float | None:
        t = self.constants.get(value)
        return float(t) if t is not None and t.numel() == 1 and t.is_floating_point() else None


def _trailing_first_axis(node: Node, rank: int) -> int | None:
    """The first reduced axis when a keepdims ReduceMean reduces the trailing axes."""
    if node.op != OpKind.REDUCE_MEAN or not node.attrs.get("keepdims", 1):
        return None
    axes = sorted(int(a) % rank for a in (node.attrs.get("axes") or []))
    if not axes or axes != list(range(axes[0], rank)):
        return None
    return axes[0]


def _squares(v: _View, node: Node, value: str) -> bool:
    if node.op == OpKind.MUL:
        return node.inputs == [value, value]
    return node.op == OpKind.POW and node.inputs[0] == value and v.scalar(node.inputs[1]) == 2.0


def _root_of_mean_square(v: _View, square: Node, first: int, rank: int) -> tuple[Node, float,
                                                                               list[Node]] | None:
    """square -> ReduceMean -> Add eps -> Sqrt: (the Sqrt, eps, the nodes)."""
    mean = v.only_user(square, OpKind.REDUCE_MEAN)
    if mean is None or _trailing_first_axis(mean, rank) != first:
        return None
    add = v.only_user(mean, OpKind.ADD)
    if add is None or len(add.inputs) != 2:
        return None
    eps = v.scalar(add.inputs[1] if add.inputs[0] == mean.outputs[0] else add.inputs[0])
    root = v.only_user(add, OpKind.SQRT) if eps is not None else None
    return (root, eps, [square, mean, add, root]) if root is not None and eps is not None \
        else None


def _divides(v: _View, root: Node, numerator: str) -> tuple[Node, list[Node]] | None:
    """numerator / root, or numerator * Reciprocal(root): (the last node, the nodes)."""
    div = v.only_user(root, OpKind.DIV)
    if div is not None:
        return (div, [div]) if div.inputs == [numerator, root.outputs[0]] else None
    inverse = v.only_user(root, OpKind.RECIPROCAL)
    if inverse is None:
        return None
    mul = v.only_user(inverse, OpKind.MUL)
    if mul is not None and sorted(mul.inputs) == sorted([numerator, inverse.outputs[0]]):
        return mul, [inverse, mul]
    return None


def _match_layer_norm(v: _View, sub: Node, rank: int):
    mean = v.producer.get(sub.inputs[1]) if len(sub.inputs) == 2 else None
    if mean is None or mean.inputs[0] != sub.inputs[0] or v.only_user(mean, OpKind.SUB) is not sub:
        return None
    first = _trailing_first_axis(mean, rank)
    users = v.users.get(sub.outputs[0], [])
    squares = [u for u in users if _squares(v, u, sub.outputs[0])]
    if first is None or len(users) != 2 or len(squares) != 1 or sub.outputs[0] in v.outputs:
        return None
    found = _root_of_mean_square(v, squares[0], first, rank)
    tail = _divides(v, found[0], sub.outputs[0]) if found else None
    if found is None or tail is None:
        return None
    return OpKind.LAYER_NORM, sub.inputs[0], first, found[1], [mean, sub, *found[2], *tail[1]]


def _match_rms_norm(v: _View, square: Node, rank: int):
    x = square.inputs[0]
    mean = v.only_user(square, OpKind.REDUCE_MEAN)
    first = _trailing_first_axis(mean, rank) if mean is not None else None
    found = _root_of_mean_square(v, square, first, rank) if first is not None else None
    tail = _divides(v, found[0], x) if found else None
    if found is None or tail is None:
        return None
    return OpKind.RMS_NORM, x, first, found[1], [*found[2], *tail[1]]


def _match(v: _View, node: Node, shapes: Mapping[str, tuple[int, ...]]):
    rank = len(shapes.get(node.inputs[0], ())) if node.inputs else 0
    if rank == 0:
        return None
    if node.op == OpKind.SUB:
        return _match_layer_norm(v, node, rank)
    if _squares(v, node, node.inputs[0]):
        return _match_rms_norm(v, node, rank)
    return None


def fuse_normalisations(nodes: list[Node], constants: Mapping[str, torch.Tensor],
                        outputs: list[str], shapes: Mapping[str, tuple[int, ...]],
                        add_constant: AddConstant) -> list[Node]:
    """`shapes`: the shape of every dynamic value (graph inputs and node outputs)."""
    nodes = list(nodes)
    while True:
        v = _View(nodes, constants, outputs)
        match = next((m for m in (_match(v, n, shapes) for n in nodes) if m), None)
        if match is None:
            return nodes
        op, x, first, eps, matched = match
        last = matched[-1]
        shape = tuple(shapes[x])
        ones = add_constant(f"{last.name}.scale", torch.ones(shape[first:]))
        fused = Node(last.name, op, [x, ones], [last.outputs[0]],
                     {"axis": first, "epsilon": eps}, f"fused {op.value}",
                     [shape, shape[first:]] if last.output_shapes else [],
                     list(last.output_shapes))
        drop = {id(n) for n in matched}
        nodes = [fused if n is last else n for n in nodes if n is last or id(n) not in drop]
