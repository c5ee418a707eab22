"""AutoLip over the whole DAG: bound every node, compose along the graph.

For each value v, L(v) bounds the Lipschitz constant of v as a function of all
graph inputs together (L2 norm of the concatenated input). Graph inputs have L=1,
constants L=0, a node maps its inputs' constants through its rule's merge. A certified
segment bound (segments.py) replaces the running bound at its end node by value * L(its
input) where that is smaller; the nodes inside it then need not be certified.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lipcheck.estimators.upper.segments import Segment, check_segment
from lipcheck.graph import Graph, Node
from lipcheck.numerics import OVERFLOW, checked_bound, overflow_message, round_up_tiny, safe_rss
from lipcheck.rules import BoundContext, Merge, NodeBound, get_rule
from lipcheck.settings import Settings
from lipcheck.spectral import layer_clock


@dataclass
class NodeResult:
    node: Node
    bound: NodeBound
    running: float  # L of the node's (first) output w.r.t. the graph input


@dataclass
class AutoLipResult:
    value: float
    certified: bool
    nodes: list[NodeResult]
    unbounded: list[NodeResult] = field(default_factory=list)
    seconds: float = 0.0


def combine(bound: NodeBound, incoming: list[float]) -> float:
    if not incoming:
        return 0.0
    if bound.merge == Merge.SUM:
        total = sum(incoming)
    elif bound.merge == Merge.RSS:
        total = safe_rss(incoming)
    else:
        total = max(incoming)
    if total == 0.0:
        return 0.0
    return bound.value * total


def bound_nodes(graph: Graph, settings: Settings,
                progress: Callable[[Node], None] | None = None) -> dict[str, NodeBound]:
    """The per-node bounds of every node that depends on a graph input."""
    ctx = BoundContext(graph, settings)
    layer_clock.warm_up()
    bounds = {}
    for node in graph.nodes:
        if ctx.dynamic(node):
            bounds[node.name] = overflow_checked(bound_node(node, ctx), node)
        if progress is not None:
            progress(node)
    return bounds


def bound_node(node: Node, ctx: BoundContext) -> NodeBound:
    """The node's rule under its --layer-budget clock (spectral.layer_clock): the long
    methods stop when it runs out and keep a cheaper certified bound; the record says so."""
    rule = get_rule(node.op)
    with layer_clock.running(ctx.settings.layer_budget) as clock:
        try:
            bound = rule.bound(node, ctx)
        except layer_clock.LayerBudgetSpent as exc:  # no cheaper bound on this path
            clock.cuts.append(f"{exc.what} (no cheaper certified bound: finished unclocked)")
            bound = None
    if bound is None:
        bound = rule.bound(node, ctx)
    if clock.cuts:
        _mark_cut(bound, clock, node)
    return bound


def _mark_cut(bound: NodeBound, clock: layer_clock.LayerClock, node: Node) -> None:
    stopped = "; ".join(clock.cuts)
    bound.cut_by_budget = {"budget_s": clock.budget, "stopped": stopped, "kept": bound.method}
    bound.detail = (bound.detail + "; " if bound.detail else "") + \
        f"--layer-budget {clock.budget:g} s ran out ({stopped}): kept {bound.method}"
    bound.warnings.append(("layer_budget_cut", f"--layer-budget {clock.budget:g} s ran out in "
                           f"{stopped}; the layer keeps the cheaper certified bound "
                           f"{bound.method} (raise --layer-budget for a tighter one)"))


def overflow_checked(bound: NodeBound, node: Node) -> NodeBound:
    """A NaN or overflowed (infinite, not 'unbounded') node bound becomes +inf with a warning."""
    if bound.method == "unbounded":
        return bound
    bound.value, overflowed = checked_bound(bound.value)
    if overflowed:
        bound.warnings.append((OVERFLOW, overflow_message(f"the bound of node {node.name!r}")))
    return bound


def _propagate(bound: NodeBound, node: Node, incoming: list[float]) -> float:
    """combine(), flagging the node where a product of finite numbers overflows."""
    positive = bound.value > 0 and any(x > 0 for x in incoming)
    running, overflowed = checked_bound(round_up_tiny(combine(bound, incoming), positive))
    if overflowed and bound.finite and all(math.isfinite(x) for x in incoming):
        bound.warnings.append((OVERFLOW, overflow_message(f"the running bound at node "
                                                          f"{node.name!r}")))
    return running


def autolip(graph: Graph, bounds: dict[str, NodeBound],
            segments: list[Segment] | tuple[Segment, ...] = ()) -> AutoLipResult:
    start = time.perf_counter()
    ends = {s.end: s for s in segments if s.certified}
    for segment in ends.values():
        check_segment(graph, segment)
    lips = {v.name: 1.0 for v in graph.inputs}
    results: list[NodeResult] = []
    taken: dict[str, str] = {}   # end node -> the segment input it was bounded through
    for node in graph.nodes:
        if node.name not in bounds:
            continue
        bound = bounds[node.name]
        incoming = [lips[v] for v in node.inputs if v in lips]
        running = _propagate(bound, node, incoming)
        span = ends.get(node.name)
        if span is not None and span.input in lips:
            via, _ = checked_bound(round_up_tiny(span.value * lips[span.input],
                                                 span.value > 0 and lips[span.input] > 0))
            if via < running or not _span_certified(span, bounds):
                running, taken[node.name] = via, span.input
        lips.update({out: running for out in node.outputs})
        results.append(NodeResult(node, bound, running))
    on_path = _on_output_path(graph, {r.node.name for r in results}, taken)
    used = [r for r in results if r.node.name in on_path]
    outs = [lips.get(v, 0.0) for v in graph.outputs]
    value = safe_rss(outs) if len(outs) > 1 else (outs[0] if outs else 0.0)
    certified = all(r.bound.certified for r in used)
    unbounded = [r for r in used if not r.bound.finite]
    return AutoLipResult(value, certified, results, unbounded, time.perf_counter() - start)


def _span_certified(segment: Segment, bounds: dict[str, NodeBound]) -> bool:
    return all(bounds[n].certified and bounds[n].finite for n in segment.nodes if n in bounds)


def _on_output_path(graph: Graph, names: set[str], taken: dict[str, str] | None = None
                    ) -> set[str]:
    """Names of the nodes that some graph output depends on; at the end of a segment that
    was taken (`taken`: end node -> segment input) only the segment's input is followed."""
    producers, taken = graph.producers(), taken or {}
    needed, stack = set(), list(graph.outputs)
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in needed:
            continue
        needed.add(node.name)
        stack.extend([taken[node.name]] if node.name in taken else node.inputs)
    return needed & names
