"""Bound propagation on input sets: ranges contain every sampled value, local constants are
at least every Jacobian norm found in the set, vertex enumeration is exact when it finishes."""
from __future__ import annotations

import math

import pytest
import torch
from graphs import conv_net, mlp
from torch import nn

from lipcheck.graph import Graph, Node, OpKind
from lipcheck.interpreter import infer_shapes, run_graph
from lipcheck.loaders.torch_loader import load_module
from lipcheck.propagation import (
    InputSet,
    Program,
    UnsupportedLocal,
    build_program,
    local_lipschitz,
    propagate,
    row_norm_bounds,
)
from lipcheck.propagation.masked import graph_masked, masked_product
from lipcheck.propagation.program import Add, Affine, sources
from lipcheck.propagation.vertices import vertex_bounds, vertex_lipschitz


def pool_cnn() -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                        nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(3, 4, 2), nn.LeakyReLU(0.2),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 3))
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


GRAPHS = {
    "mlp": lambda: mlp([5, 8, 7, 3], seed=3),
    "leaky": lambda: mlp([4, 6, 6, 2], OpKind.LEAKY_RELU, seed=4, attrs={"alpha": 0.3}),
    "conv": lambda: conv_net(seed=2, size=4),
    "pool": lambda: load_module(pool_cnn(), [(1, 1, 6, 6)]),
    "residual": lambda: conv_net(seed=6, residual=True, size=4),
}
SETS = [("box", 0.5), ("l2", 0.7), ("linf", 0.3)]


def make_set(kind: str, size: float, centers: torch.Tensor) -> InputSet:
    if kind == "box":
        return InputSet.box(centers - size, centers + size)
    return InputSet.ball(centers, size, "2" if kind == "l2" else "inf")


def sample(s: InputSet, count: int, seed: int) -> torch.Tensor:
    """(B, count, n) points of each set, many of them on its boundary."""
    gen = torch.Generator().manual_seed(seed)
    b, n = s.center.shape
    d = torch.randn(b, count, n, generator=gen, dtype=torch.float64)
    if s.kind == "l2":
        d = d / torch.linalg.vector_norm(d, dim=2, keepdim=True) * s.radius
    else:
        half = s.radius[:, None, :] if s.kind == "box" else s.radius
        d = torch.sign(d) * half * torch.where(torch.rand(b, count, n, generator=gen) < 0.5,
                                               1.0, torch.rand(b, count, n, generator=gen,
                                                               dtype=torch.float64))
    shrink = torch.rand(b, count, 1, generator=gen, dtype=torch.float64) ** 0.25
    return s.center[:, None, :] + d * shrink


