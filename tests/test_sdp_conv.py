"""sdp-conv: channel-wise LipSDP-Neuron per frequency on conv chains, certified in float64.

Truth it is checked against: torch's convolutions (the circular model), the exact
constant by region enumeration on tiny convnets, Jacobian norms at random points and a
local search, dense LipSDP-Neuron where the grid is a single frequency (there channel-wise
multipliers are per-neuron ones), and a certificate built to sit on the boundary.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from graphs import function_of, max_jacobian_norm

from lipcheck.estimators.exact.regions import exact_lipschitz
from lipcheck.estimators.upper.autolip import bound_nodes
from lipcheck.estimators.upper.chains import find_chains
from lipcheck.estimators.upper.conv_chain import apply_layer, circular_chain
from lipcheck.estimators.upper.global_bounds import DEFAULT_METHODS, global_bounds
from lipcheck.estimators.upper.sdp import lipsdp_neuron
from lipcheck.estimators.upper.sdp_conv import optimise, sdp_conv
from lipcheck.estimators.upper.sdp_conv_cert import certify
from lipcheck.estimators.upper.sdp_cost import Budget
from lipcheck.graph import Graph, Node, OpKind, ValueInfo
from lipcheck.interpreter import infer_shapes
from lipcheck.settings import Settings

# (C_out, k, stride, pad, dilation, group, batchnorm) per conv layer
Layer = tuple[int, int, int, int, int, int, bool]


def convnet(layers: list[Layer], size: int, c_in: int = 1, n_out: int = 3, seed: int = 0,
            pool: OpKind | None = None) -> Graph:
    """conv [BN] relu ... conv [BN] relu [pool] flatten gemm, random weights."""
    gen = torch.Generator().manual_seed(seed)
    nodes, consts, x, c = [], {}, "x", c_in
    for i, (c_out, k, s, p, d, grp, bn) in enumerate(layers):
        consts[f"w{i}"] = (torch.randn(c_out, c // grp, k, k, generator=gen)
                           / (k * math.sqrt(c / grp)))
        consts[f"b{i}"] = torch.randn(c_out, generator=gen)
        nodes.append(Node(f"conv{i}", OpKind.CONV, [x, f"w{i}", f"b{i}"], [f"c{i}"],
                          {"strides": [s, s], "pads": [p, p, p, p], "dilations": [d, d],
                           "group": grp}))
        x = f"c{i}"
        if bn:
            for j, name in enumerate(("scale", "bias", "mean", "var")):
                v = (torch.rand(c_out, generator=gen) + 0.5 if j != 1
                     else torch.randn(c_out, generator=gen))
                consts[f"bn{i}{name}"] = v
            nodes.append(Node(f"bn{i}", OpKind.BATCH_NORM, [x] + [f"bn{i}{n}" for n in
                                                                 ("scale", "bias", "mean", "var")],
                              [f"n{i}"], {"epsilon": 1e-5}))
            x = f"n{i}"
        nodes.append(Node(f"relu{i}", OpKind.RELU, [x], [f"r{i}"]))
        x, c = f"r{i}", c_out
    if pool is not None:
        nodes.append(Node("pool", pool, [x], ["p"], {"kernel_shape": [2, 2], "strides": [2, 2]}))
        x = "p"
    nodes.append(Node("flat", OpKind.FLATTEN, [x], ["f"], {"axis": 1}))
    infer_shapes(Graph([ValueInfo("x", (1, c_in, size, size))], ["f"], nodes, consts))
    flat = int(np.prod(nodes[-1].output_shapes[0][1:]))
    consts["wf"] = torch.randn(n_out, flat, generator=gen) / math.sqrt(flat)
    consts["bf"] = torch.randn(n_out, generator=gen)
    nodes.append(Node("fc", OpKind.GEMM, ["f", "wf", "bf"], ["y"], {"transB": 1}))
    g = Graph([ValueInfo("x", (1, c_in, size, size))], ["y"], nodes, consts)
    infer_shapes(g)
    return g


def chain_of(g: Graph, neuron: bool = True):
    s = Settings(extra={"sdp_conv_dense": False})   # sdp-conv's own bound, no ECLipsE-Fast fallback
    if not neuron:   # the channel-wise certificate alone, without the per-neuron step
        s.extra["sdp_conv_neuron_steps"] = 0
    nb = bound_nodes(g, s)
    (chain,) = find_chains(g, nb, s)
    return chain, s


def certified(g: Graph, neuron: bool = True) -> float:
    chain, s = chain_of(g, neuron)
    result = sdp_conv(chain, s, math.inf)
    assert result is not None and result.certified, result and result.detail
    return result.value


def searched_norm(g: Graph, points: int = 60, seed: int = 0) -> float:
    """Largest Jacobian norm at random points, then a local search around the best."""
    f = function_of(g)
    best = max_jacobian_norm(g, points, seed)
    n = int(np.prod(g.inputs[0].shape))
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    for _ in range(40):
        cand = x + torch.randn(n, generator=gen, dtype=torch.float64) * 0.5
        value = float(torch.linalg.matrix_norm(torch.autograd.functional.jacobian(f, cand), ord=2))
        if value > best:
            best, x = value, cand
    return best


CONVS = [
    [(3, 3, 1, 1, 1, 1, False), (4, 3, 2, 1, 1, 1, True)],
    [(4, 3, 2, 0, 1, 1, True), (4, 2, 1, 1, 1, 2, False)],
    [(2, 3, 1, 2, 2, 1, False), (3, 3, 2, 1, 1, 1, False)],
]


@pytest.mark.parametrize("layers", CONVS)
def test_circular_model_reproduces_the_convolutions(layers: list[Layer]) -> None:
    g = convnet(layers, 9)
    chain, _ = chain_of(g)
    model, why = circular_chain(chain, g)
    assert model is not None, why
    rng = np.random.default_rng(1)
    for i, part in enumerate(chain.parts[:-1]):
        x = rng.standard_normal(part.operator.in_shape[1:])
        want = part.operator.apply(torch.from_numpy(x)[None]).numpy()[0]
        np.testing.assert_allclose(apply_layer(model, i, x), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layers", CONVS)
def test_bound_is_above_every_jacobian_norm_found(layers: list[Layer]) -> None:
    g = convnet(layers, 9, seed=3)
    bound = certified(g)
    found = searched_norm(g)
    chain, _ = chain_of(g)
    assert found <= bound <= chain.autolip_product * (1 + 1e-9)


@pytest.mark.parametrize("layers,size", [
    ([(2, 2, 1, 0, 1, 1, False)], 3),
    ([(2, 3, 2, 1, 1, 1, True)], 4),
    ([(2, 2, 1, 0, 1, 1, False), (2, 2, 1, 0, 1, 1, False)], 3)])
def test_bound_is_above_the_exact_constant(layers: list[Layer], size: int) -> None:
    g = convnet(layers, size, n_out=2, seed=5)
    exact = exact_lipschitz(g)
    assert exact.complete
    bound = certified(g)
    assert bound >= exact.value * (1 - 1e-9)
    assert bound <= 2.0 * exact.value


def channel_sdp_reference(model) -> float:
    """The channel-wise LMI solved by cvxpy + Clarabel: the arrow of sdp_conv_cert, its
    complex Hermitian blocks embedded as [[Re, -Im], [Im, Re]]."""
    cp = pytest.importorskip("cvxpy")
    dims, border, f = model.dims, model.border(), model.freqs
    d, n_out = sum(dims), border.shape[1]
    ts, rho = [cp.Variable(n) for n in dims[1:]], cp.Variable()
    blocks_re = [[np.zeros((d, d)) if v != w else None for v in range(f)] for w in range(f)]
    blocks_im = [[np.zeros((d, d)) if v != w else None for v in range(f)] for w in range(f)]
    for w in range(f):
        re = [[np.zeros((a, b)) for b in dims] for a in dims]
        im = [[np.zeros((a, b)) for b in dims] for a in dims]
        re[0][0] = np.eye(dims[0])
        for i, t in enumerate(ts):
            sym = model.symbol(i)[w]
            column = cp.reshape(-model.slope / 2 * t, (dims[i + 1], 1), order="F")
            scale = column @ np.ones((1, dims[i]))
            re[i + 1][i + 1] = cp.diag(t)
            re[i + 1][i], im[i + 1][i] = cp.multiply(scale, sym.real), cp.multiply(scale, sym.imag)
            re[i][i + 1], im[i][i + 1] = re[i + 1][i].T, -im[i + 1][i].T
        blocks_re[w][w], blocks_im[w][w] = cp.bmat(re), cp.bmat(im)
    edge = np.zeros((f, n_out, d), dtype=complex)
    edge[:, :, d - dims[-1]:] = border
    for w in range(f):
        blocks_re[w].append(edge[w].real.T)
        blocks_im[w].append(-edge[w].imag.T)
    blocks_re.append([edge[w].real for w in range(f)] + [rho * np.eye(n_out)])
    blocks_im.append([edge[w].imag for w in range(f)] + [np.zeros((n_out, n_out))])
    re, im = cp.bmat(blocks_re), cp.bmat(blocks_im)
    arrow = cp.bmat([[re, -im], [im, re]])
    cp.Problem(cp.Minimize(rho), [(arrow + arrow.T) / 2 >> 0]).solve(solver="CLARABEL")
    return math.sqrt(rho.value)


def test_multipliers_reach_the_channel_wise_sdp_optimum() -> None:
    """Against the same LMI solved by an interior-point solver: the L-BFGS multipliers
    and the certificate lose at most 1e-4 relative."""
    g = convnet([(3, 3, 1, 1, 1, 1, False), (2, 2, 2, 0, 1, 1, False)], 4, seed=7)
    chain, _ = chain_of(g)
    model, _ = circular_chain(chain, g)
    reference = channel_sdp_reference(model)
    ours = certified(g, neuron=False)
    assert reference * (1 - 1e-5) <= ours <= reference * (1 + 1e-4)


def test_phase_refinement_stays_above_dense_lipsdp() -> None:
    """Refined to a 1x1 grid every position is its own phase: the multipliers are
    per-neuron, so no certificate may go below dense LipSDP-Neuron's optimum."""
    g = convnet([(3, 3, 1, 1, 1, 1, False), (2, 2, 2, 0, 1, 1, False)], 4, seed=7)
    chain, _ = chain_of(g)
    model, _ = circular_chain(chain, g, refine=4)
    assert model.freqs == 1
    dense = lipsdp_neuron([p.matrix() for p in chain.parts], chain.slopes)
    ts, _, _ = optimise(model, 40, Budget())
    cert = certify(model, ts)
    assert cert.verified and dense.certified
    assert dense.value * (1 - 1e-4) <= math.sqrt(cert.rho) <= certified(g, neuron=False)


