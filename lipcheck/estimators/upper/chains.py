"""Maximal chains linear -> activation -> linear -> ... in the graph.

A chain is a path of single-input nodes where every inner value has exactly one
consumer and is not a graph output, made of affine nodes (Gemm, MatMul with a
constant operand, Conv, BatchNormalization, ..., and shape-only ops such as Flatten),
and elementwise activations whose difference quotients lie in a known interval
[lo, hi] (ReLU [0, 1], LeakyReLU [alpha, 1], Sigmoid [0, 1/4], ...). Consecutive
affine nodes form one linear part; leading and trailing activations stay outside.
Biases are ignored: the Lipschitz constant depends only on the linear parts.

For such a chain f(u) - f(v) = M_k D_{k-1} ... D_1 M_1 (u - v) with D_i diagonal,
entries in [lo_i, hi_i] (mean value theorem per coordinate), which is what SeqLip and
the SDP bounds bound.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from lipcheck.graph import Graph, Node, OpKind
from lipcheck.rules import BoundContext, NodeBound, get_rule
from lipcheck.settings import Settings
from lipcheck.spectral.operator import LinearOperator, dense_jacobian, node_operator

SHAPE_ONLY = {OpKind.FLATTEN, OpKind.RESHAPE, OpKind.IDENTITY, OpKind.DROPOUT,
              OpKind.SQUEEZE, OpKind.UNSQUEEZE, OpKind.TRANSPOSE}


def _attr(node: Node, name: str, default: float) -> float:
    return float(node.attrs.get(name, default))


def _hull(*values: float) -> tuple[float, float]:
    return min(values), max(values)


def _prelu(node: Node, graph: Graph) -> tuple[float, float] | None:
    slope = graph.constant(node, 1)
    if slope is None or slope.numel() == 0:
        return None
    return _hull(1.0, float(slope.min()), float(slope.max()))


SLOPES: dict[OpKind, Callable[[Node, Graph], tuple[float, float] | None]] = {
    OpKind.RELU: lambda n, g: (0.0, 1.0),
    OpKind.LEAKY_RELU: lambda n, g: _hull(1.0, _attr(n, "alpha", 0.01)),
    OpKind.PRELU: _prelu,
    OpKind.ELU: lambda n, g: _hull(0.0, 1.0, _attr(n, "alpha", 1.0)),
    OpKind.CELU: lambda n, g: (0.0, 1.0),
    OpKind.SELU: lambda n, g: _hull(0.0, _attr(n, "gamma", 1.0507009873554805)
                                    * max(1.0, _attr(n, "alpha", 1.6732632423543772))),
    OpKind.SIGMOID: lambda n, g: (0.0, 0.25),
    OpKind.HARD_SIGMOID: lambda n, g: _hull(0.0, _attr(n, "alpha", 0.2)),
    OpKind.TANH: lambda n, g: (0.0, 1.0),
    OpKind.SOFTPLUS: lambda n, g: (0.0, 1.0),
    OpKind.SOFTSIGN: lambda n, g: (0.0, 1.0),
    OpKind.CLIP: lambda n, g: (0.0, 1.0),
    OpKind.ABS: lambda n, g: (-1.0, 1.0),
    OpKind.NEG: lambda n, g: (-1.0, -1.0),
}


@dataclass
class LinearPart:
    nodes: list[Node]
    operator: LinearOperator

    @property
    def shape(self) -> tuple[int, int]:
        return self.operator.n_out, self.operator.n_in

    def fits_dense(self, settings: Settings) -> bool:
        n_out, n_in = self.shape
        return (min(n_in, n_out) <= settings.exact_max_dim
                and n_in * n_out <= settings.exact_max_entries)

    def matrix(self) -> np.ndarray:
        """The dense (n_out, n_in) float64 matrix of the linear part."""
        return dense_jacobian(self.operator).cpu().numpy()


@dataclass
class Chain:
    nodes: list[Node]
    parts: list[LinearPart]                 # k linear parts
    slopes: list[tuple[float, float]]       # k - 1 activation intervals, between parts
    autolip_product: float = math.inf       # product of the nodes' AutoLip bounds
    autolip_certified: bool = True
    notes: list[str] = field(default_factory=list)
    graph: Graph | None = None              # the graph the chain is in (its constants)

    @property
    def name(self) -> str:
        return f"{self.nodes[0].name}..{self.nodes[-1].name}"

    def dense(self, settings: Settings) -> bool:
        return all(p.fits_dense(settings) for p in self.parts)


def _slopes(node: Node, graph: Graph) -> tuple[float, float]:
    """The slope interval of a node _kind() calls "act" (so it has one)."""
    found = SLOPES[node.op](node, graph)
    if found is None:
        raise ValueError(f"{node.name}: no slope interval")
    return found


def _kind(node: Node, graph: Graph, bounds: dict[str, NodeBound]) -> str | None:
    dynamic = graph.dynamic_inputs(node)
    if len(dynamic) != 1 or len(node.outputs) != 1 or node.name not in bounds:
        return None
    if node.op in SLOPES and SLOPES[node.op](node, graph) is not None:
        return "act"
    bound = bounds[node.name]
    try:
        rule = get_rule(node.op)
    except NotImplementedError:
        return None
    if (rule.affine or node.op in SHAPE_ONLY) and bound.finite:
        return "linear"
    return None


def _paths(graph: Graph, bounds: dict[str, NodeBound], kind=None) -> list[list[Node]]:
    """Maximal single-consumer paths of nodes that `kind` (default: _kind) classifies."""
    kind = kind or _kind
    consumers, outputs = graph.consumers(), set(graph.outputs)
    seen: set[str] = set()
    paths = []
    for node in graph.nodes:
        if node.name in seen or kind(node, graph, bounds) is None:
            continue
        path = [node]
        while True:
            out = path[-1].outputs[0]
            nxt = consumers.get(out, [])
            if out in outputs or len(nxt) != 1 or kind(nxt[0], graph, bounds) is None:
                break
            if graph.dynamic_inputs(nxt[0]) != [nxt[0].inputs.index(out)]:
                break
            path.append(nxt[0])
        seen.update(n.name for n in path)
        paths.append(path)
    return paths


def _compose(nodes: list[Node], ctx: BoundContext) -> LinearOperator:
    """The linear part of `nodes` (float64). The nodes' operators, which hold float64 copies
    of their weights, are built at the first application and live as long as the chain:
    finding the chains copies no weights (VGG-11: 0.94 GB, where no method applied them)."""
    ops: list[LinearOperator] = []

    def apply(x: torch.Tensor) -> torch.Tensor:
        if not ops:
            ops.extend(node_operator(n, ctx) for n in nodes)
        for op in ops:
            x = op.apply(x.reshape(op.in_shape))
        return x
    (position,) = ctx.dynamic(nodes[0])
    if not nodes[-1].output_shapes:   # no recorded shape: build the operators now
        apply(torch.zeros(nodes[0].input_shapes[position], dtype=torch.float64,
                          device=torch.device(ctx.settings.device)))
    out_shape = tuple(ops[-1].out_shape) if ops else tuple(nodes[-1].output_shapes[0])
    return LinearOperator(apply, tuple(nodes[0].input_shapes[position]), out_shape,
                          torch.float64, torch.device(ctx.settings.device))


def _split(path: list[Node], graph: Graph, bounds: dict[str, NodeBound],
           ctx: BoundContext) -> Chain | None:
    kinds = [_kind(n, graph, bounds) for n in path]
    while kinds and kinds[0] == "act":
        path, kinds = path[1:], kinds[1:]
    while kinds and kinds[-1] == "act":
        path, kinds = path[:-1], kinds[:-1]
    if "act" not in kinds:
        return None
    groups: list[list[Node]] = [[]]
    slopes: list[tuple[float, float]] = []
    for node, kind in zip(path, kinds, strict=True):
        if kind == "linear":
            groups[-1].append(node)
        elif groups[-1]:
            groups.append([])
            slopes.append(_slopes(node, graph))
        else:  # two activations in a row: compose their intervals
            lo, hi = slopes[-1]
            a, b = _slopes(node, graph)
            slopes[-1] = _hull(lo * a, lo * b, hi * a, hi * b)
    parts = [LinearPart(g, _compose(g, ctx)) for g in groups]
    product = math.prod(bounds[n.name].value for n in path)
    certified = all(bounds[n.name].certified for n in path)
    return Chain(path, parts, slopes, product, certified, graph=graph)


def find_chains(graph: Graph, bounds: dict[str, NodeBound], settings: Settings) -> list[Chain]:
    """Every maximal chain with at least one activation between two linear parts."""
    ctx = BoundContext(graph, settings)
    chains = [_split(p, graph, bounds, ctx) for p in _paths(graph, bounds)]
    return [c for c in chains if c is not None]
