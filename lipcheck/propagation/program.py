"""A feed-forward graph lowered to dense steps over flat vectors (float64).

Supported: one graph input and output, nodes in topological order (the last one writes the
output), each reading one dynamic value (any earlier one), or Add of two (a residual), and
each single-input node one of
- affine in its dynamic input (the rule says so, or a shape-only op): `Affine(W, b)`, the
  dense matrix found by forward-mode differentiation at 0 (exact: the map is affine);
  consecutive affine nodes are multiplied into one step;
- ReLU or LeakyReLU with 0 <= alpha <= 1: `Act(alpha)`;
- MaxPool / GlobalMaxPool: `MaxPool(windows)`, the input entries each output reads
  (found by running the node on one-hot inputs, so padding and dilation are the rule's);
  an activation right before a max pool moves after it (the same function).
With `smooth=True` also the steps of `smooth` (products of two dynamic inputs, softmax,
LayerNorm / RMSNorm, elementwise functions and binary ops), which only the smooth_* modules
handle.
Anything else raises `UnsupportedLocal` naming the node.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from lipcheck.errors import UserError
from lipcheck.graph import Graph, Node, OpKind
from lipcheck.interpreter import run_node
from lipcheck.propagation.smooth import (
    SMOOTH,
    Binary,
    Norm,
    Pointwise,
    Product,
    Softmax,
    lower,
)
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
    src: tuple[int, ...] = ()   # the values read (value 0: the input; k: step k-1's output)


@dataclass
class Act:
    alpha: float          # slope left of 0: ReLU 0, LeakyReLU alpha
    nodes: list[str] = field(default_factory=list)
    src: tuple[int, ...] = ()


@dataclass
class MaxPool:
    windows: torch.Tensor  # (n_out, k) input indices; n_in marks an unused slot
    n_in: int
    nodes: list[str] = field(default_factory=list)
    src: tuple[int, ...] = ()


@dataclass
class Add:
    """The sum of two values of one shape (a residual connection)."""

    nodes: list[str] = field(default_factory=list)
    src: tuple[int, ...] = ()


Step = Affine | Act | MaxPool | Add | Product | Softmax | Norm | Binary | Pointwise


def sources(steps: list[Step], i: int) -> tuple[int, ...]:
    """The values step i reads: its `src`, else the previous step's output (a chain)."""
    return steps[i].src or (i,)


def apply(step: Step, x: torch.Tensor, *more: torch.Tensor) -> torch.Tensor:
    if isinstance(step, SMOOTH):
        return step.run(x, *more)
    if isinstance(step, Affine):
        return x @ step.weight.T + step.bias
    if isinstance(step, Act):
        return torch.where(x >= 0, x, step.alpha * x)
    if isinstance(step, Add):
        return x + more[0]
    padded = torch.cat([x, torch.full_like(x[:, :1], -math.inf)], dim=1)
    return padded[:, step.windows].amax(dim=2)


