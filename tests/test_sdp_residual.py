"""Residual blocks y = S x + W2 s(W1 x) bounded as a unit by sdp-conv, used as segment bounds.

Truth: Jacobian norms of the block (and of a two-block network) at random points and by a
local search, torch's convolutions (the block's circular model), and a certificate built
to sit on the float64 boundary. The composition is checked on its own: a segment replaces
the product over its span only where it is smaller and certified, and a span that reads
from outside is refused.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from graphs import function_of, max_jacobian_norm

from lipcheck.estimators.upper.autolip import autolip, bound_nodes
from lipcheck.estimators.upper.chains import find_chains
from lipcheck.estimators.upper.global_bounds import global_bounds
from lipcheck.estimators.upper.residual_block import find_block, residual_model
from lipcheck.estimators.upper.sdp_residual import optimise, sdp_residual
from lipcheck.estimators.upper.sdp_residual_cert import certify_residual
from lipcheck.estimators.upper.segments import Segment
from lipcheck.graph import Graph, Node, OpKind, ValueInfo
from lipcheck.interpreter import infer_shapes
from lipcheck.settings import Settings

# the channel-wise block SDP alone (the dense per-neuron one has its own test), short search
SETTINGS = Settings(extra={"sdp_conv_dense": False, "sdp_residual_dense_width": 0,
                           "sdp_conv_steps": 20})


def _bn(name: str, x: str, c: int, gen, consts: dict) -> Node:
    for j, part in enumerate(("scale", "bias", "mean", "var")):
        consts[f"{name}{part}"] = (torch.rand(c, generator=gen) + 0.5 if j != 1
                                   else torch.randn(c, generator=gen))
    return Node(name, OpKind.BATCH_NORM, [x] + [f"{name}{p}" for p in ("scale", "bias", "mean",
                                                                      "var")],
                [f"{name}_out"], {"epsilon": 1e-5})


def block_nodes(tag: str, x: str, c_in: int, c: int, stride: int, gen, consts: dict
                ) -> tuple[list[Node], str]:
    """conv3x3(stride)-BN-relu-conv3x3-BN + shortcut (identity, or conv1x1(stride)-BN)."""
    consts[f"{tag}w0"] = torch.randn(c, c_in, 3, 3, generator=gen) / (3 * math.sqrt(c_in))
    consts[f"{tag}w1"] = torch.randn(c, c, 3, 3, generator=gen) / (3 * math.sqrt(c))
    conv = {"pads": [1, 1, 1, 1]}
    nodes = [Node(f"{tag}conv0", OpKind.CONV, [x, f"{tag}w0"], [f"{tag}c0"],
                  {**conv, "strides": [stride] * 2}),
             _bn(f"{tag}bn0", f"{tag}c0", c, gen, consts),
             Node(f"{tag}relu", OpKind.RELU, [f"{tag}bn0_out"], [f"{tag}r"]),
             Node(f"{tag}conv1", OpKind.CONV, [f"{tag}r", f"{tag}w1"], [f"{tag}c1"], conv),
             _bn(f"{tag}bn1", f"{tag}c1", c, gen, consts)]
    short = x
    if stride != 1 or c_in != c:
        consts[f"{tag}ws"] = torch.randn(c, c_in, 1, 1, generator=gen) / math.sqrt(c_in)
        nodes += [Node(f"{tag}convs", OpKind.CONV, [x, f"{tag}ws"], [f"{tag}cs"],
                       {"strides": [stride] * 2}),
                  _bn(f"{tag}bns", f"{tag}cs", c, gen, consts)]
        short = f"{tag}bns_out"
    nodes.append(Node(f"{tag}add", OpKind.ADD, [f"{tag}bn1_out", short], [f"{tag}y"]))
    return nodes, f"{tag}y"


def network(blocks: list[tuple[int, int]], size: int = 6, c_in: int = 2, seed: int = 0
            ) -> Graph:
    """Residual blocks (channels, stride) in a row, a ReLU between them."""
    gen = torch.Generator().manual_seed(seed)
    consts: dict = {}
    nodes, x, c = [], "x", c_in
    for i, (c_out, stride) in enumerate(blocks):
        if i:
            nodes.append(Node(f"act{i}", OpKind.RELU, [x], [f"a{i}"]))
            x = f"a{i}"
        found, x = block_nodes(f"b{i}", x, c, c_out, stride, gen, consts)
        nodes += found
        c = c_out
    g = Graph([ValueInfo("x", (1, c_in, size, size))], [x], nodes, consts)
    infer_shapes(g)
    return g


def searched_norm(g: Graph, points: int = 40, seed: int = 0) -> float:
    """Largest Jacobian norm at random points, then a random local ascent from the best."""
    f = function_of(g)
    best = max_jacobian_norm(g, points, seed)
    n = int(np.prod(g.inputs[0].shape))
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    for _ in range(30):
        cand = x + torch.randn(n, generator=gen, dtype=torch.float64) * 0.5
        value = float(torch.linalg.matrix_norm(torch.autograd.functional.jacobian(f, cand), ord=2))
        if value > best:
            best, x = value, cand
    return best


def blocks_of(g: Graph):
    nb = bound_nodes(g, SETTINGS)
    return [b for c in find_chains(g, nb, SETTINGS) if (b := find_block(c, SETTINGS))], nb


@pytest.mark.parametrize("spec", [[(2, 1)], [(3, 2)], [(3, 1)]],
                         ids=["identity", "projection-stride2", "projection-widen"])
def test_block_model_reproduces_the_graph(spec) -> None:
    g = network(spec, size=7)
    (block,), _ = blocks_of(g)
    assert bool(block.shortcut) == (spec[0] != (2, 1))
    assert residual_model(block, SETTINGS) is not None   # checked against the real ops inside


@pytest.mark.parametrize("spec,seed", [([(2, 1)], 0), ([(2, 1)], 1), ([(3, 2)], 0),
                                       ([(3, 1)], 2)])
def test_block_bound_is_above_every_jacobian_norm_found(spec, seed: int) -> None:
    g = network(spec, seed=seed)
    (block,), _ = blocks_of(g)
    result = sdp_residual(block, SETTINGS, math.inf)
    assert result.certified and result.segment is not None, result.detail
    assert result.value == block.chain.autolip_product   # the branch keeps a branch bound
    found = searched_norm(g)
    assert found <= result.segment.value
    bounds = global_bounds(g, bound_nodes(g, SETTINGS), ["autolip", "sdp-conv"], SETTINGS)
    conv = next(b for b in bounds if b.method == "sdp-conv")
    auto = next(b for b in bounds if b.method == "autolip")
    assert conv.certified and found <= conv.value
    assert result.segment.value < auto.value   # tighter than ||S|| + the branch's product
    assert conv.value == pytest.approx(min(result.segment.value, auto.value))
    assert conv.extra["chains"][0]["segment"]["to"] == block.add.name


def test_two_blocks_compose_soundly_through_their_segments() -> None:
    g = network([(2, 1), (3, 2)], size=6, seed=3)
    found = searched_norm(g)
    bounds = global_bounds(g, bound_nodes(g, SETTINGS), ["autolip", "sdp-conv"], SETTINGS)
    conv = next(b for b in bounds if b.method == "sdp-conv")
    auto = next(b for b in bounds if b.method == "autolip")
    segs = [c["segment"]["value"] for c in conv.extra["chains"]]
    assert len(segs) == 2 and conv.certified
    assert found <= conv.value <= auto.value * (1 + 1e-12)
    assert conv.value <= math.prod(segs) * (1 + 1e-12)


@pytest.mark.parametrize("spec", [[(2, 1)], [(3, 2)]], ids=["identity", "projection"])
def test_certificate_on_the_boundary_is_refused_with_the_margin_only(spec) -> None:
    (block,), _ = blocks_of(network(spec))
    model = residual_model(block, SETTINGS)
    t, _, _ = optimise(model, 15, math.inf)
    rho0, ok, _ = certify_residual(model, t, margin=False)
    assert ok
    edge = rho0 / (1 + 1e-7) * (1 + 1e-13)
    assert certify_residual(model, t, rho=edge, margin=False)[1]
    assert not certify_residual(model, t, rho=edge)[1]
    assert certify_residual(model, t, rho=rho0 * (1 + 1e-4))[1]
    assert not certify_residual(model, t * 1e-3, rho=rho0 * 2)[1]   # T - A2^H A2 indefinite


def _chain_graph() -> Graph:
    gen = torch.Generator().manual_seed(0)
    consts = {"w0": torch.randn(3, 2, 3, 3, generator=gen), "w1": torch.randn(2, 3, 3, 3,
                                                                            generator=gen)}
    nodes = [Node("conv0", OpKind.CONV, ["x", "w0"], ["c0"], {"pads": [1, 1, 1, 1]}),
             Node("relu", OpKind.RELU, ["c0"], ["r"]),
             Node("conv1", OpKind.CONV, ["r", "w1"], ["c1"], {"pads": [1, 1, 1, 1]}),
             Node("relu2", OpKind.RELU, ["c1"], ["y"])]
    g = Graph([ValueInfo("x", (1, 2, 5, 5))], ["y"], nodes, consts)
    infer_shapes(g)
    return g


def test_a_plain_chain_is_not_a_block() -> None:
    blocks, _ = blocks_of(_chain_graph())
    assert blocks == []


def test_segments_replace_the_product_only_where_smaller_and_certified() -> None:
    g = network([(2, 1)])
    nb = bound_nodes(g, SETTINGS)
    base = autolip(g, nb).value
    span = frozenset(n.name for n in g.nodes)

    def with_segment(value: float, certified: bool = True) -> tuple[float, bool]:
        got = autolip(g, nb, [Segment("x", "b0add", span, value, certified)])
        return got.value, got.certified
    assert with_segment(base / 3) == (pytest.approx(base / 3), True)
    assert with_segment(base * 3)[0] == pytest.approx(base)
    assert with_segment(base / 3, certified=False)[0] == pytest.approx(base)
    with pytest.raises(ValueError, match="outside the span"):
        autolip(g, nb, [Segment("b0r", "b0add", span - {"b0conv0", "b0bn0"}, 1.0, True)])


@pytest.mark.parametrize("spec", [[(2, 1)], [(3, 2)]], ids=["identity", "projection"])
def test_per_neuron_dense_block_is_sound_and_not_above_channel_wise(spec) -> None:
    # the dense LMI with the circular model's channel-wise T restricted to the real neurons
    # is feasible, so its optimum is never above the circular one
    from lipcheck.estimators.upper.residual_block import dense_model
    from lipcheck.estimators.upper.sdp_residual import bound_model
    g = network(spec, seed=4)
    (block,), _ = blocks_of(g)
    dense = dense_model(block, SETTINGS, 256)
    assert dense is not None and dense.grid == 1
    per_neuron, detail, _ = bound_model(dense, SETTINGS, math.inf, "dense")
    channel, _, _ = bound_model(residual_model(block, SETTINGS), SETTINGS, math.inf, "circ")
    assert per_neuron is not None, detail
    assert searched_norm(g) <= per_neuron <= channel * (1 + 1e-4)
    assert dense_model(block, SETTINGS, 8) is None   # wider than allowed
