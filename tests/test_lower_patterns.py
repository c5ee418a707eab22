"""Lower bounds from activation patterns (lower/patterns.py): below the exact constant,
equal to it where the maximising pattern is known, every value a replayable quotient,
regions that are what they claim, and the time cap."""
from __future__ import annotations

import time
from itertools import pairwise

import numpy as np
import pytest
import torch
from test_exact import random_net

from lipcheck.estimators.exact.pwl_chain import mlp_graph, pwl_chain
from lipcheck.estimators.exact.regions import exact_lipschitz
from lipcheck.estimators.lower import patterns
from lipcheck.estimators.lower.netfn import NetFunction
from lipcheck.estimators.lower.rounds import LowerConfig, lower_bound, witness_value
from lipcheck.estimators.lower.search import certify

# the pattern phase only: no exact witness, one tiny ascent round
PATTERNS_ONLY = LowerConfig(screen=1, starts_per_round=1, ascent_steps=1, pair_steps=1,
                            exact_max_units=0)


def certified_values(graph, box=None) -> list[float]:
    fn = NetFunction(graph)
    found = patterns.pattern_pairs(graph, fn, box, budget_s=60.0)
    assert found.pairs is not None and not found.cut
    pairs = found.pairs
    return [certify(fn, pairs, i, "activation-pattern").value for i in range(len(pairs.values))]


def pattern_at(chain, x: np.ndarray) -> list[np.ndarray]:
    """The signs of every hidden unit's pre-activation at x (independent forward pass)."""
    h, signs = x, []
    for affine, slopes in zip(chain.affines[:-1], chain.slopes, strict=True):  # hidden layers
        z = affine.weight @ h + affine.bias
        signs.append(np.where(z > 0, 1.0, -1.0))
        h = np.where(z > 0, z, slopes * z)
    return signs


