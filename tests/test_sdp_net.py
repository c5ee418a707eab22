"""sdp-net: LipSDP-Neuron of the whole network in its ReLU form (pools and residual sums
inside one SDP, a multiplier per unit).

Truth: the exact constant by region enumeration (a pooled net written as a ReLU MLP),
Jacobian norms at random points and by a local search, LipSDP-Neuron's optimum from the
barrier method on MLPs (no identity units: the same SDP), the smallest eigenvalue of the
assembled Q at the recursion's rho, and a certificate pushed below its boundary.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from graphs import mlp
from test_bab import residual_mlp
from test_sdp_conv import searched_norm
from test_sdp_conv_pool import pooled_net
from test_sdp_conv_pool import relu_form as pooled_as_mlp

from lipcheck.estimators.exact.regions import exact_lipschitz
from lipcheck.estimators.upper.autolip import bound_nodes
from lipcheck.estimators.upper.global_bounds import global_bounds
from lipcheck.estimators.upper.sdp import lipsdp_neuron
from lipcheck.estimators.upper.sdp_certificate import (
    assemble,
    magnitude,
    reduce_ends,
    verified_psd,
    verified_psd_scaled,
)
from lipcheck.estimators.upper.sdp_net import (
    QUICK_EVALUATIONS,
    certify,
    sdp_net,
    search,
    stages,
    unit_slopes,
)
from lipcheck.estimators.upper.sdp_net_rho import Rho
from lipcheck.graph import Graph, Node, OpKind, ValueInfo
from lipcheck.interpreter import infer_shapes
from lipcheck.propagation import build_program
from lipcheck.propagation.relu_net import relu_form
from lipcheck.settings import Settings


def net_of(g: Graph):
    net = relu_form(build_program(g))
    return net, reduce_ends([w.numpy() for w in net.weights]), unit_slopes(net)


def bound(g: Graph, quick: bool = False) -> float:
    found = sdp_net(g, math.inf, quick)
    assert found is not None and found.certified and found.kind == "upper", found
    return found.value


def test_identity_units_get_slope_one_and_relus_zero_to_one():
    net, _, slopes = net_of(residual_mlp())
    for lin, (a, b) in zip(net.linear, slopes, strict=True):
        np.testing.assert_array_equal(a, lin.numpy().astype(float))
        np.testing.assert_array_equal(b, np.ones(len(lin)))
    assert any(lin.any() for lin in net.linear)      # the skip is carried


def test_the_recursion_is_the_smallest_rho_of_the_assembled_q():
    """At the start's multipliers, Q(rho(Lam), Lam) is singular and PSD: its smallest
    eigenvalue is 0 (to rounding) and Q(0.999 rho) has a negative one."""
    _, w, slopes = net_of(pooled_net((6, 6), [(2, 3, 1), (3, 3, 1)], [(2, 2), None], seed=1))
    rho = Rho(w, slopes)
    lams = rho.start()
    value = float(rho(lams))
    numpy_lams = [lam.numpy() for lam in lams]
    q = assemble(w, slopes, value, numpy_lams)           # type: ignore[arg-type]
    low = np.linalg.eigvalsh(q)[0]
    assert abs(low) <= 1e-9 * np.abs(q).max()
    assert np.linalg.eigvalsh(assemble(w, slopes, 0.999 * value, numpy_lams))[0] < 0  # type: ignore[arg-type]


def test_the_adjoint_gradient_is_autograds_and_the_difference_quotients():
    """rho's gradient by the adjoint recursion (one solve a layer) against torch autograd
    through the same Choleskys, and against central differences, at multipliers 1.5-3x
    the start's (identity units and ReLUs; two pools): each layer's steepest unit."""
    _, w, slopes = net_of(pooled_net((6, 6), [(2, 3, 1), (3, 3, 1)], [(2, 2), None], seed=1))
    rho = Rho(w, slopes)
    gen = torch.Generator().manual_seed(0)
    lams = [(lam * (1.5 + 1.5 * torch.rand(len(lam), generator=gen, dtype=torch.float64)))
            .requires_grad_() for lam in rho.start()]
    rho(lams).backward()
    adjoint = [lam.grad.clone() for lam in lams]
    for lam in lams:
        lam.grad = None
    torch.linalg.eigvalsh(rho.forward(lams)[0])[-1].backward()
    for mine, auto in zip(adjoint, lams, strict=True):
        scale = float(auto.grad.abs().max())
        torch.testing.assert_close(mine, auto.grad, rtol=1e-9, atol=1e-12 * scale)
    with torch.no_grad():
        for layer in range(len(lams)):
            unit = int(adjoint[layer].abs().argmax())      # a difference well above rounding
            step = 1e-6 * float(lams[layer][unit])
            ends = []
            for sign in (1, -1):
                moved = [lam.clone() for lam in lams]
                moved[layer][unit] += sign * step
                ends.append(float(rho(moved)))
            quotient = (ends[0] - ends[1]) / (2 * step)
            assert abs(quotient - float(adjoint[layer][unit])) <= 1e-5 * abs(quotient)


def test_the_smoothed_adjoint_gradient_is_autograds_and_the_difference_quotients():
    """The smoothing mu log sum exp(lambda_j / mu) of t_0's eigenvalues (mu a tenth of
    rho, so every eigenvector weighs in): the adjoint recursion with a column per
    eigenvector against autograd through eigvalsh and logsumexp, and central differences;
    its value is within mu log(dim) above rho, and `top` is rho itself."""
    _, w, slopes = net_of(pooled_net((6, 6), [(2, 3, 1), (3, 3, 1)], [(2, 2), None], seed=1))
    rho = Rho(w, slopes)
    gen = torch.Generator().manual_seed(1)
    lams = [(lam * (1.5 + 1.5 * torch.rand(len(lam), generator=gen, dtype=torch.float64)))
            .requires_grad_() for lam in rho.start()]
    with torch.no_grad():
        values = torch.linalg.eigvalsh(rho.forward(lams)[0])
    mu = 0.1 * float(values[-1])
    smoothed = rho(lams, mu)
    assert rho.top == pytest.approx(float(values[-1]), rel=1e-12)   # eigh against eigvalsh
    assert rho.top < float(smoothed) <= rho.top + mu * math.log(len(values)) * (1 + 1e-12)
    assert float(torch.softmax(values / mu, 0)[-2]) > 0.01       # not only the top's
    smoothed.backward()
    adjoint = [lam.grad.clone() for lam in lams]
    for lam in lams:
        lam.grad = None
    (mu * torch.logsumexp(torch.linalg.eigvalsh(rho.forward(lams)[0]) / mu, 0)).backward()
    for mine, auto in zip(adjoint, lams, strict=True):
        torch.testing.assert_close(mine, auto.grad, rtol=1e-9,
                                   atol=1e-12 * float(auto.grad.abs().max()))
    with torch.no_grad():
        for layer in range(len(lams)):
            unit = int(adjoint[layer].abs().argmax())
            step = 1e-6 * float(lams[layer][unit])
            ends = []
            for sign in (1, -1):
                moved = [lam.clone() for lam in lams]
                moved[layer][unit] += sign * step
                ends.append(float(rho(moved, mu)))
            quotient = (ends[0] - ends[1]) / (2 * step)
            assert abs(quotient - float(adjoint[layer][unit])) <= 1e-5 * abs(quotient)


def test_the_stages_split_the_per_unit_evaluations():
    assert stages(40) == []
    assert stages(192) == [116, 192]
    assert stages(600) == [180, 320, 460, 600]
    assert len(stages(5000)) == 8 and stages(5000)[-1] == 5000


@pytest.mark.parametrize("seed", [4, 5])
def test_bound_sits_on_the_largest_region_norm(seed: int) -> None:
    """Region enumeration of the pooled net as a ReLU MLP: `lower` is the largest
    Jacobian norm over regions with an interior ball (the constant), `value` the largest
    over kept regions (with zero biases it also counts degenerate ones: 2.66 against a
    constant of 1.9002 for seed 4). The bound is on the constant, within 1 %."""
    g = pooled_net((2, 3), [(2, 2, 0)], [(1, 2)], n_out=2, seed=seed)
    g.constants["b0"] = torch.zeros(2)
    exact = exact_lipschitz(pooled_as_mlp(g))
    assert exact.complete
    assert exact.lower * (1 - 1e-9) <= bound(g) <= min(exact.value * (1 + 1e-9),
                                                       1.01 * exact.lower)


@pytest.mark.parametrize("graph", [
    lambda: pooled_net((6, 6), [(3, 3, 1), (2, 3, 1)], [(2, 2), None], seed=1),
    lambda: pooled_net((7, 6), [(2, 3, 1), (2, 2, 0)], [(2, 2), (1, 2)], seed=3,
                       pool_first=True),
    lambda: residual_mlp(seed=1)], ids=["pool", "two-pools", "residual"])
def test_bound_is_above_every_jacobian_norm_found_and_below_autolip(graph) -> None:
    g = graph()
    value = bound(g)
    found = searched_norm(g)
    autolip = global_bounds(g, bound_nodes(g, Settings()), ["autolip"], Settings())[0].value
    assert found <= value <= autolip * (1 + 1e-9)


def test_on_an_mlp_it_reaches_lipsdp_neurons_optimum():
    """No identity units: the SDP is LipSDP-Neuron's, whose optimum the barrier method
    finds; the descent's certified value sits on it (never below), within 1 %."""
    g = mlp([5, 12, 10, 3], seed=2)
    chain = [g.constants[f"w{i}"].double().numpy() for i in range(3)]
    optimum = lipsdp_neuron(chain, [(0.0, 1.0)] * 2)
    assert optimum.certified
    value = bound(g)
    assert optimum.value * (1 - 1e-6) <= value <= optimum.value * 1.01


