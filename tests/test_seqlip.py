"""SeqLip: chains, exact pair maxima, greedy, low rank, whole-network composition."""
from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import scipy.linalg
import torch
from graphs import conv_net, max_jacobian_norm, mlp

from lipcheck.estimators.exact.pairmax import branch_and_bound, enumerate_max
from lipcheck.estimators.heuristic.greedy import ascent_max, greedy_max, sign_ascent
from lipcheck.estimators.upper import seqlip
from lipcheck.estimators.upper.autolip import bound_nodes
from lipcheck.estimators.upper.chains import find_chains
from lipcheck.estimators.upper.global_bounds import (
    DEFAULT_METHODS,
    expand_methods,
    global_bounds,
    tightest_certified,
)
from lipcheck.estimators.upper.seqlip import (
    Factor,
    dense_factor,
    exact_chain,
    greedy_chain,
    pair_matrices,
    randomized_factor,
)
from lipcheck.graph import OpKind
from lipcheck.settings import Settings

SLOPES = [(0.0, 1.0), (0.1, 1.0), (0.0, 0.25), (-1.0, 1.0)]


def brute_max(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    return max(np.linalg.norm(x @ np.diag(s) @ y, 2)
               for s in itertools.product([lo, hi], repeat=x.shape[1]))


def reference_greedy(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """The paper's rule written plainly: one full SVD per candidate flip."""
    sigma = np.full(x.shape[1], hi)
    current = np.linalg.norm(x @ np.diag(sigma) @ y, 2)
    while True:
        best, best_i = current, -1
        for i in range(len(sigma)):
            trial = sigma.copy()
            trial[i] = lo if sigma[i] == hi else hi
            value = np.linalg.norm(x @ np.diag(trial) @ y, 2)
            if value > best:
                best, best_i = value, i
        if best_i < 0:
            return current
        sigma[best_i] = lo if sigma[best_i] == hi else hi
        current = best


@pytest.mark.parametrize("lo,hi", SLOPES)
def test_enumeration_and_branch_and_bound_find_the_brute_force_max(rng, lo, hi):
    x, y = rng.standard_normal((4, 10)), rng.standard_normal((10, 6))
    truth = brute_max(x, y, lo, hi)
    e = enumerate_max(x, y, lo, hi)
    b = branch_and_bound(x, y, lo, hi, time.monotonic() + 20)
    assert e.certified and b.certified and b.complete
    assert truth <= e.value <= truth * (1 + 1e-6)
    assert truth <= b.value <= truth * (1 + 1e-6)


def test_branch_and_bound_out_of_time_is_still_an_upper_bound(rng):
    x, y = rng.standard_normal((12, 14)), rng.standard_normal((14, 12))
    b = branch_and_bound(x, y, 0.0, 1.0, time.monotonic() + 0.02)
    truth = enumerate_max(x, y, 0.0, 1.0).value / (1 + 1.01e-7)   # enumeration: tested above
    assert b.certified and not b.complete and b.value >= truth and b.cut_by_budget


def test_branch_and_bound_node_cap_is_reproducible_and_still_an_upper_bound(rng):
    x, y = rng.standard_normal((12, 14)), rng.standard_normal((14, 12))
    truth = enumerate_max(x, y, 0.0, 1.0).value / (1 + 1.01e-7)
    runs = [branch_and_bound(x, y, 0.0, 1.0, max_nodes=5) for _ in range(2)]
    assert runs[0].value == runs[1].value and not runs[0].complete and not runs[0].cut_by_budget
    assert runs[0].certified and runs[0].value >= truth


@pytest.mark.parametrize("lo,hi,refresh", [s + (r,) for s in SLOPES for r in (1, 3, 12)])
def test_greedy_follows_the_papers_rule(rng, lo, hi, refresh):
    x, y = rng.standard_normal((8, 30)), rng.standard_normal((30, 9))
    ours = greedy_max(x, y, lo, hi, refresh=refresh)   # SVD refreshed every `refresh` flips
    assert ours.finished
    assert ours.value == pytest.approx(reference_greedy(x, y, lo, hi), rel=1e-12)
    want = np.linalg.norm(x @ np.diag(ours.sigma) @ y, 2)
    np.testing.assert_allclose(ours.value, want, rtol=1e-12)



def _norm(x: np.ndarray, y: np.ndarray, sigma: np.ndarray) -> float:
    return float(np.linalg.norm(x @ np.diag(sigma) @ y, 2))


@pytest.mark.parametrize("lo,hi", SLOPES)
def test_ascent_ends_at_a_single_flip_local_max_below_the_brute_max(rng, lo, hi):
    x, y = rng.standard_normal((6, 13)), rng.standard_normal((13, 5))
    runs = [ascent_max(x, y, lo, hi) for _ in range(2)]
    r = runs[0]
    assert r.value == runs[1].value and np.array_equal(r.sigma, runs[1].sigma)   # reproducible
    assert set(r.sigma) <= {lo, hi} and r.finished
    assert r.value == pytest.approx(_norm(x, y, r.sigma), rel=1e-12)
    at_hi, best = _norm(x, y, np.full(13, hi)), brute_max(x, y, lo, hi)
    assert at_hi * (1 - 1e-12) <= r.value <= best * (1 + 1e-12)
    for j in range(13):   # finished: no single flip raises the norm (the paper's stopping rule)
        flipped = r.sigma.copy()
        flipped[j] = lo if r.sigma[j] == hi else hi
        assert _norm(x, y, flipped) <= r.value * (1 + 1e-9)


def test_sign_ascent_is_monotone_and_stops_at_a_fixed_point(rng):
    x, y = rng.standard_normal((15, 400)), rng.standard_normal((400, 12))
    start = np.ones(400)
    sigma, steps = sign_ascent(x, y, 0.0, 1.0, start)
    assert steps > 1 and set(sigma) <= {0.0, 1.0}
    assert _norm(x, y, sigma) > _norm(x, y, start)
    u, _, vt = np.linalg.svd(x @ np.diag(sigma) @ y)
    c = (u[:, 0] @ x) * (y @ vt[0])
    proposal = np.where(c > 0, 1.0, np.where(c < 0, 0.0, sigma))
    assert np.array_equal(proposal, sigma) \
        or _norm(x, y, proposal) <= _norm(x, y, sigma) * (1 + 1e-12)


def test_large_pairs_take_the_ascent_and_stay_uncertified(rng, monkeypatch):
    monkeypatch.setattr(seqlip, "ASCENT_MIN_UNITS", 8)
    factors = [dense_factor_of(rng.standard_normal((12, 7))),
               dense_factor_of(rng.standard_normal((4, 12)))]
    result = greedy_chain(factors, [(0.0, 1.0)], float("inf"))
    ((x, y),) = pair_matrices(factors)
    assert not result.certified and "linearized ascent" in result.detail
    assert result.value == ascent_max(x, y, 0.0, 1.0).value
    assert result.value <= brute_max(x, y, 0.0, 1.0) * (1 + 1e-12)


def dense_factor_of(w: np.ndarray) -> Factor:
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    return Factor(u, s, vt.T)

@pytest.mark.parametrize("seed", range(6))
def test_exact_seqlip_is_the_exact_constant_of_two_layer_relu_nets(seed):
    hidden = 8 + seed
    g = mlp([hidden + 3, hidden, 4], seed=seed)
    s = Settings()
    (chain,) = find_chains(g, bound_nodes(g, s), s)
    w1, w2 = (g.constants[k].double().numpy() for k in ("w0", "w1"))
    truth = brute_max(w2, w1, 0.0, 1.0)  # ||W2 diag(s) W1|| = ||W1^T diag(s) W2^T||
    result = exact_chain(chain, s, time.monotonic() + 20)
    assert result.certified and result.complete
    assert truth <= result.value <= truth * (1 + 1e-6)


def test_chains_of_an_mlp_and_a_conv_net():
    s = Settings()
    g = mlp([6, 5, 4, 3], act=OpKind.LEAKY_RELU, attrs={"alpha": 0.2})
    (chain,) = find_chains(g, bound_nodes(g, s), s)
    assert [p.shape for p in chain.parts] == [(5, 6), (4, 5), (3, 4)]
    assert chain.slopes == [(0.2, 1.0), (0.2, 1.0)]
    g = conv_net()
    (chain,) = find_chains(g, bound_nodes(g, s), s)
    assert [p.shape for p in chain.parts] == [(144, 72), (144, 144), (27, 144)]
    w = chain.parts[0].matrix()
    jac = torch.autograd.functional.jacobian(
        lambda x: torch.nn.functional.conv2d(x.reshape(1, 2, 6, 6), g.constants["w0"].double(),
                                             padding=1).reshape(-1),
        torch.zeros(72, dtype=torch.float64))
    np.testing.assert_allclose(w, jac.numpy(), atol=1e-12)
    g = conv_net(residual=True)   # relu0 feeds the skip: no chain crosses it
    assert find_chains(g, bound_nodes(g, s), s) == []


def test_randomized_factor_matches_the_dense_svd():
    s = Settings()
    g = conv_net()
    (chain,) = find_chains(g, bound_nodes(g, s), s)
    part = chain.parts[1]
    dense = scipy.linalg.svdvals(part.matrix())[:20]
    approx = randomized_factor(part.operator, 20, seed=0)
    assert np.all(approx.s <= dense * (1 + 1e-12))   # Ritz values are lower estimates
    np.testing.assert_allclose(approx.s[:5], dense[:5], rtol=1e-3)
    np.testing.assert_allclose(dense_factor(part).s[:20], dense, rtol=1e-10)


NETS = [lambda: mlp([7, 6, 5, 3], seed=1), lambda: mlp([5, 9, 4], act=OpKind.TANH, seed=2),
        lambda: mlp([6, 6, 6, 2], act=OpKind.SIGMOID, seed=3),
        lambda: mlp([6, 7, 4], act=OpKind.LEAKY_RELU, seed=4, attrs={"alpha": 0.1}),
        lambda: conv_net(seed=5, size=4)]


@pytest.mark.parametrize("make", NETS)
def test_certified_global_bounds_are_above_every_jacobian_found(make):
    g = make()
    s = Settings(time_budget=3)
    bounds = global_bounds(g, bound_nodes(g, s), ["autolip", "seqlip-exact", "seqlip-greedy",
                                                   "seqlip-lowrank", "eclipse", "sdp"], s)
    lower = max_jacobian_norm(g, 40)
    methods = {b.method: b for b in bounds}
    assert {"autolip", "seqlip-exact", "seqlip-greedy", "eclipse-fast"} <= set(methods)
    for b in bounds:
        if b.method in ("seqlip-greedy", "seqlip-lowrank"):
            assert not b.certified and b.kind == "estimate"
        if b.certified:
            assert b.kind == "upper" and b.value >= lower * (1 - 1e-9), b
    assert methods["seqlip-exact"].value <= methods["autolip"].value * (1 + 1e-9)
    assert tightest_certified(bounds).certified


def test_global_bounds_are_deterministic_and_greedy_is_never_certified():
    g = mlp([10, 12, 9, 3], seed=8)
    s = Settings(time_budget=30)
    runs = [global_bounds(g, bound_nodes(g, s), ["all"], s) for _ in range(2)]
    values = [[(b.method, b.value, b.certified) for b in run] for run in runs]
    assert values[0] == values[1]
    greedy = [b for b in runs[0] if b.method in ("seqlip-greedy", "seqlip-lowrank")]
    assert len(greedy) == 2 and all(not b.certified and b.kind == "estimate" for b in greedy)
    assert all(not b.extra["cut_by_budget"] for b in runs[0] if b.method != "autolip")


def test_default_methods_run_quick_variants_under_their_own_names():
    g = mlp([6, 8, 5, 2], seed=9)
    s = Settings()
    bounds = global_bounds(g, bound_nodes(g, s), list(DEFAULT_METHODS), s)
    methods = {b.method: b for b in bounds}
    assert {"autolip", "eclipse-fast", "seqlip-exact", "sdp"} <= set(methods)
    assert methods["sdp"].extra["mode"] == "quick" and methods["sdp"].certified
    assert expand_methods(["seqlip-exact", "seqlip-exact:quick"]) == ["seqlip-exact"]
