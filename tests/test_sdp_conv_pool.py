"""sdp-conv through MaxPools (conv_pool, sdp_conv_pool): the pool as m - 1 ReLUs per window.

Truth: torch's max_pool2d (the polyphase window map and the ReLU form of the max), the
exact constant by region enumeration of the same function written as a ReLU MLP
(max(h1, h2) = h1 + relu(h2 - h1) for h1 >= 0), Jacobian norms at random points and by a
local search, and a certificate built to sit on the float64 boundary.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from graphs import mlp
from test_sdp_conv import searched_norm

from lipcheck.estimators.exact.regions import exact_lipschitz
from lipcheck.estimators.upper.autolip import bound_nodes
from lipcheck.estimators.upper.chains import find_chains
from lipcheck.estimators.upper.conv_pool import (
    PooledChain,
    find_pooled,
    pool_window,
    pooled_model,
)
from lipcheck.estimators.upper.global_bounds import global_bounds
from lipcheck.estimators.upper.sdp_conv_pool import (
    _joint,
    certify,
    optimise,
    pool_pattern,
    sdp_conv_pooled,
)
from lipcheck.graph import Graph, Node, OpKind, ValueInfo
from lipcheck.interpreter import infer_shapes
from lipcheck.settings import Settings


def pooled_net(size: tuple[int, int], convs: list[tuple[int, int, int]], pools: list,
               n_out: int = 3, seed: int = 0, pool_first: bool = False) -> Graph:
    """conv(k, pad) relu [maxpool] ... flatten gemm; convs: (C_out, k, pad); pools[i]:
    the window after conv i's ReLU or None (pool_first: MaxPool before the ReLU)."""
    gen = torch.Generator().manual_seed(seed)
    nodes, consts, x, c = [], {}, "x", 1
    for i, ((c_out, k, p), pool) in enumerate(zip(convs, pools, strict=True)):
        consts[f"w{i}"] = torch.randn(c_out, c, k, k, generator=gen) / (k * math.sqrt(c))
        consts[f"b{i}"] = torch.randn(c_out, generator=gen)
        nodes.append(Node(f"conv{i}", OpKind.CONV, [x, f"w{i}", f"b{i}"], [f"c{i}"],
                          {"pads": [p] * 4}))
        ops = [("relu", OpKind.RELU, {})]
        if pool is not None:
            ops.append(("pool", OpKind.MAX_POOL, {"kernel_shape": list(pool),
                                                  "strides": list(pool)}))
        for name, op, attrs in (reversed(ops) if pool_first else ops):
            nodes.append(Node(f"{name}{i}", op, [nodes[-1].outputs[0]], [f"{name}{i}o"], attrs))
        x, c = nodes[-1].outputs[0], c_out
    nodes.append(Node("flat", OpKind.FLATTEN, [x], ["f"], {"axis": 1}))
    infer_shapes(Graph([ValueInfo("x", (1, 1, *size))], ["f"], nodes, consts))
    flat = int(np.prod(nodes[-1].output_shapes[0][1:]))
    consts["wf"] = torch.randn(n_out, flat, generator=gen) / math.sqrt(flat)
    nodes.append(Node("fc", OpKind.GEMM, ["f", "wf"], ["y"], {"transB": 1}))
    g = Graph([ValueInfo("x", (1, 1, *size))], ["y"], nodes, consts)
    infer_shapes(g)
    return g


def pooled_of(g: Graph) -> tuple[PooledChain, Settings]:
    s = Settings(extra={"sdp_conv_dense": False, "sdp_conv_pool_steps": 40})
    nb = bound_nodes(g, s)
    (chain,) = [c for c in find_pooled(g, nb, s, find_chains(g, nb, s))
                if isinstance(c, PooledChain)]
    return chain, s


def joint(g: Graph) -> float:
    chain, s = pooled_of(g)
    found = _joint(chain, s, math.inf)
    assert found.certified, found.detail
    return found.value