def _check(w, slopes, rho, lams) -> bool:
    q = assemble(w, slopes, rho, lams)
    return verified_psd_scaled(q, magnitude(w, slopes, rho, lams), max(x.shape[0] for x in w))


def test_a_certificate_below_its_boundary_is_refused():
    """The search's rho is where Q(rho, Lam) turns singular: the check passes rho raised by
    at most 1e-5 (relative) and refuses it 1e-6 below."""
    _, w, slopes = net_of(residual_mlp(seed=3))
    found = search(w, slopes, 200, math.inf)
    assert found is not None
    passed = certify(w, slopes, found)
    assert passed is not None and found.rho <= passed <= found.rho * (1 + 1e-5)
    assert not _check(w, slopes, found.rho * (1 - 1e-6), found.lams)


def test_the_scaled_check_takes_wide_diagonals_and_refuses_indefinite_ones():
    """A PSD matrix whose diagonal spans 1e-3..1e9 passes the scaled check where the plain
    one's trace-sized shift refuses it; the same with a negative eigenvalue of -1e-9 (of
    the scaled matrix) is refused; so are a zero diagonal and a NaN."""
    gen = np.random.default_rng(0)
    n = 60
    d = np.exp2(np.linspace(-5, 15, n))
    b = gen.standard_normal((n, n))
    u, _ = np.linalg.qr(b)
    core = u @ np.diag(np.r_[1e-7, np.ones(n - 1)]) @ u.T
    q = core * d[:, None] * d[None, :]
    exact = np.abs(q)
    assert verified_psd_scaled(q, exact, n) and not verified_psd(q)
    bad = u @ np.diag(np.r_[-1e-9, np.ones(n - 1)]) @ u.T * d[:, None] * d[None, :]
    assert not verified_psd_scaled(bad, np.abs(bad), n)
    for broken in (np.where(np.eye(n, dtype=bool) & (np.arange(n) == 3), 0.0, q),
                   np.where(np.eye(n, dtype=bool) & (np.arange(n) == 3), np.nan, q)):
        assert not verified_psd_scaled(broken, np.abs(broken), n)


