"""sdp-conv under a deadline (issue 12: a time cap is a promise). The float64 certificate is
formed and factored a chunk of frequencies at a time and stops once the deadline has
passed; the start's multipliers are certified first, so a final certificate that cannot end
in time costs the search's gain, not the cap, and never the certified value."""
from __future__ import annotations

import math
import time

import pytest
from test_sdp_conv import CONVS, chain_of, convnet

import lipcheck.estimators.upper.sdp_conv as sdp_conv_module
import lipcheck.estimators.upper.sdp_conv_cert as cert_module
from lipcheck.api import EstimateOptions, estimate
from lipcheck.estimators.upper.conv_chain import circular_chain
from lipcheck.estimators.upper.sdp_conv import fast_start, optimise, sdp_conv
from lipcheck.estimators.upper.sdp_conv_cert import certify
from lipcheck.estimators.upper.sdp_cost import EVAL_FACTOR, SAFETY, Budget
from lipcheck.settings import Settings


def model_and_multipliers():
    g = convnet(CONVS[0], 8)
    chain, _ = chain_of(g)
    model, _ = circular_chain(chain, g)
    ts, _, _ = optimise(model, 10, Budget())
    return model, ts


def test_chunked_certificate_equals_the_whole_one(monkeypatch) -> None:
    """One frequency a chunk or all at once: the same blocks and factors, summed in another
    order (so equal to rounding: 1e-12 relative is ~1e4 units of the float64 roundoff)."""
    model, ts = model_and_multipliers()
    whole = certify(model, ts)
    monkeypatch.setattr(cert_module, "CHUNK_ENTRIES", 1)
    chunked = certify(model, ts)
    assert model.freqs > 1 and whole.verified and chunked.verified
    assert chunked.rho == pytest.approx(whole.rho, rel=1e-12)
    assert chunked.need == pytest.approx(whole.need, rel=1e-9)


def test_certificate_stops_at_a_passed_deadline() -> None:
    model, ts = model_and_multipliers()
    cert = certify(model, ts, deadline=time.monotonic() - 1)
    assert cert.stopped and not cert.verified and cert.rho == math.inf


def test_the_start_certificate_is_kept_when_the_final_one_is_stopped(monkeypatch) -> None:
    """The first certificate (ECLipsE-Fast's channel-wise start) is the fallback: the final
    one stopped by the deadline leaves a certified bound, reported as cut."""
    chain, settings = chain_of(convnet(CONVS[0], 8), neuron=False)
    full = sdp_conv(chain, settings, math.inf)
    calls = []

    def stop_after_the_first(model, ts, rho=None, margin=True, deadline=math.inf):
        calls.append(1)
        return certify(model, ts, rho, margin, -math.inf if len(calls) > 1 else deadline)

    monkeypatch.setattr(sdp_conv_module, "certify", stop_after_the_first)
    kept = sdp_conv(chain, settings, math.inf)
    assert len(calls) == 2 and kept.certified and kept.cut_by_budget
    assert "start's certificate is kept" in kept.detail
    model, _ = circular_chain(chain, chain.graph)
    start = [t.numpy() for t in fast_start(sdp_conv_module._symbols(model)[0], model.slope)]
    assert kept.value == pytest.approx(math.sqrt(certify(model, start).rho) * (1 + 1e-9), rel=1e-12)
    assert full.value <= kept.value * (1 + 1e-9)


def test_budget_is_measured_from_the_certificate() -> None:
    budget = Budget.measured(100.0, predicted=5.0, certificate=0.2)
    assert budget.reserve == pytest.approx(SAFETY * 0.2)
    assert budget.first_eval == pytest.approx(EVAL_FACTOR * 0.2)
    assert Budget.measured(100.0, 5.0, 0.0).reserve == pytest.approx(SAFETY * 5.0)
    deadline = time.monotonic() + 1.0
    assert not Budget(deadline, reserve=0.5, first_eval=0.6).allows(None)
    assert Budget(deadline, reserve=0.5, first_eval=0.6).allows(0.1)


def test_one_time_imports_are_timed_apart_from_the_budget() -> None:
    """cvxpy's import (seconds, once a process) is its own timing, not the budget's."""
    from graphs import mlp
    report = estimate(mlp([4, 6, 3]), settings=Settings(time_budget=5.0),
                      options=EstimateOptions(methods=("eclipse",), lower_budget=0))
    assert "imports" in report.timings and "global_bounds" in report.timings


def test_auto_leaves_conv_sdps_above_its_quick_limit_to_the_explicit_method() -> None:
    """`--method auto` runs sdp-conv only where one evaluation is at most QUICK_CONV_WORK
    (frequencies x block size^3, a count: reproducible); `--method sdp-conv` runs it all."""
    from test_time_caps import slow_conv

    from lipcheck.estimators.upper.global_bounds import QUICK_CONV_WORK
    small, large = convnet(CONVS[0], 8), slow_conv(16, 32, outputs=10)
    for graph, in_auto in ((small, True), (large, False)):
        chain, settings = chain_of(graph)
        model, _ = circular_chain(chain, graph)
        assert (model.freqs * sum(model.dims) ** 3 <= QUICK_CONV_WORK) == in_auto
        quick = Settings(time_budget=60, extra={"sdp_conv_dense": False})
        report = estimate(graph, settings=quick,
                          options=EstimateOptions(methods=("auto",), lower_budget=0))
        assert any(b.method == "sdp-conv" for b in report.bounds) == in_auto