def test_window_map_and_relu_form_reproduce_max_pool() -> None:
    """Real grid -> polyphase phases -> p = R (h, u), u_j = relu(h_j - h_1 - sum u_l) at
    every coarse position -> real grid equals torch's max_pool2d (2 x 2 and 1 x 2)."""
    for window, size in (((2, 2), (6, 6)), ((1, 2), (4, 6))):
        g = pooled_net(size, [(2, 3, 1), (2, 3, 1)], [window, None])
        model, why = pooled_model(pooled_of(g)[0])
        assert model is not None, why
        (ph, pw), grid = model.h_phases[0], model.base.grid
        c, low, r, _ = pool_pattern(model, 0)
        h = torch.randn(2, *size, dtype=torch.float64)
        full = torch.zeros(2, grid * ph, grid * pw, dtype=torch.float64)
        full[:, :size[0], :size[1]] = h
        poly = full.reshape(2, grid, ph, grid, pw).permute(0, 2, 4, 1, 3).reshape(-1, grid * grid)
        u = torch.zeros(c.shape[0], grid * grid, dtype=torch.float64)
        for j in range(c.shape[0]):   # sequential: u_j reads the earlier u's only
            g_j = -2 * (torch.from_numpy(c[j]) @ poly + torch.from_numpy(low[j]) @ u)
            u[j] = torch.relu(g_j)
        p = torch.from_numpy(r) @ torch.cat([poly, u])
        qh, qw = ph // window[0], pw // window[1]
        p = p.reshape(2, qh, qw, grid, grid).permute(0, 3, 1, 4, 2).reshape(2, grid * qh, -1)
        want = torch.nn.functional.max_pool2d(h[None], window)[0]
        torch.testing.assert_close(p[:, :want.shape[1], :want.shape[2]], want)


@pytest.mark.parametrize("case", [
    dict(size=(6, 6), convs=[(3, 3, 1), (2, 3, 1)], pools=[(2, 2), None], seed=1),
    dict(size=(6, 6), convs=[(2, 3, 1), (3, 3, 1)], pools=[None, (2, 2)], seed=2),
    dict(size=(7, 6), convs=[(2, 3, 1), (2, 2, 0)], pools=[(2, 2), (1, 2)], seed=3,
         pool_first=True)])
def test_bound_is_above_every_jacobian_norm_found(case: dict) -> None:
    """The joint bound alone, and what sdp-conv reports (the smaller of the joint bound and
    the chain split at its pools, never above the AutoLip product)."""
    g = pooled_net(**case)
    chain, s = pooled_of(g)
    found = searched_norm(g)
    assert found <= joint(g)
    reported = sdp_conv_pooled(chain, s, math.inf)
    assert reported.certified and found <= reported.value <= chain.autolip_product * (1 + 1e-9)


def relu_form(g: Graph) -> Graph:
    """conv(1->2, k2) relu maxpool(1x2) gemm as the ReLU MLP W1 -> relu -> G -> relu ->
    W2 S, the same function (h >= 0, so max(h1, h2) = relu(h1) + relu(h2 - h1))."""
    chain, _ = pooled_of(g)
    w1, w2 = chain.parts[0].matrix(), chain.parts[-1].matrix()   # (4, 6), (n_out, 2)
    gmat = np.zeros((4, 4))
    for ch in range(2):
        a, b = 2 * ch, 2 * ch + 1
        gmat[a, a], gmat[b, b], gmat[b, a] = 1.0, 1.0, -1.0
    summed = np.zeros((2, 4))
    summed[0, :2] = summed[1, 2:] = 1.0
    net = mlp([6, 4, 4, w2.shape[0]])
    for i, w in enumerate((w1, gmat, w2 @ summed)):
        net.constants[f"w{i}"] = torch.from_numpy(w)
        net.constants[f"b{i}"] = torch.zeros(w.shape[0], dtype=torch.float64)
    return net


