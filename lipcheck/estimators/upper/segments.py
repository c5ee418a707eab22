"""Segment bounds: a certified bound of a span of the graph, used in place of the product.

A segment is a set of nodes that reads one value of the graph (its input) and constants,
and ends at one node (its end): the end's output is then a function of the input alone,
and `value` bounds that function's Lipschitz constant (e.g. a residual block bounded as a
unit, from the block's input to its Add). AutoLip composes it as one node: the end's
running bound is value * L(input), or AutoLip's own running bound there if smaller.
Nothing is written onto the nodes inside: each keeps its own (true) bound.
"""
from __future__ import annotations

from dataclasses import dataclass

from lipcheck.graph import Graph


@dataclass(frozen=True)
class Segment:
    input: str                 # the value the segment reads
    end: str                   # the node whose (first) output it bounds
    nodes: frozenset[str]      # every node of the span, the end included
    value: float
    certified: bool
    method: str = ""
    detail: str = ""


def check_segment(graph: Graph, segment: Segment) -> None:
    """Raise ValueError unless the span reads nothing but its input and constants and
    its end is in it (so the end's output is a function of the input alone)."""
    producers = graph.producers()
    inside = [n for n in graph.nodes if n.name in segment.nodes]
    if segment.end not in segment.nodes or len(inside) != len(segment.nodes):
        raise ValueError(f"segment {segment.input}..{segment.end}: unknown nodes")
    outputs = {v for n in inside for v in n.outputs}
    for node in inside:
        for i in graph.dynamic_inputs(node):
            value = node.inputs[i]
            if value != segment.input and value not in outputs:
                raise ValueError(f"segment {segment.input}..{segment.end}: node {node.name!r} "
                                 f"reads {value!r} from outside the span")
    if segment.input not in {v.name for v in graph.inputs} and segment.input not in producers:
        raise ValueError(f"segment {segment.input}..{segment.end}: no value {segment.input!r}")
