"""Structural, pooling and arithmetic rules against dense Jacobian SVDs (float64).

Certified bounds must be >= every sampled Jacobian norm; for linear and selection ops
(whose Jacobian is constant) they must equal it."""
from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from lipcheck.estimators.upper.autolip import combine
from lipcheck.graph import Graph, Node, OpKind, ValueInfo
from lipcheck.interpreter import infer_shapes, run_graph
from lipcheck.rules import BoundContext, get_rule
from lipcheck.rules.pooling import schur_certifier
from lipcheck.settings import Settings
from lipcheck.spectral.operator import node_operator


def make(op: OpKind, shapes: list[tuple[int, ...]], attrs: dict | None = None,
         consts: dict[str, torch.Tensor] | None = None) -> Graph:
    names = [f"x{i}" for i in range(len(shapes))]
    consts = consts or {}
    node = Node("n", op, names + list(consts), ["y"], attrs or {})
    inputs = [ValueInfo(n, s) for n, s in zip(names, shapes, strict=True)]
    graph = Graph(inputs, ["y"], [node], dict(consts))
    infer_shapes(graph)
    return graph


def bound_of(graph: Graph):
    node = graph.nodes[0]
    return get_rule(node.op).bound(node, BoundContext(graph, Settings()))


def jacobian_norm(graph: Graph, point: list[torch.Tensor]) -> float:
    def f(*xs: torch.Tensor) -> torch.Tensor:
        feeds = {v.name: x for v, x in zip(graph.inputs, xs, strict=True)}
        return run_graph(graph, feeds, dtype=torch.float64, grad=True)["y"].reshape(-1)
    jac = jacobian(f, tuple(point))
    dense = torch.cat([j.reshape(j.shape[0], -1) for j in jac], dim=1)
    return float(torch.linalg.matrix_norm(dense, ord=2)) if dense.numel() else 0.0


def sampled_max(graph: Graph, samples: int = 6, scale: float = 2.0) -> float:
    gen = torch.Generator().manual_seed(0)
    return max(jacobian_norm(graph, [scale * torch.randn(v.shape, generator=gen,
                                                         dtype=torch.float64)
                                     for v in graph.inputs]) for _ in range(samples))


def certified_value(graph: Graph) -> float:
    bound = bound_of(graph)
    assert bound.certified
    return combine(bound, [1.0] * len(graph.inputs))


