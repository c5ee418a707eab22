"""sdp-conv's per-neuron step: LipSDP-Neuron on the real neurons of a two-conv chain.

Truth: the chain's own dense matrices (the sparse model), the dense LipSDP matrix Q (rho(T)
makes it singular PSD), dense LipSDP-Neuron (barrier method: the same SDP, so no certified
value may be below its optimum), the exact constant by region enumeration, Jacobian norms
found by search, and certificates built on the float64 boundary.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from test_sdp_conv import CONVS, chain_of, convnet, searched_norm

from lipcheck.estimators.exact.regions import exact_lipschitz
from lipcheck.estimators.upper import neuron_cert
from lipcheck.estimators.upper.conv_chain import circular_chain, conv_layers
from lipcheck.estimators.upper.neuron_cert import certify, chunked_cholesky
from lipcheck.estimators.upper.neuron_conv import neuron_chain
from lipcheck.estimators.upper.neuron_eval import NeuronProblem
from lipcheck.estimators.upper.sdp import lipsdp_neuron
from lipcheck.estimators.upper.sdp_conv import sdp_conv
from lipcheck.estimators.upper.sdp_conv_neuron import improve, search


def model_of(g):
    chain, settings = chain_of(g)
    model, why = circular_chain(chain, g)
    assert model is not None, why
    return chain, settings, model


def position_major(layer, channels_first: np.ndarray) -> np.ndarray:
    """Indices mapping position-major (row, col, channel) to the chain's (channel, row, col)."""
    c = layer.weight.shape[0]
    h, w = layer.out_size
    r, col, ch = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
    return channels_first[(ch * h * w + r * w + col).ravel()]


@pytest.mark.parametrize("layers", CONVS)
def test_sparse_model_reproduces_the_dense_chain(layers) -> None:
    """Stride, padding, dilation, groups, BatchNorm: the position-major sparse matrices
    are the chain's dense ones, permuted."""
    g = convnet(layers, 9, seed=2)
    chain, _, model = model_of(g)
    nc = neuron_chain(model.layers, model.close, model.slope)
    dense = [p.matrix() for p in chain.parts]
    first, second = conv_layers(chain.parts[:-1], g)
    p1 = position_major(first, np.arange(dense[0].shape[0]))
    p2 = position_major(second, np.arange(dense[1].shape[0]))
    np.testing.assert_allclose(nc.w1.toarray(), dense[0][p1], atol=1e-12)
    np.testing.assert_allclose(nc.w2.toarray(), dense[1][np.ix_(p2, p1)], atol=1e-12)
    np.testing.assert_allclose(nc.close, dense[2][:, p2], atol=1e-12)


