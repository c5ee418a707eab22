"""A feed-forward graph lowered to dense steps over flat vectors (float64).

Supported: one graph input and output, every node with one dynamic input (the previous
node's output), and each node one of
- affine in its dynamic input (the rule says so, or a shape-only op): `Affine(W, b)`, the
  dense matrix found by forward-mode differentiation at 0 (exact: the map is affine);
  consecutive affine nodes are multiplied into one step;
- ReLU or LeakyReLU with 0 <= alpha <= 1: `Act(alpha)`;
- MaxPool / GlobalMaxPool: `MaxPool(windows)`, the input entries each output reads
  (found by running the node on one-hot inputs, so padding and dilation are the rule's);
  an activation right before a max pool moves after it (the same function).
Anything else raises `UnsupportedLocal` naming the node.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from lipcheck.errors import UserError
from lipcheck.graph import Graph, Node, OpKind
from lipcheck.interpreter import run_node
from lipcheck.rules import get_rule

SHAPE_ONLY = {OpKind.FLATTEN, OpKind.RESHAPE, OpKind.IDENTITY, OpKind.DROPOUT,
              OpKind.SQUEEZE, OpKind.UNSQUEEZE, OpKind.TRANSPOSE}
POOLS = {OpKind.MAX_POOL, OpKind.GLOBAL_MAX_POOL}
MAX_ENTRIES = 1 << 22   # a dense step above this (32 MiB in float64) is refused


class UnsupportedLocal(UserError):
    """The graph has a shape or an op the local bounds do not handle (yet)."""


@dataclass
class Affine:
    weight: torch.Tensor  # (n_out, n_in)
    bias: torch.Tensor    # (n_out,)
    nodes: list[str] = field(default_factory=list)


@dataclass
class Act:
    alpha: float          # slope left of 0: ReLU 0, LeakyReLU alpha
    nodes: list[str] = field(default_factory=list)


@dataclass
class MaxPool:
    windows: torch.Tensor  # (n_out, k) input indices; n_in marks an unused slot
    n_in: int
    nodes: list[str] = field(default_factory=list)


Step = Affine | Act | MaxPool


@dataclass
class Program:
    steps: list[Step]
    n_in: int
    n_out: int

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The network on flat inputs (B, n_in), float64 (checks the lowering)."""
        for step in self.steps:
            if isinstance(step, Affine):
                x = x @ step.weight.T + step.bias
            elif isinstance(step, Act):
                x = torch.where(x >= 0, x, step.alpha * x)
            else:
                padded = torch.cat([x, torch.full_like(x[:, :1], -math.inf)], dim=1)
                x = padded[:, step.windows].amax(dim=2)
        return x


def _inputs(graph: Graph, node: Node, dynamic: torch.Tensor) -> list[torch.Tensor | None]:
    position = graph.dynamic_inputs(node)[0]
    values: list[torch.Tensor | None] = []
    for i, name in enumerate(node.inputs):
        if i == position:
            values.append(dynamic)
        elif not name:
            values.append(None)
        else:
            t = graph.constants[name]
            values.append(t.double() if t.is_floating_point() else t)
    return values


def _too_large(node: Node, n_in: int, n_out: int) -> None:
    if n_in * n_out > MAX_ENTRIES:
        raise UnsupportedLocal(f"local bounds: node {node.name!r} ({node.op.value}) is too large "
                               f"for dense steps ({n_out} x {n_in} > {MAX_ENTRIES} entries)")


def _affine(graph: Graph, node: Node) -> Affine:
    shape = tuple(node.input_shapes[graph.dynamic_inputs(node)[0]])
    n = math.prod(shape)
    _too_large(node, n, math.prod(node.output_shapes[0]) if node.output_shapes else n)

    def fn(v: torch.Tensor) -> torch.Tensor:
        return run_node(node, _inputs(graph, node, v.reshape(shape)))[0].reshape(-1)
    zero = torch.zeros(n, dtype=torch.float64)
    bias = fn(zero)
    try:
        weight = torch.func.jacfwd(fn)(zero)
    except Exception:  # an op forward mode cannot trace: reverse mode, row by row
        weight = torch.autograd.functional.jacobian(fn, zero)
    return Affine(weight.reshape(bias.numel(), n), bias, [node.name])


