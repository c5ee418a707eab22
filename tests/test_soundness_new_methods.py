"""Soundness of the newly merged certified bounds, against independent truth.

- sdp-conv (plain chains and residual blocks as a unit) is a LipSDP-Neuron bound, so it
  must be >= ||M D_k A_k ... D_1 A_1|| for *every* diagonal slope pattern D_i in [0, b]
  (reachable or not). The A_i here are built by torch's conv2d (explicit F.pad for
  asymmetric pads, BatchNorm folded by hand), not by lipcheck, and the patterns are
  searched (random + coordinate flips): a "relaxed truth" no certified bound may undercut.
- chains broken by a value with two consumers: every certified bound >= the largest
  Jacobian norm found on the real function.
- Layer/Group/Instance/RMS norms: the certified constant is exact, i.e. equal (up to
  its 1e-9 margins) to ||J(x)|| at a constant input; LRN >= a Jacobian search.
- written-out norms: the loaded graph computes the torch function (fused or not), and the
  bound is >= the Jacobian norm at a constant input.
- the circular model's symbols and border are within their stated float error of a
  long-double reference (the certificate's formation margin relies on it).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from graphs import function_of

from lipcheck.estimators.upper.autolip import bound_nodes
from lipcheck.estimators.upper.conv_chain import CircularChain
from lipcheck.estimators.upper.global_bounds import global_bounds
from lipcheck.graph import Graph, Node, OpKind, ValueInfo
from lipcheck.interpreter import infer_shapes, run_graph
from lipcheck.settings import Settings

SLOPE = {OpKind.RELU: 1.0, OpKind.TANH: 1.0, OpKind.SIGMOID: 0.25}
# (C_out, k, stride, pads [top, left, bottom, right], dilation, group, batchnorm)
Conv = tuple[int, int, int, list[int], int, int, bool]


def _conv_matrix(w: torch.Tensor, pads: list[int], stride: int, dil: int, group: int,
                 in_shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """The conv's matrix by torch (independent of lipcheck's operators)."""
    def f(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x.reshape(in_shape), (pads[1], pads[3], pads[0], pads[2]))
        return F.conv2d(x, w, stride=stride, dilation=dil, groups=group).reshape(-1)
    n = math.prod(in_shape)
    jac = torch.autograd.functional.jacobian(f, torch.zeros(n, dtype=torch.float64))
    padded = F.pad(torch.zeros(in_shape, dtype=torch.float64),
                   (pads[1], pads[3], pads[0], pads[2]))
    out = F.conv2d(padded, w, stride=stride, dilation=dil, groups=group).shape
    return jac.numpy(), tuple(out)


def _r(t: torch.Tensor) -> torch.Tensor:
    """Rounded to float32 (the graph's constants), kept in float64 for the reference."""
    return t.float().double()


def _bn(gen: torch.Generator, c: int, prefix: str, x: str, consts: dict) -> Node:
    """BatchNorm with scales of both signs; its per-channel factor is returned in consts."""
    consts[f"{prefix}s"] = torch.randn(c, generator=gen) * 1.5
    consts[f"{prefix}b"] = torch.randn(c, generator=gen)
    consts[f"{prefix}m"] = torch.randn(c, generator=gen)
    consts[f"{prefix}v"] = torch.rand(c, generator=gen) + 0.1
    return Node(prefix, OpKind.BATCH_NORM, [x] + [f"{prefix}{n}" for n in "sbmv"], [f"{prefix}o"],
                {"epsilon": 1e-3})


def _bn_factor(consts: dict, prefix: str) -> torch.Tensor:
    return consts[f"{prefix}s"].double() / torch.sqrt(consts[f"{prefix}v"].double() + 1e-3)


def conv_chain(layers: list[Conv], size: int, c_in: int, n_out: int, act: OpKind, seed: int):
    """conv [BN] act ... conv [BN] act flatten gemm; the graph and its linear maps by torch."""
    gen = torch.Generator().manual_seed(seed)
    nodes, consts, mats, x, shape = [], {}, [], "x", (1, c_in, size, size)
    for i, (c_out, k, s, pads, d, grp, bn) in enumerate(layers):
        w = _r(torch.randn(c_out, shape[1] // grp, k, k, generator=gen) / k)
        consts[f"w{i}"], consts[f"b{i}"] = w.float(), torch.randn(c_out, generator=gen)
        nodes.append(Node(f"conv{i}", OpKind.CONV, [x, f"w{i}", f"b{i}"], [f"c{i}"],
                          {"strides": [s, s], "pads": pads, "dilations": [d, d], "group": grp}))
        x = f"c{i}"
        if bn:
            nodes.append(_bn(gen, c_out, f"bn{i}", x, consts))
            x = nodes[-1].outputs[0]
            w = w * _bn_factor(consts, f"bn{i}")[:, None, None, None]
        mat, shape = _conv_matrix(w, pads, s, d, grp, shape)
        mats.append(mat)
        nodes.append(Node(f"act{i}", act, [x], [f"a{i}"]))
        x = f"a{i}"
    flat = math.prod(shape)
    consts["wf"] = torch.randn(n_out, flat, generator=gen) / math.sqrt(flat)
    nodes += [Node("flat", OpKind.FLATTEN, [x], ["f"], {"axis": 1}),
              Node("fc", OpKind.GEMM, ["f", "wf"], ["y"], {"transB": 1})]
    mats.append(consts["wf"].double().numpy())
    g = Graph([ValueInfo("x", (1, c_in, size, size))], ["y"], nodes, consts)
    infer_shapes(g)
    return g, mats


def worst_pattern_norm(norm_of, sizes: list[int], tops: list[float], seed: int, tries: int = 150,
                       flips: int = 120) -> float:
    """max of norm_of(patterns) over diagonal patterns with entries in {0, top}."""
    rng = np.random.default_rng(seed)
    best, best_ds = -1.0, None
    for _ in range(tries):
        p = rng.uniform(0.3, 1.0)
        ds = [top * (rng.random(n) < p) for n, top in zip(sizes, tops, strict=True)]
        value = norm_of(ds)
        if value > best:
            best, best_ds = value, ds
    for d, top in zip(best_ds, tops, strict=True):
        for j in rng.permutation(len(d))[:flips]:
            d[j] = top - d[j]
            value = norm_of(best_ds)
            if value > best:
                best = value
            else:
                d[j] = top - d[j]
    return best


def chain_relaxed_truth(mats: list[np.ndarray], slope: float, seed: int) -> float:
    def norm_of(ds):
        m = mats[0]
        for d, a in zip(ds, mats[1:], strict=True):
            m = a @ (d[:, None] * m)
        return float(np.linalg.norm(m, 2))
    widths = [a.shape[0] for a in mats[:-1]]
    return worst_pattern_norm(norm_of, widths, [slope] * (len(mats) - 1), seed)


def certified_bounds(g: Graph, methods: list[str],
                     dense: bool = False) -> dict[str, tuple[float, str]]:
    s = Settings(extra={"sdp_conv_dense": dense})
    bounds = global_bounds(g, bound_nodes(g, s), methods, s)
    return {b.method: (b.value, b.detail) for b in bounds if b.certified and b.kind == "upper"}


CHAINS = [  # odd sizes, stride 2-3, dilation, groups, asymmetric pads, BN with negative scales
    ([(3, 3, 3, [0, 1, 2, 0], 1, 1, True), (4, 2, 1, [1, 0, 0, 1], 1, 1, False)],
     8, 1, 3, OpKind.RELU),
    ([(4, 3, 2, [2, 1, 0, 1], 2, 2, True), (2, 1, 1, [0, 0, 0, 0], 1, 2, True)],
     9, 2, 2, OpKind.TANH),
    ([(2, 2, 2, [1, 1, 1, 1], 1, 1, False), (3, 3, 3, [0, 2, 1, 0], 1, 1, True),
      (2, 1, 1, [0, 0, 0, 0], 1, 1, False)], 11, 1, 1, OpKind.SIGMOID),
]


@pytest.mark.parametrize("case", range(len(CHAINS)))
def test_sdp_conv_chain_is_above_every_slope_pattern(case: int) -> None:
    layers, size, c_in, n_out, act = CHAINS[case]
    g, mats = conv_chain(layers, size, c_in, n_out, act, seed=case)
    truth = chain_relaxed_truth(mats, SLOPE[act], seed=case)
    own = certified_bounds(g, ["autolip", "sdp-conv"])
    assert "sdp-conv" in own and "arrow Cholesky" in own["sdp-conv"][1], own
    assert own["sdp-conv"][0] < own["autolip"][0]          # the method did apply
    both = certified_bounds(g, ["autolip", "sdp-conv", "eclipse-fast"], dense=True)
    for method, (value, _) in list(own.items()) + list(both.items()):
        assert value >= truth * (1 - 1e-12), (method, value, truth)
    assert own["sdp-conv"][0] <= truth * 1.6               # and is not vacuous


def residual_net(blocks: list[tuple[int, int, int, bool, list[int]]], c: int, size: int,
                 act: OpKind, seed: int, gain: float = 1.0):
    """Blocks y = x + conv(act(conv(x) [BN])) with ReLU between blocks; block = (hidden, k,
    dilation, batchnorm, pads). Returns the graph and each block's (W1, W2) by torch."""
    gen = torch.Generator().manual_seed(seed)
    nodes, consts, mats, x, shape = [], {}, [], "x", (1, c, size, size)
    for i, (h, k, d, bn, pads) in enumerate(blocks):
        if i:
            nodes.append(Node(f"mid{i}", OpKind.RELU, [x], [f"m{i}"]))
            x = f"m{i}"
        w1 = _r(torch.randn(h, c, k, k, generator=gen) * gain / k)
        w2 = _r(torch.randn(c, h, k, k, generator=gen) * gain / k)
        consts.update({f"u{i}": w1.float(), f"v{i}": w2.float(),
                       f"ub{i}": torch.randn(h, generator=gen)})
        nodes.append(Node(f"ca{i}", OpKind.CONV, [x, f"u{i}", f"ub{i}"], [f"ca{i}"],
                          {"pads": pads, "dilations": [d, d]}))
        hidden = f"ca{i}"
        if bn:
            nodes.append(_bn(gen, h, f"rb{i}", hidden, consts))
            hidden = nodes[-1].outputs[0]
            w1 = w1 * _bn_factor(consts, f"rb{i}")[:, None, None, None]
        nodes += [Node(f"ra{i}", act, [hidden], [f"ra{i}"]),
                  Node(f"cb{i}", OpKind.CONV, [f"ra{i}", f"v{i}"], [f"cb{i}"],
                       {"pads": pads, "dilations": [d, d]}),
                  Node(f"add{i}", OpKind.ADD, [f"cb{i}", x] if i % 2 else [x, f"cb{i}"], [f"s{i}"])]
        m1, mid = _conv_matrix(w1, pads, 1, d, 1, shape)
        m2, out = _conv_matrix(w2, pads, 1, d, 1, mid)
        assert out == shape
        mats.append((m1, m2))
        x = f"s{i}"
    g = Graph([ValueInfo("x", shape)], [x], nodes, consts)
    infer_shapes(g)
    return g, mats


def residual_relaxed_truth(mats, slope: float, seed: int) -> float:
    n = mats[0][0].shape[1]

    def norm_of(ds):
        m = np.eye(n)
        for i, (w1, w2) in enumerate(mats):
            if i:
                m = ds[2 * i - 1][:, None] * m
            m = m + w2 @ (ds[2 * i][:, None] * (w1 @ m))
        return float(np.linalg.norm(m, 2))
    sizes, tops = [], []
    for i, (w1, _) in enumerate(mats):
        if i:
            sizes.append(n)
            tops.append(1.0)
        sizes.append(w1.shape[0])
        tops.append(slope)
    return worst_pattern_norm(norm_of, sizes, tops, seed)


RESIDUALS = [
    ([(3, 3, 2, True, [2, 2, 2, 2]), (2, 3, 1, False, [1, 1, 1, 1])], 2, 5, OpKind.RELU),
    ([(4, 3, 1, True, [1, 1, 1, 1])], 3, 4, OpKind.TANH),
    ([(2, 1, 1, False, [0, 0, 0, 0]), (3, 3, 1, True, [1, 1, 1, 1])], 2, 6, OpKind.SIGMOID),
]


@pytest.mark.parametrize("case", range(len(RESIDUALS)))
def test_residual_blocks_as_a_unit_are_above_every_slope_pattern(case: int) -> None:
    blocks, c, size, act = RESIDUALS[case]
    g, mats = residual_net(blocks, c, size, act, seed=10 + case)
    truth = residual_relaxed_truth(mats, SLOPE[act], seed=case)
    own = certified_bounds(g, ["autolip", "sdp-conv", "eclipse-fast"])
    assert "as a unit" in own["sdp-conv"][1], own["sdp-conv"][1]
    for method, (value, _) in own.items():
        assert value >= truth * (1 - 1e-12), (method, value, truth)


def test_a_value_with_two_consumers_breaks_the_chain_soundly() -> None:
    """conv relu conv relu -> h; y = fc(h) + fc2(relu(conv(h))): h has two consumers."""
    g, _ = conv_chain([(3, 3, 2, [1, 0, 1, 2], 1, 1, True), (2, 3, 1, [1, 1, 1, 1], 1, 1, False)],
                      7, 1, 2, OpKind.RELU, seed=5)
    gen = torch.Generator().manual_seed(6)
    fc = next(n for n in g.nodes if n.name == "fc")
    g.constants["w9"] = torch.randn(2, 2, 3, 3, generator=gen) / 3
    g.constants["wg"] = torch.randn(2, 2 * 4 * 4, generator=gen) / 4
    extra = [Node("conv9", OpKind.CONV, ["a1", "w9"], ["c9"], {"pads": [1, 1, 1, 1]}),
             Node("act9", OpKind.RELU, ["c9"], ["a9"]),
             Node("flat9", OpKind.FLATTEN, ["a9"], ["f9"], {"axis": 1}),
             Node("fc9", OpKind.GEMM, ["f9", "wg"], ["y9"], {"transB": 1}),
             Node("sum", OpKind.ADD, ["y", "y9"], ["z"])]
    g = Graph(g.inputs, ["z"], g.nodes + extra, g.constants)
    infer_shapes(g)
    assert fc.inputs[0] == "f"
    found = _searched_norm(g, points=80)
    bounds = certified_bounds(g, ["autolip", "sdp-conv", "eclipse-fast"], dense=True)
    assert "sdp-conv" in bounds
    for method, (value, _) in bounds.items():
        assert value >= found * (1 - 1e-9), (method, value, found)


def _searched_norm(g: Graph, points: int, seed: int = 0, scale: float = 2.0) -> float:
    """Largest Jacobian norm at random points and constant inputs, then a local search."""
    f = function_of(g)
    n = math.prod(g.inputs[0].shape)
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.zeros(n, dtype=torch.float64), torch.full((n,), 0.5, dtype=torch.float64)]
    xs += [torch.randn(n, generator=gen, dtype=torch.float64) * scale for _ in range(points)]
    best, at = -1.0, xs[0]
    for x in xs:
        value = float(torch.linalg.matrix_norm(torch.autograd.functional.jacobian(f, x), ord=2))
        if value > best:
            best, at = value, x
    for _ in range(30):
        x = at + torch.randn(n, generator=gen, dtype=torch.float64) * 0.3 * scale
        value = float(torch.linalg.matrix_norm(torch.autograd.functional.jacobian(f, x), ord=2))
        if value > best:
            best, at = value, x
    return best


def one_node(op: OpKind, shape: tuple[int, ...], attrs: dict, scale: torch.Tensor | None = None,
             bias: torch.Tensor | None = None) -> Graph:
    consts, inputs = {}, ["x"]
    if scale is not None:
        consts["g"] = scale
        inputs.append("g")
    if bias is not None:
        consts["b"] = bias
        inputs.append("b")
    g = Graph([ValueInfo("x", shape)], ["y"], [Node("n", op, inputs, ["y"], attrs)], consts)
    infer_shapes(g)
    return g


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


NORMS = [  # exact constants: attained at a constant input
    ("LayerNorm over 3 axes", OpKind.LAYER_NORM, (2, 3, 2, 2), {"axis": 1, "epsilon": 1e-3},
     (3, 2, 2)),
    ("LayerNorm eps 1e-12", OpKind.LAYER_NORM, (1, 2, 5), {"axis": -1, "epsilon": 1e-12}, (5,)),
    ("GroupNorm 1 group", OpKind.GROUP_NORM, (1, 4, 2, 2), {"num_groups": 1, "epsilon": 1e-3},
     (4,)),
    ("GroupNorm groups of 1 channel", OpKind.GROUP_NORM, (1, 4, 2, 1),
     {"num_groups": 4, "epsilon": 1e-3}, (4,)),
    ("InstanceNorm", OpKind.INSTANCE_NORM, (1, 3, 2, 2), {"epsilon": 1e-4}, (3,)),
    ("RMSNorm over 2 axes", OpKind.RMS_NORM, (1, 2, 3, 2), {"axis": 2, "epsilon": 1e-4}, (3, 2)),
]


@pytest.mark.parametrize("case", range(len(NORMS)))
def test_normalisation_constants_are_exact(case: int) -> None:
    _, op, shape, attrs, scale_shape = NORMS[case]
    scale = _randn(*scale_shape, seed=case)
    has_bias = op in (OpKind.GROUP_NORM, OpKind.INSTANCE_NORM)
    bias = _randn(*scale_shape, seed=case + 50) if has_bias else None
    g = one_node(op, shape, attrs, scale, bias)
    (bound,) = [b for b in certified_bounds(g, ["autolip"]).values()]
    f = function_of(g)
    at_constant = max(float(torch.linalg.matrix_norm(torch.autograd.functional.jacobian(
        f, torch.full((math.prod(shape),), c, dtype=torch.float64)), ord=2)) for c in (0.0, 1.5))
    assert at_constant <= bound[0] <= at_constant * (1 + 1e-8), (bound, at_constant)
    assert _searched_norm(g, points=20, scale=0.05) <= bound[0]


def test_groups_of_one_entry_are_constant() -> None:
    g = one_node(OpKind.GROUP_NORM, (1, 4, 1, 1), {"num_groups": 4, "epsilon": 1e-3},
                 _randn(4), _randn(4, seed=1))
    (bound,) = certified_bounds(g, ["autolip"]).values()
    assert bound[0] == 0.0 and _searched_norm(g, points=10) == 0.0


@pytest.mark.parametrize("size,alpha,beta,bias", [(2, 3.0, 0.75, 0.5), (3, 4.0, 3.0, 0.5),
                                                   (5, 2.0, 1.0, 0.1), (7, 30.0, 0.3, 2.0)])
def test_lrn_bound_is_above_a_jacobian_search(size: int, alpha: float, beta: float,
                                              bias: float) -> None:
    attrs = {"size": size, "alpha": alpha, "beta": beta, "bias": bias}
    g = one_node(OpKind.LRN, (1, 5, 2, 1), attrs)
    (bound,) = certified_bounds(g, ["autolip"]).values()
    found = max(_searched_norm(g, points=30, scale=s, seed=i)
                for i, s in enumerate((0.1, 0.5, 1.0, 3.0)))
    assert bias ** -beta * (1 - 1e-12) <= found <= bound[0]


def _torch_norm_cases():
    def ln_other_axis(x):          # centred over the last axis, scaled over two: RMSNorm of d
        d = x - x.mean(dim=-1, keepdim=True)
        return d / torch.sqrt((d * d).mean(dim=(-2, -1), keepdim=True) + 1e-3)

    def rms_eps_outside(x):        # not RMSNorm: must not fuse (no certified finite slope)
        return x / (torch.sqrt(x.pow(2).mean(-1, keepdim=True)) + 1e-2)

    def ln_variance_of_x(x):       # not LayerNorm
        d = x - x.mean(dim=-1, keepdim=True)
        return d / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + 1e-3)
    return [(ln_other_axis, True), (rms_eps_outside, False), (ln_variance_of_x, False)]


@pytest.mark.parametrize("case", range(3))
def test_written_out_norms_load_as_the_same_function(case: int) -> None:
    from lipcheck.api import load

    fn, fuses = _torch_norm_cases()[case]

    class Wrap(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return fn(x)
    shape = (1, 3, 4)
    g = load(Wrap(), [shape])
    fused = {OpKind.LAYER_NORM, OpKind.RMS_NORM} & {n.op for n in g.nodes}
    assert bool(fused) == fuses, [n.op for n in g.nodes]
    x = _randn(*shape, seed=3).double()
    got = next(iter(run_graph(g, {g.inputs[0].name: x}, dtype=torch.float64).values()))
    assert torch.allclose(got.reshape(-1), fn(x).reshape(-1), rtol=1e-5, atol=1e-6)
    bounds = certified_bounds(g, ["autolip"])
    f = function_of(g)
    jac0 = float(torch.linalg.matrix_norm(torch.autograd.functional.jacobian(
        f, torch.full((math.prod(shape),), 0.3, dtype=torch.float64)), ord=2))
    for value, _ in bounds.values():
        assert value >= jac0 * (1 - 1e-9)


def test_symbols_and_border_are_within_their_stated_float_error() -> None:
    """A 1-tap layer and a 1-entry border on a 333-grid (twiddle angles near 2 pi, the
    worst measured: 11.3 u), against long-double twiddles."""
    g = 333
    w = np.array([(a, b) for a in range(g) for b in range(g)], dtype=np.int64)
    two_pi = np.longdouble(2) * np.arccos(np.longdouble(-1))

    def exact(offset):
        k = ((w @ np.array(offset, dtype=np.int64)) % g).astype(np.longdouble)
        return np.cos(two_pi * k / g), np.sin(two_pi * k / g)
    model = CircularChain(g, [(1, 1), (1, 1)], [1, 1], [{(0, 1): np.full((1, 1), 0.75)}],
                          np.zeros((1, 1, 1, 1)), 1.0, [])
    c, s = exact((0, 1))
    sym = model.symbol(0)[:, 0, 0]
    err = np.sqrt((sym.real - 0.75 * c) ** 2 + (sym.imag - 0.75 * s) ** 2).max()
    assert 5 * 2.0**-53 < err <= model.symbol_error(0)
    close = np.zeros((1, 1, 3, 3))
    close[0, 0, 2, 1] = -1.25
    small = CircularChain(17, [(1, 1)], [1], [], close, 1.0, [])
    w = np.array([(a, b) for a in range(17) for b in range(17)], dtype=np.int64)
    g = 17
    c, s = exact((2, 1))
    root = np.sqrt(np.longdouble(17 * 17))
    border = small.border()[:, 0, 0]
    err = np.sqrt(((border.real + 1.25 * c / root) ** 2
                   + (border.imag + 1.25 * s / root) ** 2).sum())
    assert err <= small.border_error()


def test_sdp_conv_is_sharp_where_the_relaxation_is_tight() -> None:
    """Cases where channel-wise LipSDP meets the worst slope pattern (measured gaps 0.4 %
    and 5e-9): a bound that shrank by a percent would fall below the truth here."""
    g, mats = conv_chain([(2, 2, 2, [0, 0, 0, 0], 1, 1, False)], 4, 1, 1, OpKind.RELU, seed=2)
    truth = chain_relaxed_truth(mats, 1.0, seed=2)
    value = certified_bounds(g, ["sdp-conv"])["sdp-conv"][0]
    assert truth * (1 - 1e-12) <= value <= truth * 1.01
    g, mats = residual_net([(3, 1, 1, True, [0, 0, 0, 0])], 2, 3, OpKind.TANH, seed=1, gain=0.3)
    truth = residual_relaxed_truth(mats, 1.0, seed=1)
    value = certified_bounds(g, ["sdp-conv"])["sdp-conv"][0]
    assert truth * (1 - 1e-12) <= value <= truth * (1 + 1e-6)


@pytest.mark.parametrize("residual", [False, True])
def test_a_batch_of_two_is_left_to_the_other_methods(residual: bool) -> None:
    """sdp-conv models one sample: with batch 2 it must step aside, not crash `auto`."""
    if residual:
        g, _ = residual_net([(2, 3, 1, False, [1, 1, 1, 1])], 2, 4, OpKind.RELU, seed=0)
    else:
        g, _ = conv_chain([(2, 3, 2, [1, 1, 1, 1], 1, 1, False)], 6, 1, 2, OpKind.RELU, seed=0)
    first = g.inputs[0]
    batched = ValueInfo(first.name, (2,) + tuple(first.shape[1:]))
    g = Graph([batched], g.outputs, g.nodes, g.constants)
    infer_shapes(g)
    bounds = certified_bounds(g, ["autolip", "sdp-conv"])
    assert "autolip" in bounds and "sdp-conv" not in bounds


def _masked_graph(mask_value: float, reader: OpKind) -> Graph:
    consts = {"m": torch.tensor([[0.0, mask_value], [0.0, 0.0]])}
    g = Graph([ValueInfo("x", (1, 2, 2))], ["y"],
              [Node("n", reader, ["x", "m"], ["s"]),
               Node("soft", OpKind.SOFTMAX, ["s"], ["y"], {"axis": -1})],
              consts)
    infer_shapes(g)
    return g


def test_an_additive_minus_inf_mask_is_estimated_and_other_infinities_are_refused() -> None:
    """The loaders keep -inf attention masks; estimate must accept them too (it refused
    every causal attention model), and still refuse NaN and an infinite factor."""
    from lipcheck.api import estimate
    from lipcheck.errors import BadWeightsError
    report = estimate(_masked_graph(-math.inf, OpKind.ADD))
    assert report.upper_bound is not None and report.upper_bound.certified
    for value, reader in ((math.nan, OpKind.ADD), (math.inf, OpKind.MUL)):
        with pytest.raises(BadWeightsError):
            estimate(_masked_graph(value, reader))