def test_the_evaluation_count_decides_the_value():
    _, w, slopes = net_of(residual_mlp(seed=3))
    a, b = (search(w, slopes, 40, math.inf) for _ in range(2))
    assert a is not None and b is not None
    assert a.rho == b.rho and a.evaluations == b.evaluations == 40 and not a.cut_by_budget


def test_the_clock_only_caps():
    g = pooled_net((12, 12), [(4, 3, 1), (6, 3, 1)], [(2, 2), None], seed=2)
    _, w, slopes = net_of(g)
    began = time.monotonic()
    found = search(w, slopes, 100000, began + 0.5)
    assert time.monotonic() - began < 1.5
    assert found is not None and found.cut_by_budget and found.evaluations < 100000


def test_graphs_outside_the_relu_form_are_not_applicable():
    assert sdp_net(mlp([3, 4, 2], act=OpKind.SIGMOID), math.inf, False) is None


def test_auto_runs_it_and_the_report_names_it():
    g = pooled_net((6, 6), [(3, 3, 1), (2, 3, 1)], [(2, 2), None], seed=1)
    s = Settings()
    found = {b.method: b for b in global_bounds(g, bound_nodes(g, s), ["sdp-net:quick"], s)}
    net = found["sdp-net"]
    assert net.certified and net.extra["mode"] == "quick"
    assert net.extra["identity_units"] > 0 and net.extra["evaluations"] <= QUICK_EVALUATIONS
    assert "identity units" in net.detail


def test_quick_mode_skips_nets_whose_evaluation_is_too_large(monkeypatch):
    import lipcheck.estimators.upper.sdp_net as module
    _, w, slopes = net_of(residual_mlp())
    one = module.evaluation_work(w, slopes)
    assert one < module.evaluation_work(w)          # the carried units' product only
    monkeypatch.setattr(module, "QUICK_TOTAL_WORK", 39 * one)   # 39 < 40 evaluations
    g = residual_mlp()
    assert sdp_net(g, math.inf, True) is None
    assert sdp_net(g, math.inf, False) is not None


