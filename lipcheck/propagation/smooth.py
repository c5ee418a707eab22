"""Steps that are not globally Lipschitz, or not piecewise linear, but are on a bounded set.

Lowered only when `build_program(graph, smooth=True)` asks for them (the local estimate
does; the gate's Jacobian hull does not handle them yet and keeps refusing):
- `Product`: MatMul of two dynamic inputs (attention's Q K^T and A V), batched over the
  leading dims (broadcast allowed), each operand of rank >= 2;
- `Softmax` along one axis;
- `Norm`: LayerNormalization (centred) and RMSNormalization over the trailing dims from
  `axis`, with constant scale and bias and eps > 0;
- `Binary`: Add (of two shapes: broadcast), Sub, Mul, Div of two dynamic inputs;
- `Pointwise`: Exp, Tanh, Sigmoid, Erf, Sqrt, Reciprocal, Gelu, Pow(x, 2) of one dynamic
  input.
Every step runs on flat (B, n) float64 tensors like the others in `program`; its ranges
are in `smooth_ranges`, its local Lipschitz factors in `smooth_lipschitz`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lipcheck.graph import Graph, Node, OpKind


@dataclass
class Product:
    """Z = X @ Y over the last two dims; X (.., m, k), Y (.., k, n)."""

    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    nodes: list[str] = field(default_factory=list)
    src: tuple[int, ...] = ()

    def run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = x.reshape(-1, *self.shape_a) @ y.reshape(-1, *self.shape_b)
        return z.reshape(x.shape[0], -1)


@dataclass
class Softmax:
    shape: tuple[int, ...]
    axis: int                     # non-negative, into `shape`
    nodes: list[str] = field(default_factory=list)
    src: tuple[int, ...] = ()

    def run(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.softmax(x.reshape(-1, *self.shape), dim=self.axis + 1)
        return z.reshape(x.shape[0], -1)


@dataclass
class Norm:
    """y = g * c / sqrt(mean(c^2) + eps) + b over groups of the trailing dims from `first`;
    c = x - mean(x) when `centred` (LayerNorm), else c = x (RMSNorm)."""

    shape: tuple[int, ...]
    first: int
    scale: torch.Tensor           # (d,): the group's entries, flattened
    bias: torch.Tensor            # (d,)
    eps: float
    centred: bool
    nodes: list[str] = field(default_factory=list)
    src: tuple[int, ...] = ()

    @property
    def group(self) -> int:
        return math.prod(self.shape[self.first:])

    def grouped(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n) -> (B, groups, d)."""
        return x.reshape(x.shape[0], -1, self.group)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        c = self.grouped(x)
        if self.centred:
            c = c - c.mean(dim=2, keepdim=True)
        y = c / torch.sqrt((c * c).mean(dim=2, keepdim=True) + self.eps)
        return (y * self.scale + self.bias).reshape(x.shape[0], -1)


