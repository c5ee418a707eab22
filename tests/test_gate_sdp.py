"""`check --sdp-margins N`: the margins the local rule (and branch and bound) leave, by
sdp-net's constant of f_c - f_j on each sample's ball. Truth: PGD on the ball (a certified
sample keeps its class), the constants against gradient norms sampled inside the ball, and
the option's validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from graphs import function_of
from test_local import attack
from test_sdp_conv_pool import pooled_net

from lipcheck.errors import UserError
from lipcheck.estimators.upper.local_net import margin_lipschitz
from lipcheck.gate.robustness import predict
from lipcheck.gate.thresholds import Thresholds, thresholds_from_table
from lipcheck.local_certify import certify_local
from lipcheck.propagation import InputSet, build_program, propagate
from lipcheck.propagation.relu_bounds import crown_ranges
from lipcheck.propagation.relu_net import relu_form

EPS = 0.4


def data():
    graph = pooled_net((6, 6), [(3, 3, 1), (2, 3, 1)], [(2, 2), None], seed=1)
    x = np.random.default_rng(0).normal(size=(30, 36))
    logits = predict(graph, x).numpy()
    return graph, x, logits.argmax(axis=1), logits


def test_the_sdp_stage_certifies_more_and_every_sample_survives_an_attack():
    graph, x, y, logits = data()
    plain = certify_local(graph, x, y, logits, EPS)
    more = certify_local(graph, x, y, logits, EPS, sdp_margins=100)
    assert np.all(more.certified >= plain.certified)
    assert more.certified.sum() > plain.certified.sum()
    report = more.to_dict()["sdp_margins"]
    assert report["samples_certified"] == more.certified.sum() - plain.certified.sum()
    assert report["margins_certified"] <= report["margins_tried"]
    assert report["samples_tried"] <= int((~plain.certified).sum())
    for i in np.flatnonzero(more.certified & ~plain.certified):
        assert not attack(graph, x[i], y[i], EPS, steps=80), i


def test_inner_balls_certify_more_than_the_whole_ball_alone_and_hold_under_attack():
    graph, x, y, logits = data()
    eps = 0.5      # here 13 samples by the cheap rules, 16 with one ball, 18 with four
    whole = certify_local(graph, x, y, logits, eps, shells=1, sdp_margins=100)
    nested = certify_local(graph, x, y, logits, eps, shells=4, sdp_margins=100)
    assert np.all(nested.certified >= whole.certified)
    assert nested.certified.sum() > whole.certified.sum()
    assert nested.sdp is not None and whole.sdp is not None
    assert whole.sdp["searches"] == whole.sdp["margins_tried"]     # one ball, one search
    assert nested.sdp["searches"] > nested.sdp["margins_tried"]
    for i in np.flatnonzero(nested.certified & ~whole.certified):
        assert not attack(graph, x[i], y[i], eps, steps=80), i


@pytest.mark.parametrize("radius", [EPS, EPS / 4])
def test_a_margin_constant_is_above_the_margins_gradient_inside_the_ball(radius):
    graph, x, y, _ = data()
    program = build_program(graph)
    net = relu_form(program)
    centres = torch.from_numpy(x[:3])
    ranges = propagate(program, InputSet.ball(centres, radius, "2"))
    prior = [None if k is None else ranges.pre[k] for k in net.origin]
    form = crown_ranges(net, centres, radius, prior)
    f = function_of(graph)
    gen = torch.Generator().manual_seed(0)
    for b in range(3):
        row = torch.zeros(3, dtype=torch.float64)
        row[y[b]], row[(y[b] + 1) % 3] = 1.0, -1.0
        k = margin_lipschitz(net, form, b, row, 100)
        assert k is not None
        for _ in range(40):
            d = torch.randn(36, generator=gen, dtype=torch.float64)
            point = centres[b] + d / d.norm() * radius * torch.rand(1, generator=gen).item()
            grad = row @ torch.autograd.functional.jacobian(f, point)
            assert float(grad.norm()) <= k


def test_sdp_margins_is_a_whole_number_option_and_config_key(tmp_path):
    assert thresholds_from_table({"sdp-margins": 120}, tmp_path, "cfg").sdp_margins == 120
    with pytest.raises(UserError, match="sdp-margins"):
        thresholds_from_table({"sdp-margins": 1.5}, tmp_path, "cfg")
    with pytest.raises(UserError, match="sdp-margins"):
        Thresholds(sdp_margins=-1).validated()


def test_both_margin_stages_say_why_they_skip_a_net_outside_the_relu_form():
    from graphs import mlp

    from lipcheck.graph import OpKind
    graph = mlp([4, 8, 3], act=OpKind.LEAKY_RELU, seed=2, attrs={"alpha": 0.1})
    x = np.random.default_rng(1).normal(size=(6, 4))
    logits = predict(graph, x).numpy()
    local = certify_local(graph, x, logits.argmax(axis=1), logits, 0.5, bab_domains=5,
                          sdp_margins=40)
    assert local.bab is not None and "ReLU only" in local.bab["skipped"]
    assert local.sdp is not None and local.sdp["skipped"] == local.bab["skipped"]
    report = local.to_dict()
    assert "certified" not in report["sdp_margins"] and "proved" not in report["branch_and_bound"]


def test_the_hint_names_the_margin_stages_only_for_a_relu_form():
    """The stdout line naming --bab-domains / --sdp-margins is left out for a net they
    would only report as skipped (LeakyReLU), and kept for the same net with ReLUs."""
    from types import SimpleNamespace

    from graphs import mlp

    from lipcheck.gate.outputs import _open_hint
    from lipcheck.graph import OpKind
    x = np.random.default_rng(1).normal(size=(6, 4))
    hints = []
    for act, attrs in ((OpKind.LEAKY_RELU, {"alpha": 0.1}), (OpKind.RELU, {})):
        graph = mlp([4, 8, 3], act=act, seed=2, attrs=attrs)
        logits = predict(graph, x).numpy()
        local = certify_local(graph, x, logits.argmax(axis=1), logits, 0.5)
        assert local.margin_stages == (act == OpKind.RELU)
        hints.append(_open_hint(SimpleNamespace(local=local, clean_accuracy=1.0,
                                                certified_accuracy=0.5, n=6)))
    assert hints[0] == [] and "3 correctly classified samples" in hints[1][0]