def _sums(seed: int) -> Graph:
    """x -> relu(W1 x) + relu(W2 x) -> gemm: a sum of two branches (carried as identity)."""
    gen = torch.Generator().manual_seed(seed)
    c = {k: torch.randn(*s, generator=gen) for k, s in
         (("w1", (6, 3)), ("w2", (6, 3)), ("w3", (2, 6)))}
    nodes = [Node("a", OpKind.GEMM, ["x", "w1"], ["h1"], {"transB": 1}),
             Node("b", OpKind.GEMM, ["x", "w2"], ["h2"], {"transB": 1}),
             Node("ra", OpKind.RELU, ["h1"], ["r1"]), Node("rb", OpKind.RELU, ["h2"], ["r2"]),
             Node("s", OpKind.ADD, ["r1", "r2"], ["t"]),
             Node("o", OpKind.GEMM, ["t", "w3"], ["y"], {"transB": 1})]
    g = Graph([ValueInfo("x", (1, 3))], ["y"], nodes, c)
    infer_shapes(g)
    return g


def test_branches_that_sum_are_bounded_together():
    g = _sums(7)
    assert searched_norm(g) <= bound(g)


def test_the_full_count_follows_the_budget_option_not_the_clock(monkeypatch):
    """--method sdp-net's evaluations: FULL_RATE multiply-adds a second of its share of the
    budget (proportional to the option's value), at most the cap, at least auto's count and
    the scale phase; an infinite or NaN budget gives the cap. global_bounds passes the
    option's share: twice the budget, twice the count."""
    import lipcheck.estimators.upper.sdp_net as module
    g = residual_mlp()
    _, w, slopes = net_of(g)
    one = module.evaluation_work(w, slopes)
    assert module.full_evaluations(w, 1e-9, slopes) == module.quick_evaluations(
        w, slopes=slopes) == 600  # auto's
    for cap in (1e9, math.inf, math.nan):
        assert module.full_evaluations(w, cap, slopes) == module.MAX_EVALUATIONS
    monkeypatch.setattr(module, "QUICK_TOTAL_WORK", 10 * one)   # auto: 10 (< 40)
    seconds = 300 * one / module.FULL_RATE
    assert module.full_evaluations(w, seconds, slopes) == int(module.FULL_RATE * seconds / one)
    assert module.full_evaluations(w, 1e-9, slopes) == module.SCALE_EVALUATIONS
    asked: list[int] = []
    real = module.search
    monkeypatch.setattr(module, "search", lambda *a: asked.append(a[2]) or real(*a))
    monkeypatch.setattr(module, "FULL_RATE", 100 * one)          # 100 a second
    s = Settings()
    for budget in (1.0, 2.0):
        s.time_budget = budget
        global_bounds(g, bound_nodes(g, s), ["sdp-net", "eclipse-fast"], s)
    assert asked == [50, 100]


def test_cli_method_sdp_net_holds_the_time_budget_and_reports_its_certificate(tmp_path,
                                                                                  monkeypatch):
    """With a count far past what 3 s allow (FULL_RATE raised: MAX_EVALUATIONS on digits_cnn,
    ~100 s), --time-budget 3 cuts the search (said in the report) and the float64 check
    still runs inside the cap."""
    import json

    import lipcheck.estimators.upper.sdp_net as module
    monkeypatch.setattr(module, "FULL_RATE", 1e15)
    from pathlib import Path

    import jsonschema
    from typer.testing import CliRunner

    from lipcheck.cli import app
    from lipcheck.report import load_schema
    model = Path(__file__).resolve().parent.parent / "models" / "digits_cnn.onnx"
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["estimate", str(model), "--method", "sdp-net",
                                      "--time-budget", "3", "--lower-budget", "0",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    jsonschema.validate(data, load_schema())
    (net,) = [b for b in data["bounds"] if b["method"] == "sdp-net"]
    assert net["seconds"] <= 3 + 1.0 and net["cut_by_budget"]
    assert 0 < net["evaluations"] < module.MAX_EVALUATIONS
    assert net["kind"] == "upper" and net["certified"] and "Cholesky" in net["detail"]
    assert "cut short by the time budget" in net["detail"]


def test_nets_too_large_for_the_dense_check_are_refused_before_building(monkeypatch):
    import lipcheck.estimators.upper.sdp_net as module

    def never(*args, **kwargs):
        raise AssertionError("built")
    monkeypatch.setattr(module, "build_program", never)
    g = pooled_net((70, 70), [(1, 3, 1)], [(2, 2)], seed=0)     # 4900 ReLU inputs
    assert module.activation_units(g) == 4900 * 2
    assert sdp_net(g, math.inf, False) is None