X = (1, 2, 6, 6)
LINEAR = {
    "reshape": (OpKind.RESHAPE, [X], {"shape": [2, 36]}, {}),
    "flatten": (OpKind.FLATTEN, [X], {"axis": 2}, {}),
    "transpose": (OpKind.TRANSPOSE, [X], {"perm": [0, 3, 1, 2]}, {}),
    "squeeze": (OpKind.SQUEEZE, [(1, 3, 1)], {"axes": [2]}, {}),
    "unsqueeze": (OpKind.UNSQUEEZE, [(3, 4)], {"axes": [0]}, {}),
    "identity": (OpKind.IDENTITY, [(3, 4)], {}, {}),
    "dropout": (OpKind.DROPOUT, [(3, 4)], {}, {}),
    "slice": (OpKind.SLICE, [X], {"starts": [-1], "ends": [-100], "axes": [3], "steps": [-2]},
              {}),
    "gather_repeats": (OpKind.GATHER, [(4, 3)], {"axis": 0},
                       {"i": torch.tensor([0, 0, 2, 0, -1])}),
    "expand": (OpKind.EXPAND, [(3, 1)], {"shape": [2, 3, 4]}, {}),
    "tile": (OpKind.TILE, [(2, 3)], {"repeats": [3, 2]}, {}),
    "pad_constant": (OpKind.PAD, [X], {"pads": [0, 0, 1, 2, 0, 0, 2, 1], "value": 3.0}, {}),
    "pad_reflect": (OpKind.PAD, [X], {"pads": [0, 0, 2, 3, 0, 0, 2, 1], "mode": "reflect"}, {}),
    "pad_edge": (OpKind.PAD, [X], {"pads": [0, 0, 3, 0, 0, 0, 3, 2], "mode": "edge"}, {}),
    "pad_wrap": (OpKind.PAD, [X], {"pads": [0, 0, 4, 0, 0, 0, 4, 0], "mode": "wrap"}, {}),
    "resize_nearest": (OpKind.RESIZE, [(1, 1, 3, 4)], {"mode": "nearest", "sizes": [1, 1, 7, 9]},
                       {}),
    "resize_linear": (OpKind.RESIZE, [(1, 1, 3, 4)], {"mode": "linear", "sizes": [1, 1, 7, 9]},
                      {}),
    "resize_linear_align": (OpKind.RESIZE, [(1, 1, 5, 4)],
                            {"mode": "linear", "sizes": [1, 1, 3, 9],
                             "coordinate_transformation_mode": "align_corners"}, {}),
    "depth_to_space": (OpKind.DEPTH_TO_SPACE, [(1, 8, 2, 3)], {"blocksize": 2}, {}),
    "space_to_depth": (OpKind.SPACE_TO_DEPTH, [(1, 2, 4, 4)], {"blocksize": 2}, {}),
    "split": (OpKind.SPLIT, [(2, 6)], {"axis": 1, "split": [2, 4]}, {}),
    "cast": (OpKind.CAST, [(2, 3)], {"to": 11}, {}),
    "avgpool_include_pad": (OpKind.AVERAGE_POOL, [X], {"kernel_shape": [3, 3],
                                                       "strides": [2, 2], "pads": [1, 1, 1, 1],
                                                       "count_include_pad": 1}, {}),
    "avgpool_ceil": (OpKind.AVERAGE_POOL, [(1, 1, 7, 7)], {"kernel_shape": [3, 3],
                                                          "strides": [2, 2], "ceil_mode": 1}, {}),
    "global_avgpool": (OpKind.GLOBAL_AVERAGE_POOL, [X], {}, {}),
    "reduce_mean": (OpKind.REDUCE_MEAN, [X], {"axes": [1, 3]}, {}),
    "reduce_sum": (OpKind.REDUCE_SUM, [X], {"axes": [2], "keepdims": 0}, {}),
    "add_broadcast_const": (OpKind.ADD, [(3, 1)], {}, {"c": torch.ones(3, 4)}),
    "sub": (OpKind.SUB, [(3, 4)], {}, {"c": torch.ones(4)}),
    "mul_broadcast_const": (OpKind.MUL, [(1, 4)], {}, {"c": torch.randn(3, 4)}),
    "div_const": (OpKind.DIV, [(3, 4)], {}, {"c": torch.tensor([0.5, -2.0, 4.0, 1.0])}),
    "add_two_dynamic": (OpKind.ADD, [(3, 4), (3, 4)], {}, {}),
    "add_two_dynamic_broadcast": (OpKind.ADD, [(1, 4), (3, 4)], {}, {}),
    "mean_two_dynamic": (OpKind.MEAN, [(3, 4), (3, 4)], {}, {}),
    "concat": (OpKind.CONCAT, [(2, 3), (2, 2)], {"axis": 1}, {}),
    "pow_one": (OpKind.POW, [(3, 4)], {}, {"e": torch.tensor(1.0)}),
}


@pytest.mark.parametrize("case", sorted(LINEAR))
def test_linear_and_selection_bounds_are_exact(case: str) -> None:
    op, shapes, attrs, consts = LINEAR[case]
    graph = make(op, shapes, attrs, consts)
    truth = jacobian_norm(graph, [torch.randn(s, dtype=torch.float64) for s in shapes])
    value = certified_value(graph)
    assert value >= truth * (1 - 1e-9)
    if len(shapes) == 1:  # merges over several inputs are sound but not tight jointly
        assert value == pytest.approx(truth, rel=1e-6)


def test_selection_multiplicities_are_not_assumed_one() -> None:
    assert bound_of(make(*LINEAR["expand"][:3])).value == pytest.approx(math.sqrt(8))
    # edge pad: a corner entry is copied 4 times along axis 2 (3 before + itself), 3 along axis 3
    assert bound_of(make(*LINEAR["pad_edge"][:3])).value == pytest.approx(math.sqrt(4 * 3))
    assert bound_of(make(*LINEAR["resize_nearest"][:3])).value > 1.0