def boundary_multipliers(g: Graph):
    chain, _ = chain_of(g)
    model, _ = circular_chain(chain, g)
    ts, _, _ = optimise(model, 20, Budget())
    return model, ts


def test_certificate_on_the_boundary_is_refused_with_the_margin_only() -> None:
    model, ts = boundary_multipliers(convnet(CONVS[0], 8))
    unshifted = certify(model, ts, margin=False)
    assert unshifted.verified
    edge = unshifted.rho / (1 + 1e-7) * (1 + 1e-13)  # just above the float64 boundary
    assert certify(model, ts, rho=edge, margin=False).verified   # without margins: accepted
    refused = certify(model, ts, rho=edge)
    assert not refused.verified
    assert certify(model, ts, rho=unshifted.rho * (1 + 1e-4)).verified


def test_indefinite_multipliers_are_refused() -> None:
    model, ts = boundary_multipliers(convnet(CONVS[0], 8))
    big = [t * 1e3 for t in ts]
    assert not certify(model, big).verified


def test_rounding_margin_grows_with_formation_error() -> None:
    model, ts = boundary_multipliers(convnet(CONVS[0], 8))
    cert = certify(model, ts)
    assert cert.verified and cert.shift > cert.need > 0


def test_chains_it_cannot_model_are_left_to_other_methods() -> None:
    from graphs import conv_net, mlp
    chain, s = chain_of(mlp([6, 5, 4]))          # a dense hidden layer
    assert sdp_conv(chain, s, math.inf) is None
    g = conv_net()                                # a LeakyReLU: slopes [0.1, 1]
    s = Settings()
    chains = find_chains(g, bound_nodes(g, s), s)
    assert chains and all(sdp_conv(c, s, math.inf) is None for c in chains)