@dataclass
class Program:
    steps: list[Step]
    n_in: int
    n_out: int

    @property
    def smooth(self) -> bool:
        """Whether a step is one of `smooth`'s (only the smooth_* modules handle those)."""
        return any(isinstance(s, SMOOTH) for s in self.steps)

    @property
    def is_chain(self) -> bool:
        return all(sources(self.steps, i) == (i,) for i in range(len(self.steps)))

    def values(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every value on flat inputs (B, n_in): the input, then each step's output."""
        values = [x]
        for i, step in enumerate(self.steps):
            values.append(apply(step, *(values[v] for v in sources(self.steps, i))))
        return values

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The network on flat inputs (B, n_in), float64 (checks the lowering)."""
        return self.values(x)[-1]


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


def _step(graph: Graph, node: Node, smooth: bool = False) -> Step:
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
        found = lower(graph, node) if smooth else None
        if found is not None:
            return found
    more = ", MatMul, Softmax, LayerNorm, RMSNorm, Exp, Tanh, ..." if smooth else ""
    raise UnsupportedLocal(f"local bounds: node {node.name!r} ({node.op.value}) is not "
                           f"supported yet (affine ops, ReLU, LeakyReLU, MaxPool{more} are)")


Entry = tuple[Step, list[str], str]     # a step, the values it reads, the value it writes


def _readers(entries: list[Entry], value: str) -> int:
    return sum(src.count(value) for _, src, _ in entries)


def _merge(entries: list[Entry], output: str) -> list[Entry]:
    """Consecutive affine steps (the first's output read only by the second) become one."""
    merged: list[Entry] = []
    for step, src, out in entries:
        last = merged[-1] if merged else None
        if (isinstance(step, Affine) and last is not None and isinstance(last[0], Affine)
                and src == [last[2]] and _readers(entries, last[2]) == 1 and last[2] != output):
            first = last[0]
            merged[-1] = (Affine(step.weight @ first.weight, step.weight @ first.bias + step.bias,
                                 first.nodes + step.nodes), last[1], out)
        else:
            merged.append((step, src, out))
    return merged


def _pool_first(entries: list[Entry], output: str) -> list[Entry]:
    """Act then MaxPool becomes MaxPool then Act: max_i s(z_i) = s(max_i z_i) for a
    nondecreasing s, and the ranges are tighter with fewer units to relax."""
    out = list(entries)
    for i in range(len(out) - 1):
        (act, a_src, a_out), (pool, p_src, p_out) = out[i], out[i + 1]
        if (isinstance(act, Act) and isinstance(pool, MaxPool) and p_src == [a_out]
                and _readers(out, a_out) == 1 and a_out != output):
            out[i], out[i + 1] = (pool, a_src, a_out), (act, [a_out], p_out)
    return out


def _entry(graph: Graph, node: Node, known: set[str], smooth: bool = False) -> Entry:
    dynamic = [node.inputs[i] for i in graph.dynamic_inputs(node)]
    if any(v not in known for v in dynamic) or len(node.outputs) != 1:
        raise UnsupportedLocal(f"local bounds: node {node.name!r} ({node.op.value}) reads a "
                               "value they cannot follow")
    if len(dynamic) == 1:
        return _step(graph, node, smooth), dynamic, node.outputs[0]
    product = lower(graph, node) if smooth else None
    if product is not None:
        return product, dynamic, node.outputs[0]
    shapes = {tuple(s) for s in node.input_shapes}
    if node.op == OpKind.ADD and len(dynamic) == 2 and len(shapes) == 1:
        return Add([node.name]), dynamic, node.outputs[0]
    raise UnsupportedLocal(f"local bounds: node {node.name!r} ({node.op.value}) combines "
                           f"{len(dynamic)} dynamic inputs (only Add of two of one shape is "
                           "supported)")


def _numbered(entries: list[Entry], first: str) -> list[Step]:
    index = {first: 0}
    steps = []
    for k, (step, src, out) in enumerate(entries):
        step.src = tuple(index[v] for v in src)
        index[out] = k + 1
        steps.append(step)
    return steps


def build_program(graph: Graph, smooth: bool = False) -> Program:
    """The graph as dense steps, or UnsupportedLocal naming what is in the way; `smooth`
    admits the steps of `smooth` too."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UnsupportedLocal("local bounds need one graph input and one graph output")
    first, output = graph.inputs[0].name, graph.outputs[0]
    known, entries = {first}, []
    for node in graph.nodes:
        entries.append(_entry(graph, node, known, smooth))
        known.add(entries[-1][2])
    if not entries or entries[-1][2] != output:
        raise UnsupportedLocal("local bounds need the graph output to be the last node's")
    steps = _numbered(_pool_first(_merge(entries, output), output), first)
    n_in = math.prod(graph.inputs[0].shape)
    probe = Program(steps, n_in, 0).run(torch.zeros(1, n_in, dtype=torch.float64))
    return Program(steps, n_in, int(probe.shape[1]))
