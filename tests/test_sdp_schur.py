"""LipSDP-Neuron by descent on the multipliers (upper/sdp_schur.py, issue 12 item 3):
rho(Lam) against the assembled matrix, its gradient against finite differences, the
certified value against exact constants, the barrier's optimum and Jacobian norms."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from test_time_caps import mlp

from lipcheck.estimators.upper import sdp_schur
from lipcheck.estimators.upper.autolip import bound_nodes
from lipcheck.estimators.upper.eclipse import eclipse, fast_start
from lipcheck.estimators.upper.global_bounds import QUICK_SDP_DIM, global_bounds
from lipcheck.estimators.upper.sdp import lipsdp_neuron
from lipcheck.estimators.upper.sdp_certificate import assemble, reduce_ends
from lipcheck.settings import Settings

SLOPES = [[(0.0, 1.0)] * 3, [(0.1, 1.0), (0.0, 1.0), (0.2, 0.5)]]


def chain(seed: int, widths: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((b, a)) / math.sqrt(a) for a, b in itertools.pairwise(widths)]


def start(weights, slopes, seed: int = 0):
    """ECLipsE-Fast's multipliers, each entry moved by up to a factor e^0.3 (feasible)."""
    rng = np.random.default_rng(seed)
    lams = fast_start(weights, slopes)[1]
    return [lam * np.exp(0.3 * rng.uniform(-1, 1, len(lam))) for lam in lams]


@pytest.mark.parametrize("slopes", SLOPES)
def test_rho_is_the_smallest_psd_shift_of_the_assembled_matrix(slopes) -> None:
    w = chain(0, [7, 9, 8, 6, 3])
    lams = start(w, slopes)
    rho = sdp_schur._Problem(w, slopes).value(lams)[0]
    low = np.linalg.eigvalsh(assemble(w, slopes, rho * (1 - 1e-6), lams))[0]
    high = np.linalg.eigvalsh(assemble(w, slopes, rho * (1 + 1e-6), lams))[0]
    assert low < 0 <= high


@pytest.mark.parametrize("slopes", SLOPES)
def test_gradient_matches_central_differences(slopes) -> None:
    w = chain(1, [7, 9, 8, 6, 3])
    lams = start(w, slopes, seed=1)
    problem = sdp_schur._Problem(w, slopes)
    grads = problem.value(lams)[1]
    for layer, unit in itertools.product(range(3), range(3)):
        up, down = [lam.copy() for lam in lams], [lam.copy() for lam in lams]
        up[layer][unit] *= math.exp(1e-6)
        down[layer][unit] *= math.exp(-1e-6)
        numeric = (problem.value(up)[0] - problem.value(down)[0]) / 2e-6
        assert grads[layer][unit] == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def exact_two_layer(w1: np.ndarray, w2: np.ndarray, lo: float, hi: float) -> float:
    return max(np.linalg.norm(w2 @ np.diag(s) @ w1, 2)
               for s in itertools.product([lo, hi], repeat=w1.shape[0]))


@pytest.mark.parametrize("seed,slopes", [(0, (0.0, 1.0)), (1, (0.1, 1.0)), (2, (0.0, 0.5))])
def test_certified_value_between_the_exact_constant_and_eclipse_fast(seed, slopes) -> None:
    """Every pattern is reachable (hidden <= inputs), so the constant is the largest
    pattern norm; the descent's certified value lies between it and its start, and not
    below the barrier method's (near-optimal) LipSDP value."""
    w = chain(seed, [12, 10, 3])
    truth = exact_two_layer(w[0], w[1], *slopes)
    got = sdp_schur.lipsdp_descent(w, [slopes], steps=200)
    assert got.certified, got.detail
    assert truth <= got.value <= eclipse(w, [slopes], fast=True).value * (1 + 1e-9)
    assert got.value >= lipsdp_neuron(w, [slopes]).value * (1 - 1e-6)