@pytest.mark.parametrize("seed", [4, 5])
def test_bound_is_above_the_exact_constant(seed: int) -> None:
    from graphs import function_of
    g = pooled_net((2, 3), [(2, 2, 0)], [(1, 2)], n_out=2, seed=seed)
    g.constants["b0"] = torch.zeros(2)
    net = relu_form(g)
    for x in torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)):
        torch.testing.assert_close(function_of(net)(x), function_of(g)(x))
    exact = exact_lipschitz(net)
    assert exact.complete
    bound = joint(g)
    assert exact.value * (1 - 1e-9) <= bound <= 2.0 * exact.value


def boundary(g: Graph):
    model, _ = pooled_model(pooled_of(g)[0])
    layers, _, _ = optimise(model, 20, math.inf)
    return model, layers


def test_certificate_on_the_boundary_is_refused_with_the_margin_only() -> None:
    g = pooled_net((6, 6), [(3, 3, 1), (2, 3, 1)], [(2, 2), None], seed=1)
    model, layers = boundary(g)
    unshifted = certify(model, layers, margin=False)
    assert unshifted.verified
    edge = unshifted.rho / (1 + 1e-7) * (1 + 1e-13)
    assert certify(model, layers, rho=edge, margin=False).verified
    assert not certify(model, layers, rho=edge).verified
    assert certify(model, layers, rho=unshifted.rho * (1 + 1e-4)).verified
    assert not certify(model, [tuple(v * 1e3 for v in layer) for layer in layers]).verified


def test_sdp_conv_runs_through_the_pool_and_reports_it() -> None:
    g = pooled_net((6, 6), [(3, 3, 1), (2, 3, 1)], [(2, 2), None], seed=1)
    s = Settings(extra={"sdp_conv_dense": False, "sdp_conv_pool_steps": 40})
    bounds = global_bounds(g, bound_nodes(g, s), ["autolip", "sdp-conv"], s)
    conv = next(b for b in bounds if b.method == "sdp-conv")
    auto = next(b for b in bounds if b.method == "autolip")
    (record,) = conv.extra["chains"]
    assert record["chain"] == "conv0..fc" and conv.certified and conv.value < auto.value
    assert "pool" in record["detail"].lower() and "Cholesky" in record["detail"]
    assert searched_norm(g) <= conv.value


def test_pools_that_cannot_join_are_refused() -> None:
    """Overlapping, padded or dilated pools are not written as window maxima."""
    g = pooled_net((6, 6), [(3, 3, 1), (2, 3, 1)], [(2, 2), None], seed=1)
    pool = next(n for n in g.nodes if n.op == OpKind.MAX_POOL)
    assert pool_window(pool) == (2, 2)
    for change in ({"strides": [1, 1]}, {"pads": [1, 1, 1, 1]}, {"dilations": [2, 2]}):
        odd = Node(pool.name, pool.op, pool.inputs, pool.outputs, {**pool.attrs, **change})
        odd.input_shapes, odd.output_shapes = pool.input_shapes, pool.output_shapes
        assert pool_window(odd) is None


def test_the_start_certificate_is_kept_when_the_final_one_is_stopped(monkeypatch) -> None:
    """As for plain chains (test_sdp_conv_deadline): the start's multipliers are certified
    first, so a final certificate stopped by the deadline leaves a certified joint bound."""
    import lipcheck.estimators.upper.sdp_conv_pool as pool_module
    g = pooled_net((6, 6), [(3, 3, 1), (2, 3, 1)], [(2, 2), None], seed=1)
    chain, s = pooled_of(g)
    full = _joint(chain, s, math.inf)
    calls = []

    def stop_after_the_first(model, layers, rho=None, margin=True, deadline=math.inf):
        calls.append(1)
        return certify(model, layers, rho, margin, -math.inf if len(calls) > 1 else deadline)

    monkeypatch.setattr(pool_module, "certify", stop_after_the_first)
    kept = _joint(chain, s, math.inf)
    assert len(calls) >= 2 and kept.certified and kept.cut_by_budget
    assert "start's certificate is kept" in kept.detail
    assert full.certified and full.value <= kept.value * (1 + 1e-9)
    assert searched_norm(g) <= kept.value