NONLINEAR = {
    "maxpool_overlap": (OpKind.MAX_POOL, [X], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    "maxpool_dilated_ceil": (OpKind.MAX_POOL, [(1, 1, 7, 7)],
                             {"kernel_shape": [2, 2], "strides": [2, 2], "dilations": [2, 1],
                              "ceil_mode": 1}),
    "global_maxpool": (OpKind.GLOBAL_MAX_POOL, [X], {}),
    "lppool_2": (OpKind.LP_POOL, [X], {"kernel_shape": [3, 3], "strides": [2, 2], "p": 2}),
    "lppool_1": (OpKind.LP_POOL, [X], {"kernel_shape": [2, 2], "strides": [1, 1], "p": 1}),
    "reduce_max": (OpKind.REDUCE_MAX, [X], {"axes": [2, 3]}),
    "reduce_min": (OpKind.REDUCE_MIN, [X], {"axes": [1]}),
    "reduce_l2": (OpKind.REDUCE_L2, [X], {"axes": [3]}),
    "max_two": (OpKind.MAX, [(3, 4), (1, 4)], {}),
    "min_two": (OpKind.MIN, [(3, 4), (3, 4)], {}),
    "softmax": (OpKind.SOFTMAX, [(2, 5)], {"axis": -1}),
    "log_softmax": (OpKind.LOG_SOFTMAX, [(2, 4)], {"axis": 1}),
}


@pytest.mark.parametrize("case", sorted(NONLINEAR))
def test_nonlinear_bounds_dominate_sampled_jacobians(case: str) -> None:
    graph = make(*NONLINEAR[case])
    assert certified_value(graph) >= sampled_max(graph) * (1 - 1e-9)


def test_max_pool_bound_is_the_window_count_and_warns() -> None:
    overlap = bound_of(make(*NONLINEAR["maxpool_overlap"]))
    assert overlap.value == pytest.approx(3.0)
    assert [c for c, _ in overlap.warnings] == ["overlapping_max_pool"]
    tiles = bound_of(make(OpKind.MAX_POOL, [X], {"kernel_shape": [2, 2], "strides": [2, 2]}))
    assert tiles.value == 1.0 and not tiles.warnings
    # the sup is attained: a constant input region lets one entry win all 9 windows
    graph = make(*NONLINEAR["maxpool_overlap"])
    x = torch.zeros(X, dtype=torch.float64)
    x[0, 0, 2, 2] = 1.0
    assert jacobian_norm(graph, [x]) == pytest.approx(3.0)


def test_softmax_half_is_attained() -> None:
    graph = make(OpKind.SOFTMAX, [(1, 4)], {"axis": -1})
    assert bound_of(graph).value == 0.5
    logits = torch.tensor([[0.0, 0.0, -60.0, -60.0]], dtype=torch.float64)
    assert jacobian_norm(graph, [logits]) == pytest.approx(0.5, abs=1e-9)


def test_log_softmax_sqrt_n_is_the_sup() -> None:
    graph = make(OpKind.LOG_SOFTMAX, [(1, 5)], {"axis": -1})
    value = bound_of(graph).value
    assert value == pytest.approx(math.sqrt(5))
    logits = torch.tensor([[40.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert jacobian_norm(graph, [logits]) == pytest.approx(math.sqrt(5), rel=1e-9)
    assert jacobian_norm(graph, [logits]) <= value


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1], "count_include_pad": 0},
    {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [0, 1, 2, 0], "ceil_mode": 1},
    {"kernel_shape": [2, 2], "strides": [2, 2]},
])
def test_average_pool_schur_certificate_dominates_exact_norm(attrs: dict) -> None:
    graph = make(OpKind.AVERAGE_POOL, [(1, 1, 7, 6)], attrs)
    node, ctx = graph.nodes[0], BoundContext(graph, Settings())
    exact = jacobian_norm(graph, [torch.randn(1, 1, 7, 6, dtype=torch.float64)])
    schur = schur_certifier(node, ctx, node_operator(node, ctx))
    assert schur.certified and schur.value >= exact * (1 - 1e-12)
    assert schur.value <= 2 * exact  # not vacuous


@pytest.mark.parametrize("op, consts, shapes", [
    (OpKind.EXP, {}, [(3,)]), (OpKind.LOG, {}, [(3,)]), (OpKind.SQRT, {}, [(3,)]),
    (OpKind.RECIPROCAL, {}, [(3,)]), (OpKind.POW, {"e": torch.tensor(2.0)}, [(3,)]),
    (OpKind.MUL, {}, [(3,), (3,)]), (OpKind.DIV, {"c": torch.tensor([1.0, 0.0, 2.0])}, [(3,)]),
])
def test_not_globally_lipschitz_ops_are_unbounded(op: OpKind, consts: dict, shapes: list) -> None:
    bound = bound_of(make(op, shapes, {}, consts))
    assert math.isinf(bound.value) and bound.detail
