"""The report: what was computed, as plain records, and its versioned JSON form.

Presentation lives in lipcheck.render; nothing here prints.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from lipcheck.estimators.upper.autolip import NodeResult
from lipcheck.results import GlobalBound, tightest_certified
from lipcheck.version import __version__

SCHEMA_VERSION = "1.0"
NP_HARD_MESSAGE = ("the exact Lipschitz constant is NP-hard to compute (Scaman & Virmaux 2018); "
                   "every number here is an upper bound, a lower bound or an estimate, as labelled")


@dataclass
class Warning:
    code: str
    message: str
    node: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "node": self.node}


@dataclass
class LayerRecord:
    name: str
    op: str
    source_op: str
    input_shape: list[int]
    output_shape: list[int]
    bound: float
    method: str
    certified: bool
    iterations: int | None
    converged: bool | None
    estimate: float | None
    running: float
    seconds: float
    detail: str = ""
    cut_by_budget: dict[str, Any] | None = None

    @classmethod
    def from_result(cls, r: NodeResult, dynamic_positions: list[int]) -> LayerRecord:
        node, b = r.node, r.bound
        first = dynamic_positions[0] if dynamic_positions else 0
        in_shape = list(node.input_shapes[first]) if node.input_shapes else []
        out_shape = list(node.output_shapes[0]) if node.output_shapes else []
        return cls(node.name, node.op.value, node.source_op, in_shape, out_shape, b.value,
                   b.method, b.certified, b.iterations, b.converged, b.estimate, r.running,
                   b.seconds, b.detail, b.cut_by_budget)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "op": self.op, "source_op": self.source_op,
            "input_shape": self.input_shape, "output_shape": self.output_shape,
            "bound": finite_or_none(self.bound), "method": self.method,
            "certified": self.certified, "iterations": self.iterations,
            "converged": self.converged, "estimate": finite_or_none(self.estimate),
            "gap": layer_gap(self.bound, self.estimate),
            "running_bound": finite_or_none(self.running), "seconds": round(self.seconds, 6),
            "detail": self.detail, "cut_by_budget": self.cut_by_budget,
        }


@dataclass
class Report:
    model: dict[str, Any]
    settings: dict[str, Any]
    layers: list[LayerRecord]
    bounds: list[GlobalBound]
    lower_bound: GlobalBound | None = None
    warnings: list[Warning] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    local: dict[str, Any] | None = None  # the constant on an input set (lipcheck.local_estimate)

    @property
    def upper_bound(self) -> GlobalBound | None:
        """The tightest certified upper bound, or None when there is none."""
        return tightest_certified(self.bounds)

    @property
    def finite(self) -> bool:
        ub = self.upper_bound
        return ub is not None and math.isfinite(ub.value)

    @property
    def gap(self) -> float | None:
        ub, lb = self.upper_bound, self.lower_bound
        if ub is None or lb is None or lb.value <= 0 or not math.isfinite(ub.value):
            return None
        return ub.value / lb.value

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "lipcheck_version": __version__,
            "model": self.model,
            "settings": self.settings,
            "layers": [layer.to_dict() for layer in self.layers],
            "bounds": [bound_to_dict(b) for b in sorted(self.bounds, key=_sort_key)],
            "upper_bound": bound_to_dict(self.upper_bound) if self.upper_bound else None,
            "lower_bound": bound_to_dict(self.lower_bound) if self.lower_bound else None,
            "gap": self.gap,
            "warnings": [w.to_dict() for w in self.warnings],
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
            **({"local": self.local} if self.local is not None else {}),
        }

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def _sort_key(b: GlobalBound) -> tuple[int, float]:
    order = {"upper": 0, "estimate": 1, "lower": 2}
    return (order.get(b.kind, 3), b.value if math.isfinite(b.value) else math.inf)


def finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def layer_gap(bound: float, estimate: float | None) -> float | None:
    if estimate is None or estimate <= 0 or not math.isfinite(bound):
        return None
    return bound / estimate


def bound_to_dict(b: GlobalBound) -> dict[str, Any]:
    out = {"method": b.method, "value": finite_or_none(b.value), "finite": math.isfinite(b.value),
           "certified": b.certified, "kind": b.kind, "seconds": round(b.seconds, 6),
           "detail": b.detail}
    out.update({k: v for k, v in b.extra.items() if k not in out})
    return out


def load_schema() -> dict[str, Any]:
    text = resources.files("lipcheck").joinpath("schema/report.schema.json").read_text()
    return json.loads(text)
