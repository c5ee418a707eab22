"""Branch and bound on margins: the ReLU form is the same function, a proved margin is
positive on the whole ball (dense grid on 2-D balls, PGD elsewhere), rounding slack is
kept, and the gate's option is wired and reported."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from graphs import mlp
from test_local import attack

from lipcheck.errors import UserError
from lipcheck.gate.robustness import predict
from lipcheck.gate.thresholds import Thresholds, thresholds_from_table
from lipcheck.graph import Graph, Node, OpKind, ValueInfo
from lipcheck.interpreter import infer_shapes
from lipcheck.loaders.dispatch import load_model
from lipcheck.local_certify import certify_local
from lipcheck.propagation import InputSet, bab, build_program, propagate
from lipcheck.propagation.bab import Limits, verify
from lipcheck.propagation.relu_bounds import crown_ranges
from lipcheck.propagation.relu_net import ReluNet, relu_form

ROOT = Path(__file__).resolve().parents[1]


def pool_net(kernel: int, stride: int, pads: int, relu_first: bool, seed: int = 0) -> Graph:
    """conv(1->3,k3,p1) [relu] maxpool [relu] gemm(->3) on a 1x1x5x5 input."""
    gen = torch.Generator().manual_seed(seed)
    side = (5 + 2 * pads - kernel) // stride + 1
    consts = {"w": torch.randn(3, 1, 3, 3, generator=gen), "b": torch.randn(3, generator=gen),
              "f": torch.randn(3, 3 * side * side, generator=gen) / side,
              "fb": torch.randn(3, generator=gen)}
    pool = {"kernel_shape": [kernel, kernel], "strides": [stride, stride],
            "pads": [pads] * 4}
    act = ["h", "a"] if relu_first else ["m", "a"]
    nodes = [Node("c", OpKind.CONV, ["x", "w", "b"], ["h"], {"pads": [1, 1, 1, 1]}),
             Node("r", OpKind.RELU, act[:1], act[1:]),
             Node("p", OpKind.MAX_POOL, ["a" if relu_first else "h"],
                  ["m" if not relu_first else "q"], pool),
             Node("fl", OpKind.FLATTEN, ["q" if relu_first else "a"], ["v"], {"axis": 1}),
             Node("fc", OpKind.GEMM, ["v", "f", "fb"], ["y"], {"transB": 1})]
    if not relu_first:
        nodes[1], nodes[2] = nodes[2], nodes[1]
    g = Graph([ValueInfo("x", (1, 1, 5, 5))], ["y"], nodes, consts)
    infer_shapes(g)
    return g


@pytest.mark.parametrize("kernel,stride,pads,relu_first", [
    (2, 2, 0, True), (2, 2, 0, False), (3, 2, 1, True), (3, 1, 1, False)])
def test_the_relu_form_is_the_same_function(kernel, stride, pads, relu_first):
    program = build_program(pool_net(kernel, stride, pads, relu_first))
    net = relu_form(program)
    x = torch.randn(200, program.n_in, dtype=torch.float64, generator=torch.Generator()
                    .manual_seed(1)) * 2
    assert torch.allclose(net.run(x), program.run(x), rtol=0, atol=1e-12)
    assert any(bool(lin.any()) for lin in net.linear)   # the pool's identity units


def test_digits_cnn_in_relu_form():
    program = build_program(load_model(ROOT / "models" / "digits_cnn.onnx"))
    net = relu_form(program)
    x = torch.rand(64, program.n_in, dtype=torch.float64)
    assert torch.allclose(net.run(x), program.run(x), rtol=0, atol=1e-10)
    assert net.widths == [512, 256, 128, 256]   # conv, two pool levels, conv


def residual_mlp(seed: int = 0) -> Graph:
    """gemm(2->12) relu, then a block gemm relu gemm + (its input), relu, maxpool 1x2,
    gemm(->3)."""
    gen = torch.Generator().manual_seed(seed)
    c = {"w0": torch.randn(12, 2, generator=gen), "b0": torch.randn(12, generator=gen),
         "w1": torch.randn(12, 12, generator=gen) / 3, "b1": torch.randn(12, generator=gen),
         "w9": torch.randn(12, 12, generator=gen) / 3,
         "w2": torch.randn(3, 6, generator=gen) / 2, "b2": torch.randn(3, generator=gen)}
    nodes = [Node("fc0", OpKind.GEMM, ["x", "w0", "b0"], ["h0"], {"transB": 1}),
             Node("r0", OpKind.RELU, ["h0"], ["a0"]),
             Node("fc1", OpKind.GEMM, ["a0", "w1", "b1"], ["h1"], {"transB": 1}),
             Node("rb", OpKind.RELU, ["h1"], ["ab"]),
             Node("fcb", OpKind.GEMM, ["ab", "w9"], ["hb"], {"transB": 1}),
             Node("add", OpKind.ADD, ["hb", "a0"], ["s"]),
             Node("r1", OpKind.RELU, ["s"], ["a1"]),
             Node("shape", OpKind.RESHAPE, ["a1"], ["a3"], {"shape": [1, 1, 12]}),
             Node("pool", OpKind.MAX_POOL, ["a3"], ["p"], {"kernel_shape": [2], "strides": [2]}),
             Node("flat", OpKind.FLATTEN, ["p"], ["v"], {"axis": 1}),
             Node("fc2", OpKind.GEMM, ["v", "w2", "b2"], ["y"], {"transB": 1})]
    g = Graph([ValueInfo("x", (1, 2))], ["y"], nodes, c)
    infer_shapes(g)
    return g


def test_a_residual_program_in_relu_form_carries_the_skip_as_identity_units():
    program = build_program(residual_mlp())
    net = relu_form(program)
    x = torch.randn(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(net.run(x * 3), program.run(x * 3), rtol=0, atol=1e-12)
    assert int(net.linear[1].sum()) == 12                  # a0 carried past fc1's layer


def _grid_minimum(net: ReluNet, center: torch.Tensor, eps: float, row: torch.Tensor) -> float:
    """min of row . f over a dense polar grid of the 2-D disc (boundary included)."""
    r = torch.linspace(0, eps, 200, dtype=torch.float64)
    t = torch.linspace(0, 2 * np.pi, 721, dtype=torch.float64)
    pts = torch.stack([torch.outer(r, t.cos()), torch.outer(r, t.sin())], dim=2).reshape(-1, 2)
    return float((net.run(center + pts) @ row).min())


@pytest.mark.parametrize("refine,residual,group", [(False, False, 512), (True, False, 512),
                                                   (False, True, 512), (False, False, 7)])
def test_proved_margins_hold_on_a_dense_grid_and_bab_proves_more_than_its_root(
        refine, residual, group, monkeypatch):
    """(group 7: the margins are searched in groups of 7, as large data sets are.)"""
    monkeypatch.setattr(bab, "GROUP", group)
    graph = residual_mlp(seed=2) if residual else mlp([2, 16, 16, 3], seed=5)
    net = relu_form(build_program(graph))
    gen = np.random.default_rng(3)
    centers = torch.from_numpy(gen.uniform(-1.5, 1.5, size=(24, 2)))
    pred = net.run(centers).argmax(dim=1)
    eps = 0.7 if residual else 1.5
    sample, rows, truth = [], [], []
    for i in range(len(centers)):
        for j in range(3):
            if j != int(pred[i]):
                row = torch.zeros(3, dtype=torch.float64)
                row[pred[i]], row[j] = 1.0, -1.0
                sample.append(i)
                rows.append(row)
                truth.append(_grid_minimum(net, centers[i], eps, row))
    index, rows_t, truth_a = torch.tensor(sample), torch.stack(rows), np.array(truth)
    full = verify(net, centers, eps, index, rows_t, Limits(domains=300, rounds=60, refine=refine))
    root = verify(net, centers, eps, index, rows_t, Limits(domains=1, rounds=1))
    proved = full.certified.numpy()
    assert np.all(truth_a[proved] > 0)                   # never a false proof
    assert not np.any(proved & full.attacked.numpy())
    assert proved.sum() > root.certified.sum()           # splitting proves more
    assert proved.sum() >= 0.8 * (truth_a > 0.05).sum()  # and most of what holds with room
    assert (truth_a <= 0).any()                           # the set has false margins too


def test_a_margin_that_touches_zero_is_not_proved():
    """A net linear on the ball (every unit stays on): the bound is exact, so at the
    radius where the margin's minimum is 1e-12 (positive: no attack finds a point) the
    rounding slack refuses it."""
    w1 = torch.eye(2, dtype=torch.float64)
    net = ReluNet([w1, torch.tensor([[3.0, 4.0]], dtype=torch.float64)],
                  [torch.full((2,), 10.0, dtype=torch.float64),
                   torch.tensor([-75.0], dtype=torch.float64)], [torch.zeros(2, dtype=bool)])
    # margin = 3 (x1 + 10) + 4 (x2 + 10) - 75 = 3 x1 + 4 x2 - 5: at x = (1, 1), 2; ||w|| = 5
    center, row = torch.tensor([[1.0, 1.0]], dtype=torch.float64), torch.ones(1, 1)
    exact = verify(net, center, 0.4 - 2e-13, torch.tensor([0]), row.double())
    assert not bool(exact.attacked[0])
    inside = verify(net, center, 0.4 * (1 - 1e-6), torch.tensor([0]), row.double())
    assert not bool(exact.certified[0]) and bool(inside.certified[0])


@pytest.mark.parametrize("with_prior", [False, True])
def test_crown_ranges_contain_sampled_pre_activations(with_prior):
    """With `prior` (the program's own CROWN ranges, tighter through pools) the ranges
    are no wider and still contain every sampled pre-activation."""
    program = build_program(pool_net(2, 2, 0, False, seed=4))
    net = relu_form(program)
    centers = torch.randn(3, 25, dtype=torch.float64)
    eps = 0.7
    plain = crown_ranges(net, centers, eps)
    ranges = plain
    if with_prior:
        pre = propagate(program, InputSet.ball(centers, eps, "2")).pre
        ranges = crown_ranges(net, centers, eps, [None if k is None else pre[k]
                                                  for k in net.origin])
        assert any(k is not None for k in net.origin)
        for (lo, hi), (plo, phi) in zip(ranges, plain, strict=True):
            assert torch.all(lo >= plo) and torch.all(hi <= phi)
    d = torch.randn(3, 4000, 25, dtype=torch.float64)
    d = eps * d / d.norm(dim=2, keepdim=True) * torch.rand(3, 4000, 1, dtype=torch.float64)
    zs = net.pre_activations((centers[:, None] + d).reshape(-1, 25))
    for (lo, hi), z in zip(ranges, zs[:-1], strict=True):
        z = z.reshape(3, 4000, -1)
        assert torch.all(z >= lo[:, None] - 1e-12) and torch.all(z <= hi[:, None] + 1e-12)


def test_the_gate_with_bab_certifies_more_and_every_sample_survives_an_attack():
    graph = load_model(ROOT / "models" / "digits_cnn.onnx")
    sys.path.insert(0, str(ROOT / "models"))
    from digits_data import digits_split
    _, _, x, y = digits_split()
    x, y = x[:24].astype(np.float64), y[:24].astype(np.int64)
    logits = predict(graph, x).numpy()
    eps = 0.06
    plain = certify_local(graph, x, y, logits, eps)
    more = certify_local(graph, x, y, logits, eps, bab_domains=40)
    assert np.all(more.certified >= plain.certified)
    assert more.certified.sum() > plain.certified.sum()
    report = more.to_dict()["branch_and_bound"]
    assert report["samples_certified"] == more.certified.sum() - plain.certified.sum()
    for i in np.flatnonzero(more.certified & ~plain.certified):
        assert not attack(graph, x[i], y[i], eps), i


def test_bab_with_no_margin_left_open_reports_zero_tries():
    graph = mlp([6, 12, 10, 3], seed=21)
    x = np.random.default_rng(0).normal(size=(10, 6))
    logits = predict(graph, x).numpy()
    local = certify_local(graph, x, logits.argmax(axis=1), logits, 1e-6, bab_domains=20)
    assert local.certified.all()
    assert local.bab is not None and local.bab["margins_tried"] == 0


def test_bab_domains_is_a_whole_number_option_and_config_key(tmp_path):
    assert thresholds_from_table({"bab-domains": 50}, tmp_path, "cfg").bab_domains == 50
    with pytest.raises(UserError, match="bab-domains"):
        thresholds_from_table({"bab-domains": -1}, tmp_path, "cfg")
    with pytest.raises(UserError, match="bab-domains"):
        Thresholds(bab_domains=-3).validated()
