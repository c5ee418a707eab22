"""Steered activation patterns (lower/steer.py): gains and Jacobians against dense
products, every state a real point of its pattern, and certified values that an
independent float64 forward pass reproduces and that stay below certified upper bounds."""
from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch

from lipcheck.estimators.exact.pwl_chain import mlp_graph, pwl_chain
from lipcheck.estimators.lower import patterns, steer
from lipcheck.estimators.lower.netfn import NetFunction
from lipcheck.estimators.lower.search import certify
from lipcheck.estimators.upper.autolip import bound_nodes
from lipcheck.estimators.upper.global_bounds import global_bounds
from lipcheck.settings import Settings


def chain_of(widths: list[int], seed: int, slope: float = 0.0):
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal((b, a)) / np.sqrt(a) for a, b in pairwise(widths)]
    bs = [0.1 * rng.standard_normal(b) for b in widths[1:]]
    graph = mlp_graph(ws, bs, "leaky_relu", slope) if slope else mlp_graph(ws, bs)
    return graph, pwl_chain(graph)


def dense_jacobian(chain, signs) -> np.ndarray:
    m = chain.affines[0].weight
    for layer, s in enumerate(signs):
        sigma = np.where(s > 0, 1.0, chain.slopes[layer])
        m = chain.affines[layer + 1].weight @ (sigma[:, None] * m)
    return m


def random_signs(chain, rng) -> list[np.ndarray]:
    return [np.where(rng.random(w) < 0.5, 1.0, -1.0) for w in chain.widths]


@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_jacobian_and_gains_match_dense_products(slope: float) -> None:
    """u^T J v is linear in each unit's slope, so the gain of unit i is exactly
    u^T J(active_i) v - u^T J(inactive_i) v with (u, v) J's top singular pair."""
    _, chain = chain_of([9, 7, 6, 5, 3], seed=1, slope=slope)
    rng = np.random.default_rng(0)
    signs = random_signs(chain, rng)
    jac = dense_jacobian(chain, signs)
    assert np.allclose(steer.jacobian(chain, signs), jac, rtol=1e-12, atol=1e-12)
    u, _, vt = np.linalg.svd(jac)
    for layer in range(3):
        got = steer.gains(chain, signs, layer)
        for unit in range(chain.widths[layer]):
            on, off = [s.copy() for s in signs], [s.copy() for s in signs]
            on[layer][unit], off[layer][unit] = 1.0, -1.0
            want = u[:, 0] @ (dense_jacobian(chain, on) - dense_jacobian(chain, off)) @ vt[0]
            assert got[unit] == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_steered_point_realises_its_pattern() -> None:
    """The z1 returned is met exactly (x = W1^+ (z1 - b1)), and the signs the walk used
    are those of the exact forward pass at x."""
    _, chain = chain_of([40, 30, 30, 4], seed=2)
    rng = np.random.default_rng(3)
    target = random_signs(chain, rng)
    z1 = steer.steer(chain, target, steps=4)
    x = steer.preimage(chain)(z1)
    first = chain.affines[0]
    assert np.allclose(first.weight @ x + first.bias, z1, rtol=0, atol=1e-9 * np.abs(z1).max())
    region = patterns.ball_at(chain, x)
    assert region is not None and region.radius > 0
    assert all(np.array_equal(a, b) for a, b in zip(region.signs, steer.forward_signs(chain, z1),
                                                     strict=True))


def forward(graph, x: np.ndarray) -> np.ndarray:
    """The MLP in float64 numpy, independent of lipcheck's interpreter."""
    count = sum(1 for k in graph.constants if k.startswith("W"))
    h = x
    for i in range(count):
        w, b = (graph.constants[f"{k}{i}"].double().numpy() for k in ("W", "b"))
        h = w @ h + b
        if i < count - 1:
            h = np.maximum(h, 0.0)
    return h


def test_steered_values_are_real_quotients_below_certified_upper_bounds() -> None:
    """320-200-200-5 (LPs too large: least squares, NNLS and the steering walk): the
    best pair's quotient, recomputed here in float64, is the certified value (to its
    rounding margin), beats the unsteered regions, and is below every certified upper
    bound lipcheck computes for the net (AutoLip, ECLipsE-Fast, LipSDP-Neuron)."""
    graph, chain = chain_of([320, 200, 200, 5], seed=4)
    assert patterns.free_first_layer(chain, None) and not patterns.lp_sized(chain)
    fn = NetFunction(graph)
    found = patterns.pattern_pairs(graph, fn, None, budget_s=60.0)
    assert found.pairs is not None and not found.cut
    row = int(torch.argmax(found.pairs.values))
    best = certify(fn, found.pairs, row, "activation-pattern")
    p, q = best.x, best.y
    quotient = np.linalg.norm(forward(graph, p) - forward(graph, q)) / np.linalg.norm(p - q)
    assert best.value == pytest.approx(quotient, rel=1e-6) and best.value <= quotient
    target = patterns.seqlip_targets(chain, float("inf"))
    plain = patterns.realise_free(chain, target)
    assert best.value > plain.norm
    settings = Settings()
    uppers = [b.value for b in global_bounds(graph, bound_nodes(graph, settings),
                                             ["autolip", "eclipse-fast", "sdp:quick"], settings)
              if b.certified]
    assert len(uppers) == 3 and best.value <= min(uppers)
