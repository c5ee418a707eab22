"""A residual block y = S x + W2 s(W1 x) found in the graph, as circular convolutions.

The branch is a chain (chains.py) of two conv parts; its output and the shortcut's meet
at an Add that is a plain sum. The shortcut S is the identity (the Add reads the block's
input) or a path of linear nodes from the input (a 1x1 strided Conv + BatchNormalization
in ResNets) that nothing else reads. W1 and S may have a stride s (the same); W2 has
none and keeps the grid. On one coarse grid (conv_chain's embedding and polyphase: the
input has s x s phases, the hidden layer and the output one) every map is one block per
frequency: A1(w), A2(w), S(w). The model is checked against the real operators on a
random input before it is used. `dense_model` is the same block as dense matrices: a
1 x 1 "grid" with one tap per map, on which the multipliers are per neuron.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lipcheck.estimators.upper.chains import SHAPE_ONLY, Chain, LinearPart, _compose
from lipcheck.estimators.upper.conv_chain import (
    CHECK_TOLERANCE,
    CircularChain,
    ConvLayer,
    _grid,
    _taps,
    apply_layer,
    conv_layers,
)
from lipcheck.estimators.upper.sdp_cost import over_work
from lipcheck.graph import Graph, Node, OpKind
from lipcheck.rules import BoundContext, Merge, get_rule
from lipcheck.settings import Settings


@dataclass
class Block:
    source: str                 # the block's input value
    add: Node                   # where branch and shortcut meet
    chain: Chain                # the branch
    shortcut: list[Node]        # [] for the identity

    @property
    def nodes(self) -> frozenset[str]:
        return frozenset([n.name for n in self.chain.nodes + self.shortcut] + [self.add.name])


@dataclass
class ResidualModel:
    branch: CircularChain       # layers W1, W2 on the coarse grid
    short: CircularChain        # the one layer S on the same grid

    @property
    def grid(self) -> int:
        return self.branch.grid


def find_block(chain: Chain, settings: Settings) -> Block | None:
    """The residual block whose branch is `chain`, or None."""
    graph = chain.graph
    if graph is None or len(chain.parts) != 2:
        return None
    source = chain.nodes[0].inputs[graph.dynamic_inputs(chain.nodes[0])[0]]
    out = chain.nodes[-1].outputs[0]
    consumers = graph.consumers()
    users = consumers.get(out, [])
    if len(users) != 1 or users[0].op != OpKind.ADD or out in graph.outputs:
        return None
    add = users[0]
    others = [v for v in add.inputs if v != out]
    if len(add.inputs) != 2 or len(others) != 1 or others[0] in graph.constants:
        return None
    if not _plain_sum(add, graph, settings):
        return None
    shortcut = [] if others[0] == source else _shortcut(graph, others[0], source, add)
    if shortcut is None:
        return None
    return Block(source, add, chain, shortcut)


def _plain_sum(add: Node, graph: Graph, settings: Settings) -> bool:
    if len({tuple(shape) for shape in add.input_shapes}) != 1:
        return False
    bound = get_rule(OpKind.ADD).bound(add, BoundContext(graph, settings))
    return bound.merge == Merge.SUM and bound.value == 1.0 and bound.certified


def _shortcut(graph: Graph, value: str, source: str, add: Node) -> list[Node] | None:
    """The linear nodes from `source` to `value`, each read only by the next, or None."""
    producers, consumers = graph.producers(), graph.consumers()
    path: list[Node] = []
    while value != source:
        node = producers.get(value)
        if node is None or len(node.outputs) != 1 or value in graph.outputs:
            return None
        nxt = path[0] if path else add
        if [n.name for n in consumers.get(value, [])] != [nxt.name]:
            return None
        dynamic = graph.dynamic_inputs(node)
        if len(dynamic) != 1 or not (node.op in SHAPE_ONLY or get_rule(node.op).affine):
            return None
        path.insert(0, node)
        value = node.inputs[dynamic[0]]
    return path


def _identity(channels: int, size: tuple[int, int]) -> ConvLayer:
    weight = np.eye(channels)[:, :, None, None]
    return ConvLayer(weight, (1, 1), (1, 1), (0, 0), size, size)


def residual_model(block: Block, settings: Settings) -> ResidualModel | None:
    """The block on one coarse grid, or None where it is not two convs and a conv (or
    identity) shortcut of the shapes above, or the model does not reproduce the graph."""
    chain, graph = block.chain, block.chain.graph
    if graph is None or any(a != 0 or b <= 0 for a, b in chain.slopes):
        return None
    layers = conv_layers(chain.parts, graph)
    if layers is None:
        return None
    first, second = layers
    if block.shortcut:
        part = LinearPart(block.shortcut, _compose(block.shortcut, BoundContext(graph, settings)))
        found = conv_layers([part], graph)
        if found is None:
            return None
        short, short_part = found[0], part
    else:
        short, short_part = _identity(first.weight.shape[1], first.in_size), None
    if not _shapes_fit(first, second, short):
        return None
    s = first.strides
    grid = _grid([first, second, short], [s, (1, 1), s])
    dims = [first.weight.shape[1] * s[0] * s[1], first.weight.shape[0], second.weight.shape[0]]
    if over_work(settings.extra, (grid * grid + 2) // 2, dims[0] + dims[1]):
        return None   # above --method auto's quick limits: not even checked (seconds at 224)
    empty = np.zeros((0, dims[2]) + second.out_size)
    branch = CircularChain(grid, [s, (1, 1), (1, 1)], dims,
                           [_taps(first, s, (1, 1)), _taps(second, (1, 1), (1, 1))], empty,
                           chain.slopes[0][1], layers)
    shortcut = CircularChain(grid, [s, (1, 1)], [dims[0], dims[2]], [_taps(short, s, (1, 1))],
                             empty, 1.0, [short])
    parts = [(branch, 0, chain.parts[0]), (branch, 1, chain.parts[1]), (shortcut, 0, short_part)]
    if not all(_agrees(model, i, part) for model, i, part in parts):
        return None
    return ResidualModel(branch, shortcut)


def dense_model(block: Block, settings: Settings, max_width: int) -> ResidualModel | None:
    """The block as dense matrices (one frequency; multipliers per neuron), or None where
    a map is wider than `max_width` or does not fit as a dense matrix."""
    chain, graph = block.chain, block.chain.graph
    if graph is None or any(a != 0 or b <= 0 for a, b in chain.slopes) \
            or not chain.dense(settings):
        return None
    first, second = chain.parts
    if max(first.shape + second.shape) > max_width or \
            (not block.shortcut and second.shape[0] != first.shape[1]):
        return None
    if block.shortcut:
        part = LinearPart(block.shortcut, _compose(block.shortcut, BoundContext(graph, settings)))
        if part.shape != (second.shape[0], first.shape[1]) or not part.fits_dense(settings):
            return None
        short = part.matrix()
    else:
        short = np.eye(first.shape[1])
    w1, w2 = first.matrix(), second.matrix()
    dims = [w1.shape[1], w1.shape[0], w2.shape[0]]
    one = [(1, 1)] * 3
    empty = np.zeros((0, dims[2], 1, 1))
    branch = CircularChain(1, one, dims, [{(0, 0): w1}, {(0, 0): w2}], empty,
                           chain.slopes[0][1], [])
    return ResidualModel(branch, CircularChain(1, one[:2], [dims[0], dims[2]],
                                               [{(0, 0): short}], empty, 1.0, []))


def _shapes_fit(first: ConvLayer, second: ConvLayer, short: ConvLayer) -> bool:
    c_in, c_hid, c_out = first.weight.shape[1], first.weight.shape[0], second.weight.shape[0]
    return (second.strides == (1, 1) and second.in_size == first.out_size
            and second.out_size == second.in_size and second.weight.shape[1] == c_hid
            and short.strides == first.strides and short.in_size == first.in_size
            and short.out_size == second.out_size and short.weight.shape[:2] == (c_out, c_in))


def _agrees(model: CircularChain, i: int, part: LinearPart | None) -> bool:
    layer = model.layers[i]
    rng = np.random.default_rng(i)
    x = rng.standard_normal((layer.weight.shape[1],) + layer.in_size)
    got = apply_layer(model, i, x).ravel()
    if part is None:   # the identity shortcut
        want = x.ravel()
    else:
        with torch.no_grad():
            want = part.operator.apply(torch.from_numpy(x).reshape(part.operator.in_shape)
                                       .to(part.operator.dtype)).double().cpu().numpy().ravel()
    scale = max(float(np.linalg.norm(want)), 1e-300) * math.sqrt(x.size)
    return got.size == want.size and bool(np.linalg.norm(got - want) <= CHECK_TOLERANCE * scale)
