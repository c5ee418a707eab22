"""The verdict: every check the thresholds ask for, and the exit code they give."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lipcheck.errors import EXIT_NO_FINITE_BOUND, EXIT_OK, EXIT_THRESHOLD
from lipcheck.gate.checks import (
    Check,
    certified_check,
    finite_check,
    fmt,
    global_check,
    headline,
    layer_checks,
)
from lipcheck.gate.thresholds import Thresholds
from lipcheck.report import Report

if TYPE_CHECKING:  # imported at run time by their callers (robustness needs torch)
    from lipcheck.gate.comparison import Comparison
    from lipcheck.gate.robustness import Robustness


def accuracy_check(robustness: Robustness, limit: float) -> Check:
    value = robustness.certified_accuracy
    passed = value is not None and value >= limit
    relation = ">=" if passed else "<"
    note = "" if robustness.certified else " (radii are estimates, not certified)"
    return Check(f"min-certified-accuracy[eps={fmt(robustness.eps)}]", passed, value, limit,
                 f"value {fmt(value)} {relation} limit {fmt(limit)}{note}", "robustness",
                 robustness.certified)


@dataclass
class Verdict:
    """What `check` decided, with everything it read. The CLI prints this object."""

    report: Report
    thresholds: Thresholds
    checks: list[Check] = field(default_factory=list)
    robustness: Robustness | None = None
    comparison: Comparison | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def finite(self) -> bool:
        return math.isfinite(headline(self.report)[0])

    @property
    def exit_code(self) -> int:
        """3 when no finite bound exists (it wins), 1 when a check failed, else 0."""
        if not self.finite:
            return EXIT_NO_FINITE_BOUND
        return EXIT_THRESHOLD if self.failed else EXIT_OK

    @property
    def passed(self) -> bool:
        return self.exit_code == EXIT_OK

    @property
    def status(self) -> str:
        return {EXIT_OK: "pass", EXIT_THRESHOLD: "fail"}.get(self.exit_code, "no finite bound")

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "exit_code": self.exit_code,
            "checks": [c.to_dict() for c in self.checks],
            "robustness": self.robustness.to_dict() if self.robustness else None,
            "comparison": self.comparison.to_dict() if self.comparison else None,
            "seconds": round(self.seconds, 6),
        }

    def report_dict(self) -> dict[str, Any]:
        """The estimate report with the verdict under "check" (what --json writes)."""
        data = self.report.to_dict()
        data["check"] = self.to_dict()
        return data


def evaluate(report: Report, thresholds: Thresholds, robustness: Robustness | None = None,
             comparison: Comparison | None = None) -> list[Check]:
    """Every check the thresholds ask for, in a fixed order."""
    checks = [finite_check(report)]
    if thresholds.require_certified:
        checks.append(certified_check(report))
    if thresholds.max_lipschitz is not None:
        checks.append(global_check(report, thresholds.max_lipschitz))
    if thresholds.max_layer is not None:
        checks += layer_checks(report, thresholds.max_layer)
    if comparison is not None and thresholds.max_increase is not None:
        checks += comparison.checks(thresholds.max_increase)
    if robustness is not None and thresholds.min_certified_accuracy is not None:
        checks.append(accuracy_check(robustness, thresholds.min_certified_accuracy))
    return checks
