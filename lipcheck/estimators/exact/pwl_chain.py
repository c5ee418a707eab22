"""A chain network read as alternating affine maps and ReLU-family activations.

`pwl_chain(graph)` turns a graph whose nodes form one chain (each node reads the
previous node's output and constants only) into `[affine, slopes, affine, ...,
affine]`: each affine block is the dense float64 matrix and offset of the affine
nodes between two activations; each activation is its negative-side slope per unit
(0 for Relu, alpha for LeakyRelu, the broadcast slope for PRelu). Used by the exact
enumeration and, for tiny nets, by the lower-bound search.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from lipcheck.errors import UserError
from lipcheck.graph import Graph, Node, OpKind
from lipcheck.interpreter import run_node
from lipcheck.rules import get_rule

ACTIVATIONS = (OpKind.RELU, OpKind.LEAKY_RELU, OpKind.PRELU)
AFFINE_EXTRA = (OpKind.ADD, OpKind.SUB)  # affine when the other operand is constant


@dataclass
class Affine:
    weight: np.ndarray  # (n_out, n_in), float64
    bias: np.ndarray    # (n_out,)


@dataclass
class Chain:
    affines: list[Affine]        # len = len(slopes) + 1
    slopes: list[np.ndarray]     # negative-side slope of each unit of each hidden layer

    @property
    def n_in(self) -> int:
        return self.affines[0].weight.shape[1]

    @property
    def widths(self) -> list[int]:
        return [len(s) for s in self.slopes]


def _negative_slope(node: Node, graph: Graph, shape: tuple[int, ...]) -> np.ndarray:
    size = math.prod(shape)
    if node.op == OpKind.RELU:
        return np.zeros(size)
    if node.op == OpKind.LEAKY_RELU:
        return np.full(size, float(node.attrs.get("alpha", 0.01)))
    slope = graph.constant(node, 1)
    if slope is None:
        raise UserError(f"exact: node {node.name!r} (PRelu) has an input-dependent slope")
    return slope.double().expand(shape).reshape(-1).numpy().copy()


def _check_chain_node(graph: Graph, node: Node, current: str) -> None:
    dynamic = [node.inputs[i] for i in graph.dynamic_inputs(node)]
    if dynamic != [current] or len(node.outputs) != 1:
        raise UserError(f"exact: node {node.name!r} ({node.op.value}) is not part of a single "
                        "chain (branches, several inputs or outputs)")
    if node.op in ACTIVATIONS:
        return
    if node.op not in AFFINE_EXTRA and not get_rule(node.op).affine:
        raise UserError(f"exact: node {node.name!r} ({node.op.value}) is neither affine nor a "
                        "ReLU-family activation")


def _split(graph: Graph) -> list[list[Node] | Node]:
    """Groups of consecutive affine nodes, separated by activation nodes."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UserError("exact: the network must have one input and one output")
    current = graph.inputs[0].name
    items: list[list[Node] | Node] = []
    block: list[Node] = []
    for node in graph.nodes:
        _check_chain_node(graph, node, current)
        current = node.outputs[0]
        if node.op in ACTIVATIONS:
            items += [block, node]
            block = []
        else:
            block.append(node)
    if current != graph.outputs[0]:
        raise UserError(f"exact: graph output {graph.outputs[0]!r} is not the end of the chain")
    return items + [block]


class OutOfTime(RuntimeError):
    """The Jacobian rows of a block were still being formed at the deadline."""


def _affine_of(graph: Graph, block: list[Node], in_shape: tuple[int, ...],
               deadline: float = math.inf) -> tuple[Affine, tuple]:
    consts = {k: v.double() if v.is_floating_point() else v for k, v in graph.constants.items()}

    def run(x: torch.Tensor) -> torch.Tensor:
        env = dict(consts)
        value = x.reshape(in_shape)
        for node in block:
            env[node.inputs[graph.dynamic_inputs(node)[0]]] = value
            value = run_node(node, [env[v] if v else None for v in node.inputs])[0]
        return value

    zero = torch.zeros(math.prod(in_shape), dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        out = run(zero)
        jac = _rows(out.reshape(-1), zero, deadline)
    return Affine(jac.numpy().copy(), out.reshape(-1).detach().numpy().copy()), tuple(out.shape)


def _rows(y: torch.Tensor, x: torch.Tensor, deadline: float = math.inf) -> torch.Tensor:
    """dy/dx row by row, each row the gradient of a scalar (autograd.grad with explicit
    grad_outputs, as in autograd.functional.jacobian, imports sympy: seconds); OutOfTime
    once time.perf_counter() passes `deadline` (read before each row)."""
    rows = []
    for i in range(y.numel()):
        if time.perf_counter() > deadline:
            raise OutOfTime(f"{i} of {y.numel()} Jacobian rows formed by the deadline")
        (g,) = torch.autograd.grad(y[i], x, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(x) if g is None else g)
    return torch.stack(rows) if rows else torch.zeros(0, x.numel(), dtype=x.dtype)


def pwl_chain(graph: Graph, deadline: float = math.inf) -> Chain:
    """The chain form of a piecewise-linear network; UserError if it is not one, OutOfTime
    if its blocks' Jacobians are not formed by `deadline` (time.perf_counter())."""
    shape = tuple(graph.inputs[0].shape)
    affines, slopes = [], []
    for item in _split(graph):
        if isinstance(item, list):
            affine, shape = _affine_of(graph, item, shape, deadline)
            affines.append(affine)
        else:
            slopes.append(_negative_slope(item, graph, shape))
    return Chain(affines, slopes)


def mlp_graph(weights: list[np.ndarray], biases: list[np.ndarray], activation: str = "relu",
              alpha: float = 0.01) -> Graph:
    """A Gemm/activation chain graph (input shape (1, n_in)) from float matrices, for
    tests and benchmarks. activation: "relu", "leaky_relu" or "tanh"."""
    from lipcheck.graph import Node, ValueInfo
    from lipcheck.interpreter import infer_shapes

    kinds = {"relu": OpKind.RELU, "leaky_relu": OpKind.LEAKY_RELU, "tanh": OpKind.TANH}
    constants, nodes, current = {}, [], "x"
    for i, (w, b) in enumerate(zip(weights, biases, strict=False)):

        constants[f"W{i}"] = torch.tensor(np.asarray(w), dtype=torch.float32)
        constants[f"b{i}"] = torch.tensor(np.asarray(b), dtype=torch.float32)
        nodes.append(Node(f"gemm{i}", OpKind.GEMM, [current, f"W{i}", f"b{i}"], [f"z{i}"],
                          {"transB": 1}, "Gemm"))
        current = f"z{i}"
        if i + 1 < len(weights):
            attrs = {"alpha": alpha} if activation == "leaky_relu" else {}
            nodes.append(Node(f"act{i}", kinds[activation], [current], [f"h{i}"], attrs))
            current = f"h{i}"
    graph = Graph([ValueInfo("x", (1, np.asarray(weights[0]).shape[1]))], [current], nodes,
                  constants)
    infer_shapes(graph)
    return graph


def hidden_units(graph: Graph) -> int:
    """The number of ReLU-family activation outputs: what decides whether a chain is small
    enough for the exact enumeration or the activation-pattern phase."""
    return sum(math.prod(node.output_shapes[0]) if node.output_shapes else 0
               for node in graph.nodes if node.op in ACTIVATIONS)
