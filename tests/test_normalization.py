"""Normalisation rules against dense Jacobian SVDs (float64).

The centred normalisations' constants are exact: equal to the Jacobian norm at a constant
input (RMSNorm: at 0) and >= every Jacobian norm found elsewhere. LRN's is a certified
bound: >= every norm found (random points and gradient ascent), within a small factor."""
from __future__ import annotations

import math

import pytest
import torch
from test_rules_structural import bound_of, jacobian_norm, make

from lipcheck.graph import OpKind
from lipcheck.rules.normalization import centred_scale_norm

EPS = 1e-2  # large enough that float64 Jacobians at the maximiser are accurate


def _centring(d: int) -> torch.Tensor:
    return torch.eye(d, dtype=torch.float64) - 1.0 / d


@pytest.mark.parametrize("g", [
    [1.0, 2.0, 3.0, 4.0], [3.0, 3.0, 1.0], [-5.0, 1.0, 1.0, 0.5, 0.0], [2.0], [0.0, 0.0],
    [1.0, -1.0, 1.0], [7.0, 1.0], torch.randn(40, generator=torch.Generator().manual_seed(1)),
    torch.tensor([2.0, 1.0]).repeat_interleave(50),
])
def test_centred_scale_norm_is_the_spectral_norm_of_g_times_centring(g) -> None:
    g = torch.as_tensor(g, dtype=torch.float64)
    exact = float(torch.linalg.matrix_norm(torch.diag(g) @ _centring(g.numel()), ord=2))
    got = centred_scale_norm(g)
    assert exact * (1 - 1e-12) <= got <= exact * (1 + 1e-8) + 1e-300


def _assert_exact(graph, maximiser: torch.Tensor, scale: float = 3.0) -> None:
    """Bound == ||J|| at the known maximiser, and >= ||J|| at random points of many sizes."""
    bound = bound_of(graph)
    assert bound.certified and math.isfinite(bound.value)
    at_max = jacobian_norm(graph, [maximiser])
    assert at_max * (1 - 1e-12) <= bound.value <= at_max * (1 + 1e-6), (bound.value, at_max)
    gen = torch.Generator().manual_seed(0)
    for k in range(12):
        x = torch.randn(maximiser.shape, generator=gen, dtype=torch.float64) * scale ** (k - 6)
        assert jacobian_norm(graph, [x + maximiser]) <= bound.value * (1 + 1e-9)


def test_layer_norm_constant_is_exact() -> None:
    g = torch.tensor([[0.5, -2.0, 1.0], [3.0, 0.1, 1.0]])
    graph = make(OpKind.LAYER_NORM, [(2, 2, 3)], {"axis": 1, "epsilon": EPS},
                 {"g": g, "b": torch.randn(2, 3)})
    _assert_exact(graph, torch.full((2, 2, 3), 0.7, dtype=torch.float64))


def test_layer_norm_scale_broadcast_over_leading_groups() -> None:
    graph = make(OpKind.LAYER_NORM, [(3, 4)], {"epsilon": EPS}, {"g": torch.tensor([1., 2, 2, -4])})
    _assert_exact(graph, torch.ones(3, 4, dtype=torch.float64))


def test_instance_norm_constant_is_exact() -> None:
    graph = make(OpKind.INSTANCE_NORM, [(2, 3, 2, 2)], {"epsilon": EPS},
                 {"g": torch.tensor([1.0, -3.0, 0.5]), "b": torch.zeros(3)})
    _assert_exact(graph, torch.ones(2, 3, 2, 2, dtype=torch.float64))


def test_group_norm_constant_is_exact() -> None:
    g = torch.tensor([1.0, 2.0, -0.5, 0.5, 3.0, 1.0])
    graph = make(OpKind.GROUP_NORM, [(1, 6, 2, 1)], {"num_groups": 2, "epsilon": EPS},
                 {"g": g, "b": torch.randn(6)})
    _assert_exact(graph, torch.full((1, 6, 2, 1), -1.5, dtype=torch.float64))


def test_group_norm_runs_like_torch() -> None:
    graph = make(OpKind.GROUP_NORM, [(2, 4, 3)], {"num_groups": 2, "epsilon": 1e-5},
                 {"g": torch.randn(4), "b": torch.randn(4)})
    from lipcheck.interpreter import run_graph
    x = torch.randn(2, 4, 3)
    expected = torch.nn.functional.group_norm(x, 2, graph.constants["g"], graph.constants["b"])
    torch.testing.assert_close(run_graph(graph, {"x0": x})["y"], expected)


