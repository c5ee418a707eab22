"""What the lower-bound search can afford: predicted and measured seconds per step.

A time cap is a promise (issue 12): the search never starts a step that its cost
estimate says cannot finish before the deadline. Before anything has run, the cost of
one float64 forward pass is predicted from the graph's multiply-adds and this machine's
float64 matmul rate (measured once, under the current load); afterwards every step is
timed and its last duration is the estimate for the next one of its kind.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from lipcheck.calibrate import matmul_seconds
from lipcheck.graph import Graph, OpKind

SLOWDOWN = 10.0         # float64 convolutions (ResNet-18: 2.5 G multiply-adds/s against a
                        # 24 G/s matmul here); MLPs run faster: an over-prediction only gates
                        # the first, measured, forward pass
CALIBRATION_N = 192     # a 192^3 float64 matmul: ~7 M multiply-adds, milliseconds
_rate: list[float] = []  # multiply-adds per second, measured once per process
WEIGHTED = {OpKind.CONV, OpKind.CONV_TRANSPOSE, OpKind.GEMM, OpKind.MATMUL}


def multiply_adds(graph: Graph) -> int:
    """Multiply-adds of one forward pass (weighted ops exactly enough; others: one per
    output value)."""
    total = 0
    for node in graph.nodes:
        out = sum(math.prod(s) for s in node.output_shapes)
        weight = graph.constant(node, 1) if node.op in WEIGHTED and len(node.inputs) > 1 else None
        if weight is None or weight.dim() < 2:
            total += out
        elif node.op == OpKind.CONV:
            total += out * weight.numel() // max(1, weight.shape[0])
        elif node.op == OpKind.CONV_TRANSPOSE:
            total += out * weight.numel() // max(1, weight.shape[1])
        else:
            total += out * weight.numel() // max(1, node.output_shapes[0][-1] if node.output_shapes
                                                 and node.output_shapes[0] else 1)
    return total


def machine_rate() -> float:
    """float64 multiply-adds per second of one matmul on this thread, now."""
    if not _rate:
        _rate.append(CALIBRATION_N ** 3 / matmul_seconds(CALIBRATION_N, 3))
    return _rate[0]


def predicted_forward_s(graph: Graph) -> float:
    return SLOWDOWN * multiply_adds(graph) / machine_rate() + 1e-5 * len(graph.nodes)


# forward passes (of one row) a step of each kind costs, until one has been timed
# ("secant": the pairs and their certification after the directions are found)
FORWARDS = {"point": 14.0, "step": 8.0, "power": 4.0, "pair_step": 6.0, "secant": 6.0}


@dataclass
class Clock:
    """A deadline, the predicted cost of one forward pass, and the last measured cost of
    each kind of step per row; `cut` records that a step was not started for lack of time."""

    deadline: float
    forward_s: float = 0.0
    last: dict[str, float] = field(default_factory=dict)
    cut: bool = False

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def estimate(self, kind: str, rows: int = 1) -> float:
        per_row = self.last.get(kind, FORWARDS.get(kind, 1.0) * self.forward_s)
        return rows * per_row

    def fits(self, seconds: float) -> bool:
        """Whether work predicted to take `seconds` ends before the deadline; if not, the
        clock records the cut."""
        ok = seconds <= self.left()
        self.cut = self.cut or not ok
        return ok

    def record(self, kind: str, start: float, rows: int = 1) -> None:
        """The step of `kind` that began at `start` (perf_counter) on `rows` rows is done."""
        self.last[kind] = (time.perf_counter() - start) / max(rows, 1)
