"""Per-node bound records shared by the rules and the spectral methods.

Kept outside the `rules` package so that importing them never triggers the rule
registrations (which import the spectral methods, which need these records).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import torch

from lipcheck.graph import Graph, Node
from lipcheck.settings import Settings
from lipcheck.spectral.scratch import Scratch


class Merge(str, Enum):
    """How a node combines the Lipschitz constants L_i of its dynamic inputs."""

    SINGLE = "single"  # one dynamic input: L_out = c * L_in
    SUM = "sum"        # L_out = c * sum(L_i)          (Add, Sub, Sum)
    RSS = "rss"        # L_out = c * sqrt(sum(L_i^2))  (Concat, elementwise Max/Min)


class Method(str, Enum):
    ANALYTIC = "analytic"
    EXACT_SVD = "exact-svd"
    POWER = "power-iteration"
    FFT = "fft"
    GRAM = "gram"
    UNBOUNDED = "unbounded"
    CONSTANT = "constant"


@dataclass
class NodeBound:
    value: float
    method: str
    certified: bool
    merge: Merge = Merge.SINGLE
    iterations: int | None = None
    converged: bool | None = None
    estimate: float | None = None  # a lower estimate (power iteration) beside a certified value
    detail: str = ""
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (code, message)
    seconds: float = 0.0
    cut_by_budget: dict | None = None  # --layer-budget ran out: what stopped, what was kept

    @property
    def finite(self) -> bool:
        return math.isfinite(self.value)


@dataclass
class BoundContext:
    graph: Graph
    settings: Settings
    scratch: Scratch = field(default_factory=Scratch)  # work buffers shared by the nodes of one run

    def const(self, node: Node, position: int) -> torch.Tensor | None:
        return self.graph.constant(node, position)

    def dynamic(self, node: Node) -> list[int]:
        return self.graph.dynamic_inputs(node)



def analytic(value: float, merge: Merge = Merge.SINGLE, detail: str = "") -> NodeBound:
    return NodeBound(value=float(value), method=Method.ANALYTIC.value, certified=True,
                     merge=merge, detail=detail)


def unbounded(reason: str) -> NodeBound:
    return NodeBound(value=math.inf, method=Method.UNBOUNDED.value, certified=True,
                     detail=reason, warnings=[("unbounded_op", reason)])