def _pool(graph: Graph, node: Node) -> MaxPool:
    shape = tuple(node.input_shapes[0])
    if shape[0] != 1:
        raise UnsupportedLocal(f"local bounds: node {node.name!r} ({node.op.value}) needs batch 1")
    n = math.prod(shape)
    _too_large(node, n, n)
    onehot = 2 * torch.eye(n, dtype=torch.float64) - 1
    out = run_node(node, _inputs(graph, node, onehot.reshape(n, *shape[1:])))[0]
    member = out.reshape(n, -1).T > 0          # (n_out, n_in)
    k = int(member.sum(dim=1).max())
    order = torch.argsort((~member).to(torch.int8), dim=1, stable=True)[:, :k]
    windows = torch.where(torch.gather(member, 1, order), order, torch.full_like(order, n))
    return MaxPool(windows, n, [node.name])


def _step(graph: Graph, node: Node) -> Step:
    if node.op in (OpKind.RELU, OpKind.LEAKY_RELU):
        alpha = float(node.attrs.get("alpha", 0.01)) if node.op == OpKind.LEAKY_RELU else 0.0
        if 0.0 <= alpha <= 1.0:
            return Act(alpha, [node.name])
    elif node.op in POOLS:
        return _pool(graph, node)
    else:
        try:
            affine = get_rule(node.op).affine
        except NotImplementedError:
            affine = False
        if affine or node.op in SHAPE_ONLY:
            return _affine(graph, node)
    raise UnsupportedLocal(f"local bounds: node {node.name!r} ({node.op.value}) is not "
                           "supported yet (affine ops, ReLU, LeakyReLU, MaxPool are)")


def _merge(steps: list[Step]) -> list[Step]:
    merged: list[Step] = []
    for step in steps:
        last = merged[-1] if merged else None
        if isinstance(step, Affine) and isinstance(last, Affine):
            merged[-1] = Affine(step.weight @ last.weight, step.weight @ last.bias + step.bias,
                                last.nodes + step.nodes)
        else:
            merged.append(step)
    return merged


def _pool_first(steps: list[Step]) -> list[Step]:
    """Act then MaxPool becomes MaxPool then Act: max_i s(z_i) = s(max_i z_i) for a
    nondecreasing s, and the ranges are tighter with fewer units to relax."""
    out = list(steps)
    for i in range(len(out) - 1):
        if isinstance(out[i], Act) and isinstance(out[i + 1], MaxPool):
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def build_program(graph: Graph) -> Program:
    """The graph as dense steps, or UnsupportedLocal naming what is in the way."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UnsupportedLocal("local bounds need one graph input and one graph output")
    current = graph.inputs[0].name
    steps: list[Step] = []
    for node in graph.nodes:
        dynamic = graph.dynamic_inputs(node)
        if len(dynamic) != 1 or node.inputs[dynamic[0]] != current or len(node.outputs) != 1:
            raise UnsupportedLocal(f"local bounds need a chain of single-input nodes; node "
                                   f"{node.name!r} ({node.op.value}) breaks it")
        steps.append(_step(graph, node))
        current = node.outputs[0]
    if current != graph.outputs[0]:
        raise UnsupportedLocal("local bounds need the graph output at the end of the chain")
    n_in = math.prod(graph.inputs[0].shape)
    steps = _pool_first(_merge(steps))
    n_out = steps[-1].weight.shape[0] if isinstance(steps[-1], Affine) else None
    if n_out is None:
        n_out = int(Program(steps, n_in, 0).run(torch.zeros(1, n_in, dtype=torch.float64)).shape[1])
    return Program(steps, n_in, n_out)