@dataclass
class Binary:
    """Elementwise a (op) b of two dynamic inputs, broadcast to `shape`: op one of add,
    sub (of different shapes: same-shape Add is the residual step), mul, div."""

    op: str
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    shape: tuple[int, ...]
    nodes: list[str] = field(default_factory=list)
    src: tuple[int, ...] = ()

    def spread(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat (B, n_a), (B, n_b) -> both broadcast to (B, *shape)."""
        b = x.shape[0]
        return (torch.broadcast_to(x.reshape(b, *self.shape_a), (b, *self.shape)),
                torch.broadcast_to(y.reshape(b, *self.shape_b), (b, *self.shape)))

    def run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a, c = self.spread(x, y)
        if self.op == "add":
            out = a + c
        elif self.op == "sub":
            out = a - c
        else:
            out = a * c if self.op == "mul" else a / c
        return out.reshape(x.shape[0], -1)


@dataclass
class Pointwise:
    """An elementwise function of one dynamic input (Exp, Tanh, Sigmoid, Erf, Sqrt,
    Reciprocal, Gelu, Pow with exponent 2): ranges and slopes in `pointwise`."""

    op: OpKind
    approximate: str = "none"      # Gelu's form
    nodes: list[str] = field(default_factory=list)
    src: tuple[int, ...] = ()

    def run(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == OpKind.GELU:
            return torch.nn.functional.gelu(x, approximate=self.approximate)
        if self.op == OpKind.POW:
            return x * x
        fn: Callable[[torch.Tensor], torch.Tensor] = POINTWISE[self.op]
        return fn(x)


POINTWISE: dict[OpKind, Callable[..., torch.Tensor]] = {
    OpKind.EXP: torch.exp, OpKind.TANH: torch.tanh, OpKind.SIGMOID: torch.sigmoid,
    OpKind.ERF: torch.erf, OpKind.SQRT: torch.sqrt, OpKind.RECIPROCAL: torch.reciprocal,
    OpKind.GELU: torch.nn.functional.gelu}
BINARY = {OpKind.ADD: "add", OpKind.SUB: "sub", OpKind.MUL: "mul", OpKind.DIV: "div"}
SMOOTH = (Product, Softmax, Norm, Binary, Pointwise)


def _product(node: Node) -> Product | None:
    a, b = (tuple(s) for s in node.input_shapes[:2])
    if len(a) < 2 or len(b) < 2 or a[-1] != b[-2]:
        return None
    return Product(a, b, [node.name])


def _norm(graph: Graph, node: Node) -> Norm | None:
    shape = tuple(node.input_shapes[0])
    first = int(node.attrs.get("axis", -1)) % len(shape)
    eps = float(node.attrs.get("epsilon", 1e-5))
    d = math.prod(shape[first:])
    scale, bias = graph.constant(node, 1), graph.constant(node, 2)
    if scale is None or eps <= 0 or (len(node.inputs) > 2 and node.inputs[2] and bias is None):
        return None
    try:
        g = torch.broadcast_to(scale.double(), shape[first:]).reshape(d)
        b = (torch.zeros(d, dtype=torch.float64) if bias is None
             else torch.broadcast_to(bias.double(), shape[first:]).reshape(d))
    except RuntimeError:        # a scale that varies over the groups: not handled
        return None
    return Norm(shape, first, g, b, eps, node.op == OpKind.LAYER_NORM, [node.name])


def _binary(node: Node) -> Binary | None:
    a, b = (tuple(s) for s in node.input_shapes[:2])
    try:
        shape = tuple(torch.broadcast_shapes(a, b))
    except RuntimeError:
        return None
    if node.op == OpKind.ADD and a == b:
        return None        # the residual Add step of `program`
    return Binary(BINARY[node.op], a, b, shape, [node.name])


def lower(graph: Graph, node: Node) -> Product | Softmax | Norm | Binary | Pointwise | None:
    """The smooth step of a node, or None when it is not one of the forms above."""
    dynamic = graph.dynamic_inputs(node)
    if node.op == OpKind.MATMUL and dynamic == [0, 1]:
        return _product(node)
    if node.op in BINARY and dynamic == [0, 1]:
        return _binary(node)
    if dynamic != [0]:
        return None
    if node.op in POINTWISE:
        return Pointwise(node.op, str(node.attrs.get("approximate", "none")), [node.name])
    exponent = graph.constant(node, 1) if node.op == OpKind.POW else None
    if exponent is not None and exponent.numel() == 1 and float(exponent) == 2.0:
        return Pointwise(OpKind.POW, nodes=[node.name])
    if node.op == OpKind.SOFTMAX:
        shape = tuple(node.input_shapes[0])
        return Softmax(shape, int(node.attrs.get("axis", -1)) % len(shape), [node.name])
    if node.op in (OpKind.LAYER_NORM, OpKind.RMS_NORM):
        return _norm(graph, node)
    return None