def same_signs(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("dims,act", [([2, 6, 5, 2], "relu"), ([3, 5, 4, 3], "leaky_relu"),
                                      ([2, 8, 1], "relu"), ([4, 3, 4, 3, 2], "relu")])
def test_pattern_values_below_the_exact_constant(dims, act) -> None:
    for seed in range(3):
        graph, _, _ = random_net(np.random.default_rng(100 * len(dims) + seed), dims, act, 0.1)
        exact = exact_lipschitz(graph, max_lps=50_000, max_seconds=120)
        assert exact.complete
        values = certified_values(graph)
        assert 0 < max(values) <= exact.value * (1 + 1e-9)


def test_box_search_stays_below_the_box_constant() -> None:
    graph, _, _ = random_net(np.random.default_rng(7), [2, 6, 5, 2])
    exact = exact_lipschitz(graph, box=(-0.5, 0.5), max_lps=50_000, max_seconds=120)
    assert exact.complete
    fn, box = NetFunction(graph), (-0.5, 0.5)
    pairs = patterns.pattern_pairs(graph, fn, box, 60.0).pairs
    if pairs is not None:
        assert pairs.p.min() >= -0.5 and pairs.q.max() <= 0.5
        best = max(certify(fn, pairs, i, "x").value for i in range(len(pairs.values)))
        assert best <= exact.value * (1 + 1e-9)


def test_reaches_the_constant_where_all_active_is_best() -> None:
    """Nonnegative weights: ||W3 D2 W2 D1 W1|| grows with every slope, so all-active is the
    maximising pattern; positive biases make it reachable (x large and positive)."""
    rng = np.random.default_rng(3)
    dims = [5, 7, 6, 3]
    weights = [np.abs(rng.standard_normal((b, a))) for a, b in pairwise(dims)]
    biases = [np.abs(rng.standard_normal(d)) for d in dims[1:]]
    # a few negative entries so that the random screen does not land there trivially
    weights[1][0, :3] *= -1
    graph = mlp_graph(weights, biases)
    chain = pwl_chain(graph)
    on = [np.ones(w) for w in chain.widths]
    truth = patterns.jacobian_norm(chain, on)
    exact = exact_lipschitz(graph, max_lps=50_000, max_seconds=120)
    assert exact.complete and truth <= exact.value
    found = lower_bound(graph, rounds=1, config=PATTERNS_ONLY)
    assert found.value == pytest.approx(exact.value, rel=1e-7)
    assert found.value <= exact.value * (1 + 1e-9)


def test_one_hidden_layer_full_rank_reaches_brute_force() -> None:
    """n_in >= h: every pattern is reachable and the exact constant is the brute-force
    max; greedy SeqLip + sign ascent + walk reaches it on these small nets."""
    for seed in range(4):
        graph, _, _ = random_net(np.random.default_rng(seed), [8, 6, 3])
        exact = exact_lipschitz(graph)
        assert exact.method == "exact-brute-force"
        values = certified_values(graph)
        assert max(values) <= exact.value * (1 + 1e-9)
        assert max(values) >= exact.value * (1 - 1e-6)


def test_reported_value_replays_and_is_a_real_quotient() -> None:
    graph, _, _ = random_net(np.random.default_rng(11), [3, 6, 5, 2])
    found = lower_bound(graph, rounds=1, config=PATTERNS_ONLY)
    assert found.method == "activation-pattern"
    assert witness_value(graph, found.witness_data) == found.value
    w = found.witness_data
    fn = NetFunction(graph)
    x, y = torch.tensor(w.x), torch.tensor(w.y)
    raw = float((fn.exact(x) - fn.exact(y)).norm() / (x - y).norm())
    assert found.value <= raw and found.value >= raw * (1 - 1e-6)
    again = lower_bound(graph, rounds=1, config=PATTERNS_ONLY)
    assert again.value == found.value and np.array_equal(again.witness_data.x, w.x)


def test_regions_are_what_they_claim() -> None:
    """At the centre and on the ball's surface the pattern is the region's; the pair's
    quotient is ||J(P) v||."""
    graph, _, _ = random_net(np.random.default_rng(5), [2, 7, 6, 2])
    chain = pwl_chain(graph)
    regions = patterns.pattern_regions(chain, None, 60.0)
    assert regions
    rng = np.random.default_rng(0)
    for region in regions:
        for _ in range(20):
            d = rng.standard_normal(chain.n_in)
            point = region.point + 0.999 * region.radius * d / np.linalg.norm(d)
            assert same_signs(pattern_at(chain, point), region.signs)
        jac = patterns.pre_activations(chain, region.signs)[1]
        assert region.norm == pytest.approx(np.linalg.norm(jac, 2), rel=1e-12)


def test_unreachable_target_moves_to_a_reachable_region() -> None:
    """Two inputs, twelve units: most sign vectors are not regions; realise lands in one
    whose signs are those at its point, and the walk only goes uphill."""
    graph, _, _ = random_net(np.random.default_rng(9), [2, 12, 2])
    chain = pwl_chain(graph)
    budget = patterns.LpBudget(200, float("inf"))
    target = [np.where(np.arange(12) % 2 == 0, 1.0, -1.0)]
    region = patterns.realise(chain, target, None, budget)
    assert region is not None
    assert same_signs(pattern_at(chain, region.point), region.signs)
    walked = patterns.walk(chain, region, None, budget)
    assert walked.norm >= region.norm
    assert same_signs(pattern_at(chain, walked.point), walked.signs)


def test_flip_gains_match_direct_norms() -> None:
    graph, _, _ = random_net(np.random.default_rng(2), [4, 5, 6, 3], "leaky_relu", 0.2)
    chain = pwl_chain(graph)
    signs = [np.where(np.arange(w) % 3 == 0, -1.0, 1.0) for w in chain.widths]
    gains = patterns.flip_gains(chain, signs)
    for layer, width in enumerate(chain.widths):
        for unit in range(width):
            flipped = [s.copy() for s in signs]
            flipped[layer][unit] *= -1
            want = patterns.jacobian_norm(chain, flipped)
            assert gains[layer][unit] == pytest.approx(want, rel=1e-9)


def test_not_applicable_to_smooth_or_large_nets() -> None:
    graph, _, _ = random_net(np.random.default_rng(0), [3, 4, 2], "tanh")
    assert patterns.pattern_pairs(graph, NetFunction(graph), None, 10.0).pairs is None
    big, _, _ = random_net(np.random.default_rng(0), [3, 40, 2])
    assert patterns.pattern_pairs(big, NetFunction(big), None, 10.0, max_units=39).pairs is None
    assert patterns.pattern_pairs(big, NetFunction(big), None, 10.0, max_units=40).pairs is not None


def test_budget_caps_the_phase() -> None:
    graph, _, _ = random_net(np.random.default_rng(1), [6, 40, 40, 3])
    fn = NetFunction(graph)
    start = time.monotonic()
    found = patterns.pattern_pairs(graph, fn, None, 0.02, max_lps=10_000)
    assert time.monotonic() - start < 1.02 and found.cut
    assert not patterns.pattern_pairs(graph, fn, None, 120.0, max_lps=10).cut


def test_free_first_layer_realises_its_target_without_lps(monkeypatch) -> None:
    """n_in >= h1: the first layer's target is met exactly (least squares on the rows),
    the second by NNLS as far as it goes; the ball around the point keeps the pattern,
    and the values stay below the exact constant."""
    graph, _, _ = random_net(np.random.default_rng(4), [6, 5, 4, 2])
    chain = pwl_chain(graph)
    assert patterns.free_first_layer(chain, None) and not patterns.free_first_layer(chain, (0, 1))
    target = [np.array([1.0, -1.0, 1.0, 1.0, -1.0]), np.array([1.0, 1.0, -1.0, 1.0])]
    region = patterns.realise_free(chain, target)
    assert region is not None and np.array_equal(region.signs[0], target[0])
    rng = np.random.default_rng(1)
    for _ in range(20):
        d = rng.standard_normal(chain.n_in)
        point = region.point + 0.999 * region.radius * d / np.linalg.norm(d)
        assert same_signs(pattern_at(chain, point), region.signs)
    monkeypatch.setattr(patterns, "MAX_LP_ENTRIES", 0)   # force the LP-free path
    exact = exact_lipschitz(graph, max_lps=50_000, max_seconds=120)
    assert exact.complete and 0 < max(certified_values(graph)) <= exact.value * (1 + 1e-9)


def test_an_affine_network_has_no_pattern_phase() -> None:
    """No activation: one pattern, nothing to search (it crashed with an empty max)."""
    rng = np.random.default_rng(0)
    g = mlp_graph([rng.standard_normal((2, 3))], [rng.standard_normal(2)])
    assert not patterns.applicable(pwl_chain(g), None)
    found = lower_bound(g, budget_s=2.0, seed=0, rounds=1)
    assert found.value > 0
