"""Operators are built when used: find_chains copies no weights (a chain's float64 operators
are built at their first application; VGG-11: 0.94 GB of copies that no method used), and
node_operator runs the layer for its offset only at the first application. Both then equal
the layers' own linear maps."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from graphs import conv_net, mlp

from lipcheck.estimators.upper import chains as chains_module
from lipcheck.estimators.upper.autolip import bound_nodes
from lipcheck.estimators.upper.chains import find_chains
from lipcheck.rules import BoundContext, get_rule, registry
from lipcheck.settings import Settings
from lipcheck.spectral.operator import node_operator


def _counting(monkeypatch) -> list[str]:
    built: list[str] = []
    real = chains_module.node_operator

    def counted(node, ctx, *args):
        built.append(node.name)
        return real(node, ctx, *args)
    monkeypatch.setattr(chains_module, "node_operator", counted)
    return built


def test_mlp_parts_are_built_on_first_use_and_equal_the_weights(monkeypatch) -> None:
    g, s = mlp([7, 5, 6, 3], seed=1), Settings()
    built = _counting(monkeypatch)
    (chain,) = find_chains(g, bound_nodes(g, s), s)
    assert built == []
    assert [p.shape for p in chain.parts] == [(5, 7), (6, 5), (3, 6)]
    for i, part in enumerate(chain.parts):
        np.testing.assert_allclose(part.matrix(), g.constants[f"w{i}"].double().numpy(),
                                   rtol=1e-12, atol=1e-12)
    assert built == ["fc0", "fc1", "fc2"]          # once each, also after several uses
    chain.parts[0].matrix()
    assert built == ["fc0", "fc1", "fc2"]


def test_conv_parts_apply_like_the_layers(monkeypatch) -> None:
    g, s = conv_net(seed=2), Settings()
    built = _counting(monkeypatch)
    (chain,) = find_chains(g, bound_nodes(g, s), s)
    assert built == []
    first = chain.parts[0].operator
    x = torch.randn(first.in_shape, dtype=torch.float64)
    w = g.constants["w0"].double()
    want = torch.nn.functional.conv2d(x, w, padding=1)
    assert first.out_shape == tuple(want.shape)
    torch.testing.assert_close(first.apply(x), want, rtol=1e-12, atol=1e-12)


def test_node_operator_runs_the_layer_only_when_applied(monkeypatch) -> None:
    g = conv_net(seed=3)
    node = g.nodes[0]                               # conv0, with a bias
    rule = get_rule(node.op)
    calls: list[int] = []
    counted = dataclasses.replace(rule, run=lambda n, args: calls.append(1) or rule.run(n, args))
    monkeypatch.setattr(registry, "get_rule", lambda op: counted)
    ctx = BoundContext(g, Settings())
    op = node_operator(node, ctx)
    assert calls == [] and op.out_shape == tuple(node.output_shapes[0])
    x = torch.randn(op.in_shape, dtype=torch.float64)
    want = torch.nn.functional.conv2d(x, g.constants["w0"].double(), padding=1)   # no bias
    torch.testing.assert_close(op.apply(x), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.apply(2 * x), 2 * want, rtol=1e-12, atol=1e-12)
    assert len(calls) == 3                          # the offset once, then one run per apply
    node.output_shapes = []                         # no recorded shape: applied once, eagerly
    assert node_operator(node, ctx).out_shape == tuple(want.shape)
