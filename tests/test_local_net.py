"""sdp-net on input sets (local_net): LipSDP-Neuron of the ReLU form with each unit's
slopes on the set. Truth: Jacobian norms at points sampled inside the set, the Jacobian
at the centre where no unit changes sign on the set (the network is affine there), and
the ReLU form's pre-activations at sampled points against the ranges the slopes come from."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from graphs import function_of, mlp
from test_bab import residual_mlp
from test_sdp_conv_pool import pooled_net

from lipcheck.estimators.upper.local_net import (
    drop_dead,
    form_ranges,
    net_bounds,
    set_lipschitz,
    set_slopes,
)
from lipcheck.propagation import InputSet, build_program, propagate
from lipcheck.propagation.relu_net import relu_form

GRAPHS = {"pool": lambda: pooled_net((6, 6), [(3, 3, 1), (2, 3, 1)], [(2, 2), None], seed=1),
          "residual": lambda: residual_mlp(seed=1),
          "mlp": lambda: mlp([4, 10, 8, 3], seed=3)}


def make_set(kind: str, centres: torch.Tensor, radius: float) -> InputSet:
    if kind == "box":
        return InputSet.box(centres - radius, centres + 0.5 * radius)
    return InputSet.ball(centres, radius, "2" if kind == "l2" else "inf")


def inside(s: InputSet, b: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """Points of set b: uniform in a box, on rays of the ball (radius u^(1/n))."""
    n = s.center.shape[1]
    if s.kind == "l2":
        d = torch.randn(count, n, generator=gen, dtype=torch.float64)
        u = torch.rand(count, 1, generator=gen, dtype=torch.float64) ** (1 / n)
        return s.center[b] + d / d.norm(dim=1, keepdim=True) * u * float(s.radius)
    lo, hi = (t[b] for t in s.interval())
    return lo + (hi - lo) * torch.rand(count, n, generator=gen, dtype=torch.float64)


def setup(name: str, kind: str, radius: float, seed: int = 0):
    g = GRAPHS[name]()
    program = build_program(g)
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(2, program.n_in, generator=gen, dtype=torch.float64)
    s = make_set(kind, centres, radius)
    return g, program, s, propagate(program, s), gen


@pytest.mark.parametrize("kind", ["l2", "linf", "box"])
@pytest.mark.parametrize("name", list(GRAPHS))
def test_the_local_bound_is_above_every_jacobian_norm_found_in_the_set(name, kind):
    g, program, s, ranges, gen = setup(name, kind, 0.6)
    found = net_bounds(program, s, ranges)["sdp-net"]
    f = function_of(g)
    for b in range(s.batch):
        assert math.isfinite(float(found[b]))
        points = inside(s, b, 60, gen)
        norms = [float(torch.linalg.matrix_norm(torch.autograd.functional.jacobian(f, x), 2))
                 for x in points]
        assert max(norms) <= float(found[b])


@pytest.mark.parametrize("kind", ["l2", "linf", "box"])
def test_the_ranges_behind_the_slopes_contain_the_pre_activations(kind):
    _, program, s, ranges, gen = setup("pool", kind, 0.6)
    net = relu_form(program)
    found = form_ranges(net, s, ranges)
    for b in range(s.batch):
        zs = net.pre_activations(inside(s, b, 300, gen))
        for (lo, hi), z in zip(found, zs, strict=False):
            assert torch.all(z >= lo[b]) and torch.all(z <= hi[b])


def test_where_no_unit_changes_sign_the_bound_is_the_jacobian_at_the_centre():
    """A small ball: every ReLU's slope is fixed, the net is affine on it, and the bound
    with those slopes is its Jacobian's norm (within 2 %; the global bound is far above)."""
    g, program, s, ranges, _ = setup("pool", "l2", 1e-4, seed=2)
    net = relu_form(program)
    found = net_bounds(program, s, ranges)["sdp-net"]
    f = function_of(g)
    for b in range(s.batch):
        slopes = set_slopes(net, form_ranges(net, s, ranges), b)
        assert all(((a == 0) | (c == 1)).all() and (a == c).all() for a, c in slopes)
        exact = float(torch.linalg.matrix_norm(
            torch.autograd.functional.jacobian(f, s.center[b]), 2))
        assert exact <= float(found[b]) <= 1.02 * exact


def test_more_sets_than_it_takes_leave_it_out():
    _, program, s, ranges, _ = setup("pool", "l2", 0.5)
    many = InputSet.ball(s.center.repeat(3, 1), 0.5, "2")
    assert net_bounds(program, many, propagate(program, many)) == {}


def test_dead_units_leave_every_jacobian_unchanged_and_an_all_dead_layer_gives_zero():
    gen = np.random.default_rng(3)
    weights = [gen.normal(size=(6, 4)), gen.normal(size=(5, 6)), gen.normal(size=(2, 5))]
    slopes = [(np.array([0, 1, 0, 0, 1, 0.0]), np.array([0, 1, 1, 0, 1, 1.0])),
              (np.array([0, 0, 1, 0, 0.0]), np.array([1, 0, 1, 0, 1.0]))]
    kept, kept_slopes = drop_dead(weights, slopes)
    assert [w.shape for w in kept] == [(4, 4), (3, 4), (2, 3)]

    def jacobian(ws, picks):
        out = ws[0]
        for w, d in zip(ws[1:], picks, strict=True):
            out = w @ (d[:, None] * out)
        return out
    for _ in range(20):
        picks = [gen.uniform(a, b) for a, b in slopes]
        live = [p[(a != 0) | (b != 0)] for p, (a, b) in zip(picks, slopes, strict=True)]
        assert np.allclose(jacobian(weights, picks), jacobian(kept, live), rtol=0, atol=1e-12)
    dead = [slopes[0], (np.zeros(5), np.zeros(5))]
    assert drop_dead(weights, dead) is None
    assert set_lipschitz(weights, dead, 40) == 0.0


def test_on_digits_cnn_a_ball_gets_a_certified_bound_below_the_global_one(monkeypatch):
    """A 0.1 L2 ball around a test digit: with every ReLU active on it at slope [1, 1]
    (an equality, like the identity units), the search once spread the multipliers over 9
    decades and the float64 check refused the point at every raise (the value was lost);
    the floor at 1e-4 of a layer's start keeps it checkable."""
    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root / "models"))
    from digits_data import digits_split

    from lipcheck.loaders.dispatch import load_model
    g = load_model(root / "models" / "digits_cnn.onnx")
    program = build_program(g)
    centre = torch.from_numpy(digits_split()[2][:1]).double()
    s = InputSet.ball(centre, 0.1, "2")
    found = float(net_bounds(program, s, propagate(program, s))["sdp-net"][0])
    assert 30.0 < found < 100.0       # global: 150.6 (sdp-net), largest norm found: ~28-30