def test_rms_norm_constant_is_exact() -> None:
    graph = make(OpKind.RMS_NORM, [(2, 5)], {"epsilon": EPS},
                 {"g": torch.tensor([1., -4, 2, 0, 3])})
    _assert_exact(graph, torch.zeros(2, 5, dtype=torch.float64))


@pytest.mark.parametrize("op, shape, attrs, consts", [
    (OpKind.LAYER_NORM, (2, 3), {"epsilon": 0.0}, {"g": torch.ones(3)}),
    (OpKind.INSTANCE_NORM, (1, 2, 3), {"epsilon": 0.0}, {"g": torch.ones(2), "b": torch.zeros(2)}),
    (OpKind.GROUP_NORM, (1, 2, 3), {"epsilon": 0.0, "num_groups": 1},
     {"g": torch.ones(2), "b": torch.zeros(2)}),
    (OpKind.RMS_NORM, (2, 3), {"epsilon": 0.0}, {"g": torch.ones(3)}),
    (OpKind.LRN, (1, 3, 2, 2), {"size": 3, "bias": 0.0}, {}),
])
def test_only_the_truly_unbounded_settings_are_unbounded(op, shape, attrs, consts) -> None:
    bound = bound_of(make(op, [shape], attrs, consts))
    assert math.isinf(bound.value) and bound.warnings[0][0] == "unbounded_op"
    attrs = {**attrs, "epsilon": 1e-5, "bias": 1.0}
    assert math.isfinite(bound_of(make(op, [shape], attrs, consts)).value)


def test_layer_norm_with_an_input_dependent_scale_is_a_product() -> None:
    bound = bound_of(make(OpKind.LAYER_NORM, [(2, 3), (3,)], {"epsilon": 1e-5}))
    assert math.isinf(bound.value)


def test_groups_of_one_entry_give_a_constant_output() -> None:
    graph = make(OpKind.INSTANCE_NORM, [(2, 3, 1)], {}, {"g": torch.ones(3), "b": torch.ones(3)})
    assert bound_of(graph).value == 0.0
    assert jacobian_norm(graph, [torch.randn(2, 3, 1, dtype=torch.float64)]) == 0.0


def _ascend(graph, x: torch.Tensor, steps: int = 60) -> float:
    """Gradient ascent on ||J v|| (power-iteration direction) from x; the best norm seen."""
    from lipcheck.interpreter import run_graph
    best = 0.0
    x = x.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        jac = torch.autograd.functional.jacobian(
            lambda t: run_graph(graph, {"x0": t}, dtype=torch.float64, grad=True)["y"].reshape(-1),
            x, create_graph=True)
        norm = torch.linalg.matrix_norm(jac.reshape(jac.shape[0], -1), ord=2)
        best = max(best, float(norm.detach()))
        (grad,) = torch.autograd.grad(norm, x)
        x = (x + 0.3 * grad / (grad.norm() + 1e-12) * (1 + x.norm())).detach()
    return best


@pytest.mark.parametrize("size, alpha, beta, bias", [
    (3, 0.5, 0.75, 1.0), (5, 1e-4 * 1e4, 0.75, 2.0), (2, 1.0, 0.3, 0.5), (3, 2.0, 1.5, 1.0)])
def test_lrn_bound_dominates_every_jacobian_found(size, alpha, beta, bias) -> None:
    attrs = {"size": size, "alpha": alpha, "beta": beta, "bias": bias}
    graph = make(OpKind.LRN, [(1, 4, 1, 1)], attrs)
    bound = bound_of(graph).value
    gen = torch.Generator().manual_seed(0)
    found = jacobian_norm(graph, [torch.zeros(1, 4, 1, 1, dtype=torch.float64)])
    assert found == pytest.approx(bias ** -beta)
    for k in range(30):
        x = torch.randn(1, 4, 1, 1, generator=gen, dtype=torch.float64) * 2.0 ** (k % 10 - 4)
        found = max(found, jacobian_norm(graph, [x]))
        if k < 4:
            found = max(found, _ascend(graph, x))
    print(f"LRN {attrs}: bound {bound:.4f}, largest Jacobian norm found {found:.4f}")
    assert found <= bound * (1 + 1e-12)
    assert bound <= 1.5 * found  # a bound, not a vacuous one