def centers(program: Program, batch: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    return torch.randn(batch, program.n_in, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("name", GRAPHS)
def test_lowering_computes_the_graph(name):
    graph = GRAPHS[name]()
    program = build_program(graph)
    x = centers(program)
    info = graph.inputs[0]
    for row in x:
        ref = run_graph(graph, {info.name: row.reshape(info.shape)}, dtype=torch.float64)
        assert torch.allclose(program.run(row[None])[0], ref[graph.outputs[0]].reshape(-1),
                              atol=1e-12)


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("kind,size", SETS)
def test_every_range_contains_the_sampled_values(name, kind, size):
    program = build_program(GRAPHS[name]())
    s = make_set(kind, size, centers(program))
    points = sample(s, 400, seed=1)
    for method in ("interval", "crown"):
        ranges = propagate(program, s, method)
        flat = points.reshape(-1, program.n_in)
        every = program.values(flat)
        for i, (lo, hi) in ranges.pre.items():
            values = every[sources(program.steps, i)[0]].reshape(s.batch, points.shape[1], -1)
            assert bool((values >= lo[:, None] - 1e-12).all())
            assert bool((values <= hi[:, None] + 1e-12).all())
        out = program.run(points.reshape(-1, program.n_in)).reshape(s.batch, points.shape[1], -1)
        assert bool((out >= ranges.output[0][:, None] - 1e-12).all())
        assert bool((out <= ranges.output[1][:, None] + 1e-12).all())


@pytest.mark.parametrize("name", GRAPHS)
def test_crown_is_at_least_as_tight_as_intervals(name):
    program = build_program(GRAPHS[name]())
    s = make_set("l2", 0.7, centers(program))
    loose, tight = propagate(program, s, "interval"), propagate(program, s, "crown")
    for i in loose.pre:
        assert bool((tight.pre[i][0] >= loose.pre[i][0] - 1e-12).all())
        assert bool((tight.pre[i][1] <= loose.pre[i][1] + 1e-12).all())
    assert tight.unstable(program) <= loose.unstable(program)


def jacobians(program: Program, points: torch.Tensor) -> torch.Tensor:
    return torch.func.vmap(torch.func.jacrev(lambda v: program.run(v[None])[0]))(points)


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("kind,size", SETS)
def test_local_constants_bound_every_jacobian_found_in_the_set(name, kind, size):
    program = build_program(GRAPHS[name]())
    s = make_set(kind, size, centers(program))
    ranges = propagate(program, s)
    points = sample(s, 300, seed=2)
    jac = jacobians(program, points.reshape(-1, program.n_in)).reshape(
        s.batch, points.shape[1], program.n_out, program.n_in)
    found = torch.linalg.matrix_norm(jac, ord=2).amax(dim=1)
    interval, vertex = local_lipschitz(program, ranges), vertex_lipschitz(program, ranges)
    assert bool((found <= vertex).all() and (vertex <= interval * (1 + 1e-9)).all())
    assert bool((found <= masked_product(program, ranges)).all())
    assert bool((found <= graph_masked(program, ranges)).all())
    rows = torch.randn(s.batch, 2, program.n_out, dtype=torch.float64)
    found_rows = torch.linalg.vector_norm(torch.einsum("bmo,bpoi->bpmi", rows, jac), dim=3)
    k_int, k_vtx = row_norm_bounds(program, ranges, rows), vertex_bounds(program, ranges, rows)
    assert bool((found_rows.amax(dim=1) <= k_vtx).all() and (k_vtx <= k_int * (1 + 1e-9)).all())
    assert bool((found_rows.amax(dim=1) <= graph_masked(program, ranges, rows)).all())


def test_vertex_enumeration_is_exact_on_a_one_hidden_layer_net():
    """sup over the box of ||W2 D W1|| is a max over the 2^u vertices, found by brute force."""
    graph = mlp([3, 5, 2], seed=11)
    program = build_program(graph)
    s = make_set("box", 1.5, torch.zeros(1, 3, dtype=torch.float64))
    ranges = propagate(program, s)
    lo, hi = ranges.pre[1]
    w1, w2 = program.steps[0].weight, program.steps[2].weight
    unstable = [k for k in range(5) if lo[0, k] < 0 < hi[0, k]]
    assert 1 <= len(unstable) <= 5
    best = 0.0
    for mask in range(2 ** len(unstable)):
        d = (lo[0] >= 0).double()
        for bit, k in enumerate(unstable):
            d[k] = float(mask >> bit & 1)
        best = max(best, float(torch.linalg.matrix_norm(w2 @ torch.diag(d) @ w1, ord=2)))
    assert vertex_lipschitz(program, ranges)[0].item() == pytest.approx(best, rel=1e-8)


def test_a_set_with_every_unit_stable_gives_the_jacobian_norm():
    graph = mlp([4, 6, 3], seed=5)
    program = build_program(graph)
    x = centers(program, 1)
    ranges = propagate(program, InputSet.ball(x, 1e-6, "2"))
    assert ranges.unstable(program) == 0
    jac = jacobians(program, x)[0]
    exact = float(torch.linalg.matrix_norm(jac, ord=2))
    assert local_lipschitz(program, ranges)[0].item() <= exact * (1 + 1e-6) + 1e-9
    assert vertex_lipschitz(program, ranges)[0].item() == pytest.approx(exact, rel=1e-8)


def test_the_local_constant_shrinks_towards_the_global_one_as_the_set_grows():
    program = build_program(GRAPHS["mlp"]())
    x = centers(program, 1)
    radii = (0.01, 0.3, 3.0, 300.0)
    values = [masked_product(program, propagate(program, InputSet.ball(x, r, "2")))[0].item()
              for r in radii]
    assert values == sorted(values) and values[0] < values[-1]
    w = [s.weight for s in program.steps if isinstance(s, Affine)]
    product = math.prod(float(torch.linalg.matrix_norm(m, ord=2)) for m in w)
    assert values[-1] <= product * (1 + 1e-7)  # the same norms, inflated against rounding


def test_a_residual_graph_is_not_a_chain_and_keeps_the_interval_hull():
    program = build_program(GRAPHS["residual"]())
    assert not program.is_chain and any(isinstance(s, Add) for s in program.steps)
    ranges = propagate(program, make_set("l2", 0.3, centers(program)))
    assert torch.equal(masked_product(program, ranges), graph_masked(program, ranges))
    assert torch.equal(vertex_lipschitz(program, ranges), local_lipschitz(program, ranges))


def test_a_product_of_two_dynamic_inputs_is_refused_with_the_node_named():
    graph = mlp([3, 4, 2], seed=1)
    graph = Graph(graph.inputs, ["sq"], graph.nodes + [Node("square", OpKind.MUL, ["h1", "h1"],
                                                            ["sq"])], graph.constants)
    infer_shapes(graph)
    with pytest.raises(UnsupportedLocal, match="square"):
        build_program(graph)


def test_an_unsupported_op_is_named():
    with pytest.raises(UnsupportedLocal, match="Sigmoid"):
        build_program(mlp([3, 4, 2], OpKind.SIGMOID))


def test_a_layer_too_large_for_dense_steps_is_refused(monkeypatch):
    import lipcheck.propagation.program as program_module
    monkeypatch.setattr(program_module, "MAX_ENTRIES", 20)
    with pytest.raises(UnsupportedLocal, match="too large"):
        build_program(mlp([5, 8, 3]))