def dense_q(nc, rho: float, t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
    """LipSDP-Neuron's matrix written out (sdp_certificate's convention, slopes [0, b])."""
    w1, w2, w3, half = nc.w1.toarray(), nc.w2.toarray(), nc.close, nc.slope / 2
    n0, d1, d2 = nc.dims
    q = np.zeros((n0 + d1 + d2,) * 2)
    q[:n0, :n0] = rho * np.eye(n0)
    q[n0:n0 + d1, n0:n0 + d1] = np.diag(t1)
    q[n0 + d1:, n0 + d1:] = np.diag(t2) - w3.T @ w3
    q[:n0, n0:n0 + d1] = -half * w1.T * t1
    q[n0:n0 + d1, n0 + d1:] = -half * w2.T * t2
    q[n0:n0 + d1, :n0] = q[:n0, n0:n0 + d1].T
    q[n0 + d1:, n0:n0 + d1] = q[n0:n0 + d1, n0 + d1:].T
    return q


def test_rho_of_the_multipliers_is_where_q_turns_singular() -> None:
    g = convnet(CONVS[0], 7, seed=4)
    _, _, model = model_of(g)
    nc = neuron_chain(model.layers, model.close, model.slope)
    rng = np.random.default_rng(0)
    n0, d1, d2 = nc.dims
    t1, t2 = rng.uniform(4, 6, d1), rng.uniform(2, 3, d2)
    ev = NeuronProblem(nc).spectrum(torch.from_numpy(t1), torch.from_numpy(t2))
    assert ev is not None
    rho = float(ev[-1])
    assert abs(np.linalg.eigvalsh(dense_q(nc, rho, t1, t2))[0]) < 1e-9 * rho
    assert np.linalg.eigvalsh(dense_q(nc, rho * 0.999, t1, t2))[0] < 0


def per_neuron(g) -> tuple[float, str]:
    chain, settings = chain_of(g)
    result = sdp_conv(chain, settings, math.inf)
    assert result is not None and result.certified, result and result.detail
    return result.value, result.detail


@pytest.mark.parametrize("layers", CONVS)
def test_bound_is_above_every_jacobian_norm_found(layers) -> None:
    g = convnet(layers, 9, seed=3)
    value, detail = per_neuron(g)
    assert "per-neuron multipliers" in detail
    chain, settings = chain_of(g, neuron=False)
    channel = sdp_conv(chain, settings, math.inf).value
    assert searched_norm(g) <= value < channel


@pytest.mark.parametrize("seed", [6, 8])
def test_bound_is_above_the_exact_constant_and_dense_lipsdp(seed: int) -> None:
    """Two conv layers on a 3x3 input: exact by region enumeration (tests/test_sdp_conv
    has a third, seed 5); per-neuron on the real neurons is dense LipSDP-Neuron, whose
    optimum no certificate may undercut."""
    g = convnet([(2, 2, 1, 0, 1, 1, False), (1, 2, 1, 0, 1, 1, False)], 3, n_out=2, seed=seed)
    exact = exact_lipschitz(g)
    assert exact.complete
    value, detail = per_neuron(g)
    assert "per-neuron multipliers" in detail
    chain, _ = chain_of(g)
    dense = lipsdp_neuron([p.matrix() for p in chain.parts], chain.slopes)
    assert dense.certified
    assert value >= exact.value * (1 - 1e-9)
    assert value >= dense.value / (1 + 1e-6)
    assert value <= dense.value * 1.02


def boundary_case():
    g = convnet(CONVS[0], 7, seed=4)
    _, _, model = model_of(g)
    nc = neuron_chain(model.layers, model.close, model.slope)
    rng = np.random.default_rng(1)
    return nc, rng.uniform(4, 6, nc.dims[1]), rng.uniform(2, 3, nc.dims[2])


def test_certificate_refuses_a_point_on_the_float64_boundary() -> None:
    nc, t1, t2 = boundary_case()
    loose = certify(nc, t1, t2, margin=False)
    top = loose.rho / (1 + 1e-7)
    assert certify(nc, t1, t2, margin=False, rho=top * (1 + 1e-13)).verified
    assert not certify(nc, t1, t2, rho=top * (1 + 1e-13)).verified
    assert certify(nc, t1, t2, rho=top * (1 + 1e-4)).verified
    assert not certify(nc, t1, t2, rho=top * (1 - 1e-6)).verified
    assert not certify(nc, t1, 1e-3 * t2).verified     # the second layer's block indefinite
    with_margin = certify(nc, t1, t2)
    assert with_margin.verified and with_margin.shift > with_margin.need > 0
    assert with_margin.rho >= top


def test_the_panelled_cholesky_is_lapacks_and_stops_at_the_deadline(monkeypatch) -> None:
    """The factor taken 7 columns at a time equals LAPACK's whole one (to rounding), an
    indefinite matrix raises, and a deadline already passed stops it; the certificate with
    7-column panels makes the same decisions as with the default and, stopped, is not
    verified."""
    import scipy.linalg
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 45))
    a = x @ x.T / 45 + 0.1 * np.eye(40)
    whole = scipy.linalg.cholesky(a, lower=True)
    np.testing.assert_allclose(chunked_cholesky(a.copy(), math.inf, 7), whole,
                               rtol=0, atol=1e-13 * float(np.abs(whole).max()))
    with pytest.raises(np.linalg.LinAlgError):
        chunked_cholesky(a - 2 * np.eye(40) * float(np.linalg.eigvalsh(a)[0]), math.inf, 7)
    assert chunked_cholesky(a.copy(), time.monotonic() - 1, 7) is None
    readings = iter([0.0, 0.0, 10.0])          # the deadline (5) passes after two panels
    monkeypatch.setattr(neuron_cert, "time", type("Clock", (), {
        "monotonic": staticmethod(lambda: next(readings))}))
    assert chunked_cholesky(a.copy(), 5.0, 7) is None
    monkeypatch.setattr(neuron_cert, "time", time)
    nc, t1, t2 = boundary_case()
    default = certify(nc, t1, t2)
    monkeypatch.setattr(neuron_cert, "PANEL", 7)
    panelled = certify(nc, t1, t2)
    assert panelled.verified and default.verified
    assert abs(panelled.rho - default.rho) <= 1e-12 * default.rho
    top = certify(nc, t1, t2, margin=False).rho / (1 + 1e-7)
    assert not certify(nc, t1, t2, rho=top * (1 + 1e-13)).verified
    stopped = certify(nc, t1, t2, deadline=time.monotonic() - 1)
    assert not stopped.verified and "deadline" in stopped.detail


def test_step_is_skipped_without_time_or_when_turned_off() -> None:
    g = convnet(CONVS[0], 7, seed=4)
    chain, settings, model = model_of(g)
    ts = [np.full(d, 0.1) for d in model.dims[1:]]
    assert improve(model, ts, 10.0, settings, time.monotonic() - 1) is None
    settings.extra["sdp_conv_neuron_steps"] = 0
    assert improve(model, ts, 10.0, settings, math.inf) is None


def test_search_is_limited_by_its_count() -> None:
    """The evaluation count decides the value (reproducible): the same count twice gives
    the same multipliers, and never more evaluations than the count."""
    g = convnet(CONVS[0], 7, seed=4)
    _, _, model = model_of(g)
    nc = neuron_chain(model.layers, model.close, model.slope)
    start = [np.full(d, 5.0) for d in nc.dims[1:]]
    runs = [search(NeuronProblem(nc), start, 4, math.inf, 0.0) for _ in range(2)]
    assert all(r[2] == 4 and not r[3] for r in runs)
    for a, b in zip(runs[0][0], runs[1][0], strict=True):
        np.testing.assert_array_equal(a, b)
