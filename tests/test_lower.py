"""Certified lower bounds: below the exact constant, reproducible, witnesses that replay,
and the sandwich's warnings."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lipcheck.estimators.autolip import autolip, bound_nodes
from lipcheck.estimators.exact import exact_lipschitz
from lipcheck.estimators.lower import (LowerConfig, load_witness, lower_bound, save_witness,
                                       witness_value)
from lipcheck.estimators.lower_search import top_direction
from lipcheck.estimators.netfn import NetFunction
from lipcheck.estimators.sandwich import Sandwich
from lipcheck.graph import Graph, Node, OpKind, ValueInfo
from lipcheck.interpreter import infer_shapes
from lipcheck.results import GlobalBound
from lipcheck.settings import Settings
from test_exact import brute_force_two_layer, random_net

FAST = LowerConfig(screen=8, ascent_steps=10, pair_steps=10)
SEARCH_ONLY = LowerConfig(screen=8, ascent_steps=10, pair_steps=10, exact_max_units=0)


def upper(graph: Graph) -> float:
    return autolip(graph, bound_nodes(graph, Settings())).value


@pytest.mark.parametrize("seed", range(4))
def test_lower_below_brute_force_exact_below_upper(seed: int) -> None:
    act, alpha = ("relu", 0.0) if seed % 2 else ("leaky_relu", 0.2)
    graph, (w1, w2), _ = random_net(np.random.default_rng(10 + seed), [6, 5, 3], act, alpha)
    exact = brute_force_two_layer(w1, w2, alpha)
    searched = lower_bound(graph, seed=seed, rounds=2, config=SEARCH_ONLY)
    full = lower_bound(graph, seed=seed, rounds=1, config=FAST)
    assert 0 < searched.value <= exact <= upper(graph) * (1 + 1e-9)
    assert searched.certified and searched.kind == "lower"
    # with the exact enumeration's witness the sandwich closes: lower = exact
    assert full.value <= exact and full.value == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("dims", [[2, 6, 5, 2], [3, 4, 3, 3, 2]])
def test_deep_lower_below_exact(dims: list[int]) -> None:
    graph, _, _ = random_net(np.random.default_rng(20), dims)
    exact = exact_lipschitz(graph)
    found = lower_bound(graph, seed=0, rounds=2, config=SEARCH_ONLY)
    assert exact.complete and 0 < found.value <= exact.value
    assert lower_bound(graph, seed=0, rounds=0, config=FAST).value == pytest.approx(
        exact.value, rel=1e-6)


def test_same_seed_same_value_and_witness() -> None:
    graph, _, _ = random_net(np.random.default_rng(30), [12, 16, 16, 4])
    a = lower_bound(graph, seed=7, rounds=2, config=SEARCH_ONLY)
    b = lower_bound(graph, seed=7, rounds=2, config=SEARCH_ONLY)
    c = lower_bound(graph, seed=8, rounds=2, config=SEARCH_ONLY)
    assert a.value == b.value and np.array_equal(a.witness_data.x, b.witness_data.x)
    assert c.value != a.value
    assert a.extra["rounds"] == 2 and a.extra["seed"] == 7


def test_witness_file_reproduces_value(tmp_path) -> None:
    graph, _, _ = random_net(np.random.default_rng(31), [5, 8, 3])
    found = lower_bound(graph, seed=0, rounds=1, config=SEARCH_ONLY)
    path = tmp_path / "w.npz"
    save_witness(str(path), found)
    witness = load_witness(str(path))
    assert found.extra["witness"] == str(path)
    assert witness.value == found.value and witness.method == found.method
    assert witness_value(graph, witness) == found.value
    # the quotient is recomputed independently with the interpreter
    from lipcheck.interpreter import run_graph
    fx, fy = (run_graph(graph, {"x": torch.tensor(v).reshape(1, -1)}, dtype=torch.float64)
              [graph.outputs[0]] for v in (witness.x, witness.y))
    quotient = float((fx - fy).norm() / torch.tensor(witness.x - witness.y).norm())
    assert found.value == pytest.approx(quotient, rel=1e-7) and found.value <= quotient


def test_input_range_keeps_witness_in_box() -> None:
    graph, _, _ = random_net(np.random.default_rng(32), [2, 8, 4, 2])
    found = lower_bound(graph, seed=0, rounds=2, input_range=(0.0, 1.0), config=SEARCH_ONLY)
    on_box = exact_lipschitz(graph, box=(0.0, 1.0))
    for point in (found.witness_data.x, found.witness_data.y):
        assert np.all((point >= 0.0) & (point <= 1.0))
    assert "restricted" in found.detail and found.extra["input_range"] == [0.0, 1.0]
    assert 0 < found.value <= on_box.value


def test_smooth_net_lower_bound() -> None:
    graph, _, _ = random_net(np.random.default_rng(33), [6, 40, 40, 3], "tanh")
    found = lower_bound(graph, seed=0, rounds=2, config=FAST)
    fn = NetFunction(graph)
    # the lower bound beats the Jacobian norm at the origin (gradient ascent from screening)
    jac = torch.autograd.functional.jacobian(fn, torch.zeros(6, dtype=torch.float64))
    assert float(torch.linalg.matrix_norm(jac, 2)) <= found.value <= upper(graph)


def test_power_iteration_matches_dense_svd() -> None:
    graph, _, _ = random_net(np.random.default_rng(34), [7, 30, 40], "relu")  # 40 > DENSE_OUT
    fn = NetFunction(graph)
    x = torch.randn(7, dtype=torch.float64)
    sigma, v = top_direction(fn, x, iters=500)
    jac = torch.autograd.functional.jacobian(fn, x)
    assert sigma == pytest.approx(float(torch.linalg.matrix_norm(jac, 2)), rel=1e-6)
    assert float((jac @ v).norm()) == pytest.approx(sigma, rel=1e-6)


def test_conv_net_lower_below_upper() -> None:
    gen = torch.Generator().manual_seed(0)
    constants = {"w": torch.randn(3, 1, 3, 3, generator=gen), "b": torch.randn(3, generator=gen),
                 "w2": torch.randn(2, 3, 3, 3, generator=gen)}
    nodes = [Node("c1", OpKind.CONV, ["x", "w", "b"], ["h"], {"pads": [1, 1, 1, 1]}),
             Node("r", OpKind.RELU, ["h"], ["a"]),
             Node("c2", OpKind.CONV, ["a", "w2"], ["y"], {"strides": [2, 2]})]
    graph = Graph([ValueInfo("x", (1, 1, 6, 6))], ["y"], nodes, constants)
    infer_shapes(graph)
    found = lower_bound(graph, seed=0, rounds=1, input_range=(0.0, 1.0), config=FAST)
    assert 0 < found.value <= upper(graph)


def bound(value: float, kind: str, method: str = "m", certified: bool = True) -> GlobalBound:
    return GlobalBound(method, value, certified, kind)


def test_sandwich_gap_and_warnings() -> None:
    tight = Sandwich(bound(1.0, "lower", "pairwise"), bound(1.2, "upper", "autolip"))
    assert tight.gap == pytest.approx(1.2) and tight.warnings == []
    loose = Sandwich(bound(1.0, "lower", "pairwise"), bound(3.0, "upper", "autolip"))
    (code, message), = loose.warnings
    assert code == "np_hard_gap" and "NP-hard" in message and "Scaman" in message
    assert "--lower-budget" in message and "seqlip-exact" in message and "3.00x" in message


def test_sandwich_reports_violation_as_bug() -> None:
    bad = Sandwich(bound(2.0, "lower", "pairwise"), bound(1.5, "upper", "sdp"))
    (code, message), = bad.warnings
    assert code == "bound_violation" and bad.violated
    assert "BUG" in message and "'sdp'" in message and "pairwise" in message
    assert not Sandwich(bound(1.0 + 1e-12, "lower"), bound(1.0, "upper")).violated


def test_sandwich_ignores_uncertified_or_missing() -> None:
    assert Sandwich(bound(1.0, "lower"), bound(9.0, "estimate", certified=False)).gap is None
    assert Sandwich(None, bound(9.0, "upper")).warnings == []
    assert Sandwich(bound(1.0, "lower"), bound(float("inf"), "upper")).gap is None
