"""One gate check (a value against a limit) and the checks that read a Report alone.

Every check reads the best number available: the tightest certified upper bound, or,
where none exists, the AutoLip estimate (the check is then labelled an estimate and
`require-certified` is the check that fails on it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lipcheck.report import Report


@dataclass
class Check:
    """One gate: a value against a limit."""

    name: str
    passed: bool
    value: float | None
    limit: float | None
    message: str
    group: str
    certified: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "value": _finite(self.value),
                "limit": _finite(self.limit), "message": self.message, "group": self.group,
                "certified": self.certified}


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def fmt(x: float | None) -> str:
    if x is None:
        return "none"
    return "inf" if math.isinf(x) else f"{x:.6g}"


def upper_check(name: str, group: str, value: float, limit: float, certified: bool) -> Check:
    """Passes when value <= limit (an infinite or NaN value fails)."""
    passed = math.isfinite(value) and value <= limit
    relation = "<=" if passed else ">"
    note = "" if certified else " (estimate, not certified)"
    return Check(name, passed, value, limit, f"value {fmt(value)} {relation} limit {fmt(limit)}"
                 f"{note}", group, certified)


def headline(report: Report) -> tuple[float, bool]:
    """The global number the gate reads: (value, certified)."""
    ub = report.upper_bound
    if ub is not None:
        return ub.value, True
    autolip = [b for b in report.bounds if b.method == "autolip"]
    return (autolip[0].value if autolip else math.inf), False


def global_check(report: Report, limit: float) -> Check:
    value, certified = headline(report)
    return upper_check("max-lipschitz", "global", value, limit, certified)


def layer_checks(report: Report, limit: float) -> list[Check]:
    return [upper_check(f"max-layer[{layer.name}]", "layers", layer.bound, limit,
                        layer.certified) for layer in report.layers]


def finite_check(report: Report) -> Check:
    """Always present: some finite bound exists (exit code 3 otherwise)."""
    value, certified = headline(report)
    if math.isfinite(value):
        kind = "certified upper bound" if certified else "estimate, not certified"
        return Check("finite-bound", True, value, None, f"{fmt(value)} ({kind})", "global",
                     certified)
    unbounded = [w.node for w in report.warnings if w.code == "unbounded_op" and w.node]
    where = f": not globally Lipschitz at {', '.join(unbounded[:5])}" if unbounded else ""
    return Check("finite-bound", False, value, None, f"no finite bound{where}", "global", False)


def certified_check(report: Report) -> Check:
    ub = report.upper_bound
    if ub is not None and math.isfinite(ub.value):
        return Check("require-certified", True, ub.value, None,
                     f"certified upper bound {fmt(ub.value)} ({ub.method})", "global")
    return Check("require-certified", False, None, None,
                 "no finite certified upper bound could be computed", "global", False)

