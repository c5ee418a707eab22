"""Small hand-built IR graphs for tests (no loader involved)."""
from __future__ import annotations

from itertools import pairwise

import torch

from lipcheck.graph import Graph, Node, OpKind, ValueInfo
from lipcheck.interpreter import infer_shapes, run_graph


def mlp(widths: list[int], act: OpKind = OpKind.RELU, seed: int = 0,
        attrs: dict | None = None) -> Graph:
    gen = torch.Generator().manual_seed(seed)
    nodes, consts, x = [], {}, "x"
    for i, (n_in, n_out) in enumerate(pairwise(widths)):
        consts[f"w{i}"] = torch.randn(n_out, n_in, generator=gen) / n_in**0.5
        consts[f"b{i}"] = torch.randn(n_out, generator=gen)
        nodes.append(Node(f"fc{i}", OpKind.GEMM, [x, f"w{i}", f"b{i}"], [f"h{i}"], {"transB": 1}))
        x = f"h{i}"
        if i < len(widths) - 2:
            nodes.append(Node(f"act{i}", act, [x], [f"a{i}"], dict(attrs or {})))
            x = f"a{i}"
    g = Graph([ValueInfo("x", (1, widths[0]))], [x], nodes, consts)
    infer_shapes(g)
    return g


def conv_net(seed: int = 0, residual: bool = False, size: int = 6) -> Graph:
    """conv(2->4,k3,p1) relu conv(4->4,k3,s1,p1) [+ shortcut] relu conv(4->3,k2,s2) ..."""
    gen = torch.Generator().manual_seed(seed)
    c = {"w0": torch.randn(4, 2, 3, 3, generator=gen) / 3,
         "w1": torch.randn(4, 4, 3, 3, generator=gen) / 4,
         "w2": torch.randn(3, 4, 2, 2, generator=gen) / 3, "b0": torch.randn(4, generator=gen)}
    nodes = [Node("conv0", OpKind.CONV, ["x", "w0", "b0"], ["c0"], {"pads": [1, 1, 1, 1]}),
             Node("relu0", OpKind.RELU, ["c0"], ["r0"]),
             Node("conv1", OpKind.CONV, ["r0", "w1"], ["c1"], {"pads": [1, 1, 1, 1]})]
    last = "c1"
    if residual:
        nodes.append(Node("add", OpKind.ADD, ["c1", "r0"], ["s"]))
        last = "s"
    nodes += [Node("relu1", OpKind.LEAKY_RELU, [last], ["r1"], {"alpha": 0.1}),
              Node("conv2", OpKind.CONV, ["r1", "w2"], ["y"], {"strides": [2, 2]})]
    g = Graph([ValueInfo("x", (1, 2, size, size))], ["y"], nodes, c)
    infer_shapes(g)
    return g


def function_of(graph: Graph):
    """x (flat, float64) -> graph output (flat), differentiable."""
    info = graph.inputs[0]

    def f(x: torch.Tensor) -> torch.Tensor:
        out = run_graph(graph, {info.name: x.reshape(info.shape)}, dtype=torch.float64, grad=True)
        return torch.cat([v.reshape(-1) for v in out.values()])
    return f


def max_jacobian_norm(graph: Graph, points: int, seed: int = 0) -> float:
    f = function_of(graph)
    n = 1
    for d in graph.inputs[0].shape:
        n *= d
    gen = torch.Generator().manual_seed(seed)
    best = 0.0
    for _ in range(points):
        x = torch.randn(n, generator=gen, dtype=torch.float64) * 2
        jac = torch.autograd.functional.jacobian(f, x)
        best = max(best, float(torch.linalg.matrix_norm(jac, ord=2)))
    return best
