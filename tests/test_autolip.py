"""AutoLip over the DAG: certified bounds against Jacobian norms found by search."""
import itertools
import math

import pytest
import torch
from graphs import conv_net, max_jacobian_norm, mlp

from lipcheck.estimators.upper.autolip import autolip, bound_nodes
from lipcheck.graph import Graph, Node, OpKind, ValueInfo
from lipcheck.interpreter import infer_shapes
from lipcheck.rules import BoundContext, get_rule
from lipcheck.settings import Settings
from lipcheck.spectral.operator import dense_jacobian, node_operator


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("act", [OpKind.RELU, OpKind.TANH, OpKind.SIGMOID, OpKind.GELU])
def test_mlp_certified_bound_is_above_jacobian_norms(seed, act):
    graph = mlp([6, 8, 8, 3], act, seed)
    result = autolip(graph, bound_nodes(graph, Settings()))
    assert result.certified
    assert result.value >= max_jacobian_norm(graph, 200, seed)


@pytest.mark.parametrize("residual", [False, True])
def test_conv_net_certified_bound_is_above_jacobian_norms(residual):
    graph = conv_net(seed=1, residual=residual)
    result = autolip(graph, bound_nodes(graph, Settings()))
    assert result.certified
    assert result.value >= max_jacobian_norm(graph, 200)


def test_residual_add_sums_branches():
    graph = conv_net(seed=2, residual=True)
    result = autolip(graph, bound_nodes(graph, Settings()))
    by_name = {r.node.name: r for r in result.nodes}
    both = by_name["conv1"].running + by_name["relu0"].running
    assert by_name["add"].running == pytest.approx(both)


def test_power_iteration_is_never_certified():
    graph = conv_net(seed=0)
    result = autolip(graph, bound_nodes(graph, Settings(layer_method="power")))
    assert not result.certified
    conv = [r for r in result.nodes if r.node.op == OpKind.CONV]
    assert all(r.bound.method == "power-iteration" and not r.bound.certified for r in conv)
    exact = autolip(graph, bound_nodes(graph, Settings()))
    for p, e in zip(result.nodes, exact.nodes, strict=True):
        assert p.bound.value <= e.bound.value * (1 + 1e-6)


def test_two_outputs_combine_as_root_sum_of_squares():
    gen = torch.Generator().manual_seed(0)
    c = {"a": torch.randn(3, 4, generator=gen), "b": torch.randn(2, 4, generator=gen)}
    g = Graph([ValueInfo("x", (1, 4))], ["y1", "y2"],
              [Node("g1", OpKind.GEMM, ["x", "a"], ["y1"], {"transB": 1}),
               Node("g2", OpKind.GEMM, ["x", "b"], ["y2"], {"transB": 1})], c)
    infer_shapes(g)
    result = autolip(g, bound_nodes(g, Settings()))
    na, nb = (float(torch.linalg.matrix_norm(c[k].double(), 2)) for k in "ab")
    assert result.value == pytest.approx(math.hypot(na, nb), rel=1e-8)
    joint = float(torch.linalg.matrix_norm(torch.cat([c["a"], c["b"]]).double(), 2))
    assert result.value >= joint


def _conv_graph(dims, cin, cout, k, stride, pad, dil, group, size, transpose=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if transpose:
        w = torch.randn(cin, cout // group, *([k] * dims), generator=gen)
    else:
        w = torch.randn(cout, cin // group, *([k] * dims), generator=gen)
    attrs = {"strides": [stride] * dims, "pads": [pad] * (2 * dims), "dilations": [dil] * dims,
             "group": group}
    if transpose:
        attrs["output_padding"] = [stride - 1 if stride > 1 and dil == 1 else 0] * dims
    op = OpKind.CONV_TRANSPOSE if transpose else OpKind.CONV
    g = Graph([ValueInfo("x", (1, cin) + (size,) * dims)], ["y"],
              [Node("c", op, ["x", "w"], ["y"], attrs)], {"w": w})
    infer_shapes(g)
    return g


CONV_CASES = [
    (dims, stride, pad, dil, group, transpose)
    for dims, stride, pad, dil, group, transpose in itertools.product(
        [1, 2], [1, 2, 3], [0, 1, 3], [1, 2], [1, 2], [False, True])
    if not (transpose and pad >= 3)
][::3] + [(3, 2, 1, 1, 1, False), (3, 1, 0, 2, 2, True)]


@pytest.mark.parametrize("dims,stride,pad,dil,group,transpose", CONV_CASES)
def test_conv_layer_bound_equals_dense_jacobian_norm(dims, stride, pad, dil, group, transpose):
    size = {1: 9, 2: 6, 3: 4}[dims]
    g = _conv_graph(dims, 2, 4, 3 if dims < 3 else 2, stride, pad, dil, group, size, transpose)
    node = g.nodes[0]
    ctx = BoundContext(g, Settings())
    bound = get_rule(node.op).bound(node, ctx)
    x = torch.zeros(node.input_shapes[0], dtype=torch.float64)
    w = g.constants["w"].double()
    jac = torch.autograd.functional.jacobian(lambda v: get_rule(node.op).run(node, [v, w])[0], x)
    truth = float(torch.linalg.matrix_norm(jac.reshape(-1, x.numel()), 2))
    assert bound.certified
    assert bound.value >= truth
    assert bound.value == pytest.approx(truth, rel=1e-4)


def test_conv_run_matches_torch_module():
    conv = torch.nn.Conv2d(3, 6, 3, stride=2, padding=1, dilation=1, groups=3)
    g = Graph([ValueInfo("x", (1, 3, 7, 7))], ["y"],
              [Node("c", OpKind.CONV, ["x", "w", "b"], ["y"],
                    {"strides": [2, 2], "pads": [1, 1, 1, 1], "group": 3})],
              {"w": conv.weight.detach(), "b": conv.bias.detach()})
    x = torch.randn(1, 3, 7, 7)
    y = get_rule(OpKind.CONV).run(g.nodes[0], [x, g.constants["w"], g.constants["b"]])[0]
    assert torch.allclose(y, conv(x), atol=1e-6)


def test_conv_transpose_run_matches_torch_module():
    m = torch.nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)
    node = Node("c", OpKind.CONV_TRANSPOSE, ["x", "w", "b"], ["y"],
                {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]})
    x = torch.randn(1, 4, 5, 5)
    y = get_rule(node.op).run(node, [x, m.weight.detach(), m.bias.detach()])[0]
    assert torch.allclose(y, m(x), atol=1e-6)


def test_dense_jacobian_matches_autograd():
    g = _conv_graph(2, 2, 4, 3, 2, 1, 1, 1, 5)
    op = node_operator(g.nodes[0], BoundContext(g, Settings()))
    w = g.constants["w"].double()
    x = torch.zeros(g.nodes[0].input_shapes[0], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(
        lambda v: get_rule(OpKind.CONV).run(g.nodes[0], [v, w])[0], x)
    assert torch.allclose(dense_jacobian(op), jac.reshape(op.n_out, op.n_in))
