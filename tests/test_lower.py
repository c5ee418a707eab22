"""Certified lower bounds: below the exact constant, reproducible, witnesses that replay,
and the sandwich's warnings."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_exact import brute_force_two_layer, random_net

from lipcheck.estimators.exact.regions import exact_lipschitz
from lipcheck.estimators.lower.netfn import NetFunction
from lipcheck.estimators.lower.rounds import (
    DEFAULT_ROUNDS,
    LowerConfig,
    load_witness,
    lower_bound,
    save_witness,
    witness_value,
)
from lipcheck.estimators.lower.search import jacobians, top_direction, top_directions
from lipcheck.estimators.sandwich import Sandwich
from lipcheck.estimators.upper.autolip import autolip, bound_nodes
from lipcheck.graph import Graph, Node, OpKind, ValueInfo
from lipcheck.interpreter import infer_shapes
from lipcheck.results import GlobalBound
from lipcheck.settings import Settings

FAST = LowerConfig(screen=8, starts_per_round=4, ascent_steps=10, pair_steps=10)
SEARCH_ONLY = LowerConfig(screen=8, starts_per_round=4, ascent_steps=10, pair_steps=10,
                          exact_max_units=0, pattern_max_units=0)


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


def conv_net(reshape_to: list[int] | None = None) -> Graph:
    """Conv-Relu-MaxPool-Conv on a 1x1x6x6 input, then optionally a Reshape."""
    gen = torch.Generator().manual_seed(0)
    constants = {"w": torch.randn(3, 1, 3, 3, generator=gen), "b": torch.randn(3, generator=gen),
                 "w2": torch.randn(2, 3, 3, 3, generator=gen)}
    nodes = [Node("c1", OpKind.CONV, ["x", "w", "b"], ["h"], {"pads": [1, 1, 1, 1]}),
             Node("r", OpKind.RELU, ["h"], ["a"]),
             Node("p", OpKind.MAX_POOL, ["a"], ["m"], {"kernel_shape": [2, 2], "strides": [1, 1]}),
             Node("c2", OpKind.CONV, ["m", "w2"], ["y"], {"strides": [2, 2]})]
    out = "y"
    if reshape_to is not None:
        nodes.append(Node("flat", OpKind.RESHAPE, ["y"], ["z"], {"shape": reshape_to}))
        out = "z"
    graph = Graph([ValueInfo("x", (1, 1, 6, 6))], [out], nodes, constants)
    infer_shapes(graph)
    return graph


def test_conv_net_lower_below_upper() -> None:
    graph = conv_net()
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
    assert "per-layer norms" in message


def test_the_gap_advice_follows_the_upper_method() -> None:
    """An sdp-net upper bound is narrowed by a longer sdp-net search (its count follows the
    budget), not by the methods it already beats; an SDP bound is not a norm product."""
    (_, net), = Sandwich(bound(1.0, "lower", "pairwise"), bound(3.0, "upper", "sdp-net")).warnings
    assert "--method sdp-net with a larger --time-budget" in net and "seqlip-exact" not in net
    assert "slope as free" in net and "per-layer norms" not in net
    (_, conv), = Sandwich(bound(1.0, "lower", "pairwise"), bound(3.0, "upper", "sdp-conv")).warnings
    assert "slope as free" in conv and "seqlip-exact" in conv


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


def dense_jacobian(fn: NetFunction, x: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.jacobian(fn, x)


@pytest.mark.parametrize("reshape_to,batched", [([1, 8], True), ([2, 4], False), (None, True)])
def test_batched_net_and_jacobians_match_row_by_row(reshape_to, batched: bool) -> None:
    fn = NetFunction(conv_net(reshape_to))
    assert (fn.batched is not None) == batched   # a Reshape whose leading dim is not 1: rows
    xs = torch.randn(5, fn.n_in, dtype=torch.float64)
    rows = torch.stack([fn.exact(x) for x in xs])
    assert torch.allclose(fn.exact_batch(xs), rows, rtol=1e-12, atol=1e-12)
    jac = jacobians(fn, xs)
    for x, j in zip(xs, jac, strict=True):
        assert torch.allclose(j, dense_jacobian(fn, x), rtol=1e-12, atol=1e-12)
    sigmas, vs = top_directions(fn, xs)
    for x, s, v in zip(xs, sigmas, vs, strict=True):
        dense = dense_jacobian(fn, x)
        assert float(s) == pytest.approx(float(torch.linalg.matrix_norm(dense, 2)), rel=1e-10)
        assert float((dense @ v).norm()) == pytest.approx(float(s), rel=1e-10)


def test_smoothed_net_rows_are_independent_and_converge() -> None:
    fn = NetFunction(conv_net([1, 8]))
    xs = torch.randn(4, fn.n_in, dtype=torch.float64)
    exact = fn.exact_batch(xs)
    fn.smoothing = 5.0
    smooth = fn.batch(xs)
    assert torch.allclose(smooth[1], fn.batch(xs[1:2])[0], rtol=1e-12, atol=1e-12)
    assert float((smooth - exact).norm()) > 1e-3 * float(exact.norm())
    fn.smoothing = 1e7   # smoothed Relu and MaxPool tend to the exact ones
    assert torch.allclose(fn.batch(xs), exact, rtol=1e-5, atol=1e-5 * float(exact.abs().max()))


def test_default_runs_identical_values_and_witnesses() -> None:
    graph = conv_net([1, 8])
    runs = [lower_bound(graph, seed=3, rounds=DEFAULT_ROUNDS) for _ in range(2)]
    a, b = runs
    assert a.value == b.value > 0 and a.method == b.method
    assert np.array_equal(a.witness_data.x, b.witness_data.x)
    assert np.array_equal(a.witness_data.y, b.witness_data.y)
    assert not a.extra["cut_by_budget"] and a.extra["rounds"] == DEFAULT_ROUNDS
    assert witness_value(graph, a.witness_data) == a.value <= upper(graph)


def test_no_sympy_import() -> None:
    """torch.autograd.grad with explicit grad_outputs imports sympy (seconds): the search
    must differentiate scalars only. Checked in a fresh interpreter."""
    import subprocess
    import sys
    code = ("import sys, torch\n"
            "from test_lower import conv_net\n"
            "from lipcheck.estimators.lower.rounds import lower_bound, LowerConfig\n"
            "lower_bound(conv_net([1, 8]), rounds=1, config=LowerConfig(screen=4, "
            "starts_per_round=2, ascent_steps=2, pair_steps=2))\n"
            "print('sympy' in sys.modules, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).parent))
    assert out.stdout.split() == ["False", "False"]


def test_time_budget_caps_a_count_based_search():
    """--lower-budget is a hard cap even with a round count: the search stops soon after it
    and says it was cut (large models once ran for minutes past a 10 s budget)."""
    import time as _time

    from graphs import conv_net
    graph = conv_net(seed=0, size=12)
    start = _time.perf_counter()
    found = lower_bound(graph, budget_s=0.05, seed=0, rounds=50)
    assert _time.perf_counter() - start < 20
    assert found.extra["cut_by_budget"] and found.extra["rounds"] < 50
    assert found.certified and found.value >= 0
    import re
    screened = int(re.search(r"(\d+) random starts", found.detail).group(1))
    assert screened < LowerConfig().screen  # the screen itself stopped at the cap


def lead2_net(transpose: bool) -> Graph:
    """PRelu -> MaxPool1d on a 2x3x8 input: the model's own batch of 2 (issue 16);
    with `transpose` the batch axis moves before the activation (rows must run alone)."""
    gen = torch.Generator().manual_seed(1)
    slope = torch.rand(3, 1, generator=gen) * 0.5
    constants = {"s": slope[:, :, None] if transpose else slope}
    nodes = [Node("t", OpKind.TRANSPOSE, ["x"], ["xt"], {"perm": [1, 0, 2]})] if transpose else []
    nodes += [Node("a", OpKind.PRELU, ["xt" if transpose else "x", "s"], ["h"]),
              Node("p", OpKind.MAX_POOL, ["h"], ["y"], {"kernel_shape": [3], "strides": [2]})]
    graph = Graph([ValueInfo("x", (2, 3, 8))], ["y"], nodes, constants)
    infer_shapes(graph)
    return graph


@pytest.mark.parametrize("transpose", [False, True])
def test_fixed_leading_batch_of_two_matches_row_by_row(transpose: bool) -> None:
    fn = NetFunction(lead2_net(transpose))
    assert (fn.batched is not None) == (not transpose)
    xs = torch.randn(5, fn.n_in, dtype=torch.float64)
    rows = torch.stack([fn.exact(x) for x in xs])
    assert torch.allclose(fn.exact_batch(xs), rows, rtol=1e-12, atol=1e-12)
    sharp = torch.tensor([2.0, 3.0, 5.0, 7.0, 11.0], dtype=torch.float64)
    fn.smoothing = sharp
    smooth = fn.batch(xs)
    for i, x in enumerate(xs):
        fn.smoothing = float(sharp[i])
        assert torch.allclose(smooth[i], fn(x), rtol=1e-12, atol=1e-12)
    fn.smoothing = None


@pytest.mark.parametrize("transpose", [False, True])
def test_fixed_leading_batch_lower_bound_below_upper(transpose: bool) -> None:
    graph = lead2_net(transpose)
    found = lower_bound(graph, seed=0, rounds=1, config=FAST)
    assert 0 < found.value <= upper(graph) * (1 + 1e-9)
