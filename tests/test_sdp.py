"""LipSDP-Neuron, ECLipsE, ECLipsE-Fast: certified only after a float64 check."""
from __future__ import annotations

import builtins
import itertools

import numpy as np
import pytest

from lipcheck.errors import UserError
from lipcheck.estimators.upper import sdp_solver
from lipcheck.estimators.upper.eclipse import eclipse
from lipcheck.estimators.upper.sdp import lipsdp_neuron
from lipcheck.estimators.upper.sdp_certificate import assemble, verify

pytest.importorskip("cvxpy")


def exact_two_layer(w1: np.ndarray, w2: np.ndarray, lo: float, hi: float) -> float:
    return max(np.linalg.norm(w2 @ np.diag(s) @ w1, 2)
               for s in itertools.product([lo, hi], repeat=w1.shape[0]))


@pytest.mark.parametrize("seed,slopes", [(0, (0.0, 1.0)), (1, (0.1, 1.0)), (2, (0.0, 0.25)),
                                         (3, (0.0, 1.0))])
def test_sdp_bounds_are_above_the_exact_two_layer_constant(seed, slopes):
    rng = np.random.default_rng(seed)
    hidden = 6 + 2 * seed
    w1, w2 = rng.standard_normal((hidden, hidden + 2)), rng.standard_normal((3, hidden))
    truth = exact_two_layer(w1, w2, *slopes)
    results = [lipsdp_neuron([w1, w2], [slopes]), eclipse([w1, w2], [slopes], fast=True),
               eclipse([w1, w2], [slopes], fast=False)]
    for r in results:
        assert r.certified, r.detail
        assert r.value >= truth
    assert results[0].value <= results[1].value * (1 + 1e-6)   # LipSDP is the tightest of them


def test_negative_slope_products_are_verified_or_refused():
    rng = np.random.default_rng(5)
    w1, w2 = rng.standard_normal((7, 9)), rng.standard_normal((2, 7))
    truth = exact_two_layer(w1, w2, -1.0, 1.0)
    r = lipsdp_neuron([w1, w2], [(-1.0, 1.0)])
    assert not r.certified or r.value >= truth
    assert not eclipse([w1, w2], [(-1.0, 1.0)], fast=True).certified


def test_reducing_the_end_layers_does_not_change_lipsdp():
    rng = np.random.default_rng(7)
    w = [rng.standard_normal((5, 30)) / 5, rng.standard_normal((6, 5)), rng.standard_normal((2, 6))]
    reduced = lipsdp_neuron(w, [(0.0, 1.0)] * 2)
    full = lipsdp_neuron(w, [(0.0, 1.0)] * 2, reduce=False)
    assert reduced.value == pytest.approx(full.value, rel=1e-5)


def test_verify_never_certifies_below_the_true_constant():
    rng = np.random.default_rng(3)
    w = [rng.standard_normal((6, 8)), rng.standard_normal((2, 6))]
    truth = exact_two_layer(w[0], w[1], 0.0, 1.0)
    for lam_scale in (0.0, 1e-3, 1.0, 1e3):
        lams = [np.full(6, lam_scale * truth**2)]
        got = verify(w, [(0.0, 1.0)], 1e-6, lams)
        assert got is None or np.sqrt(got) >= truth
        if got is not None:   # what verify returns is PSD by an independent eigenvalue check
            q = assemble(w, [(0.0, 1.0)], got, lams)
            assert np.linalg.eigvalsh(q).min() >= -1e-9 * np.abs(q).max()


def test_missing_cvxpy_is_a_clear_user_error(monkeypatch):
    real_import = builtins.__import__

    def no_cvxpy(name, *args, **kwargs):
        if name == "cvxpy":
            raise ImportError("no cvxpy")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_cvxpy)
    with pytest.raises(UserError, match="lipcheck\\[sdp\\]"):
        sdp_solver.require_cvxpy()


@pytest.mark.parametrize("seed,slopes", [(0, [(0.0, 1.0)]), (1, [(0.1, 1.0), (0.0, 1.0)]),
                                         (2, [(0.0, 0.25), (0.0, 1.0)])])
def test_barrier_method_matches_an_independent_conic_solver(seed, slopes):
    rng = np.random.default_rng(seed)
    widths = [9, 7, 6, 3][: len(slopes) + 2]
    w = [rng.standard_normal((b, a)) for a, b in itertools.pairwise(widths)]
    ours = lipsdp_neuron(w, slopes)                        # barrier (default)
    clarabel = lipsdp_neuron(w, slopes, solver="CLARABEL")  # cvxpy + Clarabel
    assert "barrier method converged" in ours.detail and ours.certified and clarabel.certified
    assert ours.value == pytest.approx(clarabel.value, rel=1e-6)
    if len(slopes) == 1:
        assert ours.value >= exact_two_layer(w[0], w[1], *slopes[0])


def test_barrier_result_is_reproducible():
    rng = np.random.default_rng(11)
    w = [rng.standard_normal((12, 10)), rng.standard_normal((8, 12)), rng.standard_normal((2, 8))]
    first, second = (lipsdp_neuron(w, [(0.0, 1.0)] * 2) for _ in range(2))
    assert first.value == second.value and first.detail == second.detail


def test_a_solver_stopped_by_its_clock_is_reported_as_cut(monkeypatch):
    """A solve that used its wall-clock limit gives a value that depends on the machine's
    speed: ECLipsE and the conic LipSDP say so (cut_by_budget), verified or not."""
    import lipcheck.estimators.upper.eclipse as eclipse_module
    import lipcheck.estimators.upper.sdp as sdp_module
    rng = np.random.default_rng(3)
    w1, w2 = rng.standard_normal((8, 10)), rng.standard_normal((3, 8))
    assert not eclipse([w1, w2], [(0.0, 1.0)], fast=False).cut_by_budget
    for module in (eclipse_module, sdp_module):
        real = module.solve
        monkeypatch.setattr(module, "solve", lambda *a, real=real: real(*a) or True)
    assert eclipse([w1, w2], [(0.0, 1.0)], fast=False).cut_by_budget
    assert lipsdp_neuron([w1, w2], [(0.0, 1.0)], solver="CLARABEL").cut_by_budget