def test_auto_runs_it_and_reports_the_chain() -> None:
    g = convnet(CONVS[0], 8)
    s = Settings()
    bounds = global_bounds(g, bound_nodes(g, s), list(DEFAULT_METHODS), s)
    conv = next(b for b in bounds if b.method == "sdp-conv")
    auto = next(b for b in bounds if b.method == "autolip")
    assert conv.certified and conv.kind == "upper" and conv.value < auto.value
    record = conv.extra["chains"][0]
    assert record["certified"] and "arrow Cholesky" in record["detail"]


def test_dense_fallback_is_taken_only_where_smaller() -> None:
    g = convnet(CONVS[0], 8)
    chain, own = chain_of(g)
    mine = sdp_conv(chain, own, math.inf)
    both = sdp_conv(chain, Settings(), math.inf)
    assert both.certified and both.value <= mine.value
    assert ("ECLipsE-Fast" in both.detail) == (both.value < mine.value)


def test_cli_method_sdp_conv_reports_each_chain_with_its_certificate(tmp_path) -> None:
    import json
    from pathlib import Path

    import jsonschema
    from typer.testing import CliRunner

    from lipcheck.cli import app
    from lipcheck.report import load_schema
    model = Path(__file__).resolve().parent.parent / "models" / "digits_resnet.onnx"
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["estimate", str(model), "--method", "sdp-conv",
                                      "--lower-budget", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    jsonschema.validate(data, load_schema())
    (conv,) = [b for b in data["bounds"] if b["method"] == "sdp-conv"]
    autolip = next(b for b in data["bounds"] if b["method"] == "autolip")
    assert conv["kind"] == "upper" and conv["value"] < autolip["value"]
    assert "as a unit" in conv["detail"] and "Cholesky" in conv["detail"]
