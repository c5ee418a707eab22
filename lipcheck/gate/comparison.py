"""The baseline comparison: global and per-layer bounds of two reports, and their checks."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipcheck.errors import UserError
from lipcheck.gate.checks import Check, fmt

TOP_CHANGES = 10


def load_report(path: Path) -> dict[str, Any]:
    """A JSON report written by `estimate --json` or `check --json`."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"cannot read report {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"report {path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not {"layers", "bounds"} <= set(data):
        raise UserError(f"report {path} is not a lipcheck report (no 'layers' and 'bounds')")
    from lipcheck.report_validate import validate_report
    validate_report(data, str(path))
    return data


def report_headline(data: dict[str, Any]) -> tuple[float, bool]:
    """(value, certified) of a report dict: its certified upper bound, else AutoLip's."""
    ub = data.get("upper_bound")
    if ub is not None:
        return value_or_inf(ub.get("value")), True
    autolip = [b for b in data["bounds"] if b.get("method") == "autolip"]
    return (value_or_inf(autolip[0].get("value")) if autolip else math.inf), False


def value_or_inf(x: float | None) -> float:
    return math.inf if x is None else float(x)


@dataclass
class Change:
    """One number in the baseline and now (None: absent on that side)."""

    name: str
    old: float | None
    new: float | None
    certified: bool = True

    @property
    def relative(self) -> float | None:
        if self.old is None or self.new is None or self.old == self.new:
            return None if self.old is None or self.new is None else 0.0
        if self.old == 0 or math.isinf(self.old):
            return math.inf if self.new > self.old else -1.0
        return self.new / self.old - 1

    def check(self, max_increase: float, prefix: str) -> Check:
        limit = (self.old or 0.0) * (1 + max_increase)
        value = self.new if self.new is not None else math.inf
        passed = value <= limit
        relation = "<=" if passed else ">"
        note = "" if self.certified else " (estimate, not certified)"
        message = (f"value {fmt(value)} {relation} limit {fmt(limit)} (baseline "
                   f"{fmt(self.old)} +{max_increase:.4g}){note}")
        group = "baseline" if prefix == "max-increase" else "baseline.layers"
        return Check(prefix, passed, value, limit, message, group, self.certified)

    def to_dict(self) -> dict[str, Any]:
        rel = self.relative
        return {"name": self.name, "old": _json_num(self.old), "new": _json_num(self.new),
                "relative": rel if rel is None or math.isfinite(rel) else None,
                "certified": self.certified}


def _json_num(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


@dataclass
class Comparison:
    baseline: str
    overall: Change
    layers: list[Change] = field(default_factory=list)

    @property
    def matched(self) -> list[Change]:
        return [c for c in self.layers if c.old is not None and c.new is not None]

    def checks(self, max_increase: float) -> list[Check]:
        checks = [self.overall.check(max_increase, "max-increase")]
        return checks + [c.check(max_increase, f"max-increase[{c.name}]") for c in self.matched]

    def largest_changes(self, count: int = TOP_CHANGES) -> list[Change]:
        def size(c: Change) -> float:
            rel = c.relative
            return math.inf if rel is None else abs(rel)
        changed = [c for c in self.layers if c.relative != 0.0]
        return sorted(changed, key=size, reverse=True)[:count]

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "global": self.overall.to_dict(),
                "layers": [c.to_dict() for c in self.layers]}


def compare(old: dict[str, Any], new: dict[str, Any], baseline: str = "") -> Comparison:
    """Global and per-layer (matched by name) differences between two report dicts."""
    old_value, old_cert = report_headline(old)
    new_value, new_cert = report_headline(new)
    overall = Change("global", old_value, new_value, old_cert and new_cert)
    old_layers = {layer["name"]: layer for layer in old["layers"]}
    new_layers = {layer["name"]: layer for layer in new["layers"]}
    names = list(new_layers) + [n for n in old_layers if n not in new_layers]
    changes = [_layer_change(n, old_layers.get(n), new_layers.get(n)) for n in names]
    return Comparison(baseline, overall, changes)


def _layer_change(name: str, old: dict | None, new: dict | None) -> Change:
    certified = all(layer["certified"] for layer in (old, new) if layer is not None)
    return Change(name, None if old is None else value_or_inf(old["bound"]),
                  None if new is None else value_or_inf(new["bound"]), certified)


def comparison_text(comparison: Comparison) -> str:
    rows = [_change_row(comparison.overall)] + [_change_row(c) for c in comparison.layers]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  {'baseline':>12}  {'now':>12}  change"]
    lines += [f"{a:{width}}  {b:>12}  {c:>12}  {d}" for a, b, c, d in rows]
    return "\n".join(lines)


def _change_row(c: Change) -> tuple[str, str, str, str]:
    return (c.name, side_text(c.old), side_text(c.new), relative_text(c))


def side_text(x: float | None) -> str:
    return "absent" if x is None else fmt(x)


def relative_text(c: Change) -> str:
    if c.old is None:
        return "added"
    if c.new is None:
        return "removed"
    rel = c.relative
    if rel is None or rel == 0:
        return "unchanged"
    return "+inf" if math.isinf(rel) else f"{rel:+.2%}"

