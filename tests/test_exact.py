"""Exact constants of tiny ReLU-family nets against brute force, grids and autograd."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from lipcheck.errors import UserError
from lipcheck.estimators.exact.pwl_chain import mlp_graph, pwl_chain
from lipcheck.estimators.exact.regions import exact_lipschitz
from lipcheck.estimators.upper.autolip import autolip, bound_nodes
from lipcheck.settings import Settings


def random_net(rng: np.random.Generator, dims: list[int], act: str = "relu", alpha: float = 0.1):
    weights = [rng.standard_normal((dims[i + 1], dims[i])).astype(np.float32)
               for i in range(len(dims) - 1)]
    biases = [rng.standard_normal(d).astype(np.float32) for d in dims[1:]]
    graph = mlp_graph(weights, biases, act, alpha)
    return graph, [w.astype(np.float64) for w in weights], [b.astype(np.float64) for b in biases]


def brute_force_two_layer(w1: np.ndarray, w2: np.ndarray, alpha: float) -> float:
    """max over every sigma in {alpha, 1}^h of ||W2 diag(sigma) W1||, reachable or not."""
    return max(np.linalg.norm(w2 @ np.diag(s) @ w1, 2)
               for s in itertools.product((alpha, 1.0), repeat=w1.shape[0]))


def grid_max(weights: list[np.ndarray], biases: list[np.ndarray], alpha: float,
             lo: float, hi: float, n: int = 400) -> float:
    """Largest Jacobian norm over an n x n grid of a 2-input chain (patterns read off)."""
    axis = np.linspace(lo, hi, n)
    points = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    best, h, jac = 0.0, points.T, np.broadcast_to(np.eye(2), (len(points), 2, 2))
    for w, b in zip(weights[:-1], biases[:-1], strict=True):
        z = w @ h + b[:, None]
        slope = np.where(z > 0, 1.0, alpha).T                 # (points, units)
        jac = slope[:, :, None] * (w[None] @ jac)
        h = np.where(z > 0, z, alpha * z)
    jac = weights[-1][None] @ jac
    best = np.linalg.norm(jac, 2, axis=(1, 2)).max()
    return float(best)


def autograd_norm(graph, x: np.ndarray) -> float:
    from lipcheck.interpreter import run_graph
    name, shape = graph.inputs[0].name, graph.inputs[0].shape

    def f(v: torch.Tensor) -> torch.Tensor:
        return run_graph(graph, {name: v.reshape(shape)}, dtype=torch.float64, grad=True)[
            graph.outputs[0]].reshape(-1)

    jac = torch.autograd.functional.jacobian(f, torch.tensor(x, dtype=torch.float64))
    return float(torch.linalg.matrix_norm(jac, 2))


@pytest.mark.parametrize("act,alpha", [("relu", 0.0), ("leaky_relu", 0.1)])
def test_two_layer_full_rank_equals_brute_force(act: str, alpha: float) -> None:
    rng = np.random.default_rng(1)
    graph, (w1, w2), _ = random_net(rng, [10, 8, 3], act, alpha)
    result = exact_lipschitz(graph)
    truth = brute_force_two_layer(w1, w2, alpha)
    assert result.method == "exact-brute-force" and result.complete
    assert result.value == pytest.approx(truth, rel=1e-8) and result.value >= truth
    assert autograd_norm(graph, result.witness) == pytest.approx(truth, rel=1e-9)


def test_enumeration_agrees_with_brute_force_when_every_pattern_is_reached() -> None:
    rng = np.random.default_rng(2)
    graph, (w1, w2), _ = random_net(rng, [7, 6, 2])
    result = exact_lipschitz(graph, box=(-1e3, 1e3))  # a box forces the LP enumeration
    assert result.method == "exact-enumeration" and result.complete
    assert result.regions == 2 ** 6
    assert result.value == pytest.approx(brute_force_two_layer(w1, w2, 0.0), rel=1e-8)


@pytest.mark.parametrize("dims,act", [([2, 8, 3], "relu"), ([2, 5, 4, 2], "relu"),
                                      ([2, 4, 4, 2], "leaky_relu")])
def test_narrow_input_exact_against_grid_and_autograd(dims: list[int], act: str) -> None:
    alpha = 0.1 if act == "leaky_relu" else 0.0
    graph, weights, biases = random_net(np.random.default_rng(3), dims, act, alpha)
    result = exact_lipschitz(graph)
    assert result.complete
    assert result.value >= grid_max(weights, biases, alpha, -8, 8) * (1 - 1e-12)
    if len(dims) == 3:
        assert result.value <= brute_force_two_layer(weights[0], weights[1], alpha) * (1 + 1e-8)
        assert result.value < brute_force_two_layer(weights[0], weights[1], alpha)  # n_in < h
    assert autograd_norm(graph, result.witness) == pytest.approx(result.lower, rel=1e-9)
    assert result.lower == pytest.approx(result.value, rel=1e-8)
    upper = autolip(graph, bound_nodes(graph, Settings())).value
    assert result.value <= upper * (1 + 1e-9)


def test_box_restricts_the_regions() -> None:
    graph, weights, biases = random_net(np.random.default_rng(4), [2, 6, 4, 2])
    whole = exact_lipschitz(graph)
    boxed = exact_lipschitz(graph, box=(0.0, 0.5))
    assert boxed.complete and boxed.regions < whole.regions
    assert grid_max(weights, biases, 0.0, 0.0, 0.5) * (1 - 1e-12) <= boxed.value <= whole.value
    assert np.all((boxed.witness >= 0.0) & (boxed.witness <= 0.5))


def test_budget_exhaustion_is_reported() -> None:
    graph, _, _ = random_net(np.random.default_rng(5), [2, 6, 4, 2])
    full = exact_lipschitz(graph)
    cut = exact_lipschitz(graph, max_lps=3)
    assert full.complete and not cut.complete
    assert "incomplete" in cut.detail and cut.lps <= 3
    assert cut.value <= full.value


def test_chain_refuses_smooth_activations() -> None:
    graph, _, _ = random_net(np.random.default_rng(6), [3, 4, 2], "tanh")
    with pytest.raises(UserError, match="act0"):
        pwl_chain(graph)