def test_descent_approaches_the_barrier_optimum_and_is_reproducible() -> None:
    w = chain(3, [20, 30, 30, 4])
    slopes = [(0.0, 1.0)] * 2
    first = sdp_schur.lipsdp_descent(w, slopes, steps=300)
    again = sdp_schur.lipsdp_descent(w, slopes, steps=300)
    barrier = lipsdp_neuron(w, slopes).value
    fast = eclipse(w, slopes, fast=True).value
    assert first.value == again.value
    assert barrier * (1 - 1e-6) <= first.value <= barrier + 0.1 * (fast - barrier)


def test_a_deadline_in_the_past_keeps_the_start_and_says_it_was_cut() -> None:
    w = reduce_ends(chain(4, [10, 12, 12, 3]))
    slopes = [(0.0, 1.0)] * 2
    lams = [lam / 2 for lam in fast_start(w, slopes)[1]]
    found = sdp_schur.descend(w, slopes, lams, steps=50, deadline=0.0)
    assert found.steps == 0 and found.cut_by_budget
    assert found.rho == pytest.approx(sdp_schur._Problem(w, slopes).value(lams)[0], rel=1e-12)


def jacobian_norms(graph, count: int, seed: int = 0) -> float:
    """The largest ||J(x)|| over random points (float64 dense Jacobians)."""
    ws = [graph.constants[f"w{i}"].double() for i in range(3)]
    bs = [graph.constants[f"b{i}"].double() for i in range(3)]
    gen = torch.Generator().manual_seed(seed)
    best = 0.0
    for scale in (0.3, 1.0, 3.0):
        x = scale * torch.randn(count, ws[0].shape[1], generator=gen, dtype=torch.float64)
        z1 = x @ ws[0].T + bs[0]
        z2 = torch.relu(z1) @ ws[1].T + bs[1]
        jac = (ws[2] * (z2 > 0)[:, None, :]) @ ws[1] @ ((z1 > 0)[:, :, None] * ws[0])
        best = max(best, float(torch.linalg.matrix_norm(jac, 2).max()))
    return best


def test_default_sdp_on_a_chain_above_the_barrier_size_is_certified_and_sound() -> None:
    """30-120-120-5: the LipSDP matrix (270) is above the default set's barrier size, so
    `sdp:quick` runs the descent; its bound is above every Jacobian norm found and below
    ECLipsE-Fast's."""
    graph = mlp([30, 120, 120, 5])
    assert 30 + 240 > QUICK_SDP_DIM
    settings = Settings()
    bounds = {b.method: b for b in global_bounds(graph, bound_nodes(graph, settings),
                                                 ["sdp:quick", "eclipse-fast"], settings)}
    sdp = bounds["sdp"]
    assert sdp.certified and "Adam on the multipliers" in sdp.detail
    assert jacobian_norms(graph, 2000) <= sdp.value < bounds["eclipse-fast"].value
def test_descent_holds_the_time_cap_with_its_certificate() -> None:
    """20-700-700-10: 300 steps take far longer than the cap on any machine (each is
    ~1e9 multiply-adds); the steps stop so that the float64 check still ends in time."""
    import time

    from test_time_caps import slack
    graph = mlp([20, 700, 700, 10])
    weights = [graph.constants[f"w{i}"].double().numpy() for i in range(3)]
    cap = 4.0
    began = time.monotonic()
    got = sdp_schur.lipsdp_descent(weights, [(0.0, 1.0)] * 2, steps=300, seconds=cap)
    assert time.monotonic() - began <= cap + slack(cap)
    assert got.cut_by_budget and got.certified, got.detail


def test_default_set_leaves_conv_chains_to_sdp_conv() -> None:
    """digits_cnn's conv chain (LipSDP matrix above the default barrier size, below the
    default descent size: the descent ran there before this gate, 0.6 -> 6 s of the
    default global phase) is left to sdp-conv by sdp:quick."""
    from pathlib import Path

    from lipcheck.loaders.dispatch import load_model
    loaded = load_model(str(Path(__file__).resolve().parent.parent / "models" / "digits_cnn.onnx"))
    graph = loaded[0] if isinstance(loaded, tuple) else loaded
    settings = Settings()
    nodes = bound_nodes(graph, settings)
    quick = global_bounds(graph, nodes, ["sdp:quick"], settings)
    assert all("Adam on the multipliers" not in b.detail for b in quick)
