"""What the gate hands to people and CI systems: the baseline comparison, JUnit XML,
the pull-request Markdown summary and the terminal summary. Reads Verdict and report
dicts; computes nothing about Lipschitz constants."""
from __future__ import annotations

import json
import math
import platform
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lipcheck import __version__
from lipcheck.errors import UserError
from lipcheck.gate.verdict import Check, Verdict, fmt
from lipcheck.render import interval_line

TOP_LAYERS = 5
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
        return _value(ub.get("value")), True
    autolip = [b for b in data["bounds"] if b.get("method") == "autolip"]
    return (_value(autolip[0].get("value")) if autolip else math.inf), False


def _value(x: float | None) -> float:
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
    return Change(name, None if old is None else _value(old["bound"]),
                  None if new is None else _value(new["bound"]), certified)


def comparison_text(comparison: Comparison) -> str:
    rows = [_change_row(comparison.overall)] + [_change_row(c) for c in comparison.layers]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  {'baseline':>12}  {'now':>12}  change"]
    lines += [f"{a:{width}}  {b:>12}  {c:>12}  {d}" for a, b, c, d in rows]
    return "\n".join(lines)


def _change_row(c: Change) -> tuple[str, str, str, str]:
    return (c.name, _side(c.old), _side(c.new), relative_text(c))


def _side(x: float | None) -> str:
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


def junit_xml(verdict: Verdict) -> str:
    """One <testcase> per check in one <testsuite name="lipcheck">."""
    checks = verdict.checks
    counts = {"tests": str(len(checks)), "failures": str(len(verdict.failed)), "errors": "0"}
    seconds = f"{verdict.seconds:.3f}"
    root = ET.Element("testsuites", name="lipcheck", time=seconds, **counts)
    suite = ET.SubElement(root, "testsuite", name="lipcheck", skipped="0", time=seconds,
                          timestamp=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                          hostname=platform.node() or "localhost", **counts)
    properties = ET.SubElement(suite, "properties")
    for key, value in _properties(verdict).items():
        ET.SubElement(properties, "property", name=key, value=value)
    for check in checks:
        case = ET.SubElement(suite, "testcase", name=check.name,
                             classname=f"lipcheck.{check.group}", time="0")
        if not check.passed:
            failure = ET.SubElement(case, "failure", message=check.message, type="threshold")
            failure.text = f"{check.name}: {check.message}"
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


def _properties(verdict: Verdict) -> dict[str, str]:
    data = verdict.report.model
    return {"model": str(data.get("path") or "model"), "status": verdict.status,
            "exit_code": str(verdict.exit_code), "lipcheck_version": __version__}


STATUS_BADGE = {"pass": "✅ pass", "fail": "❌ fail", "no finite bound": "⚠️ no finite bound"}


def markdown_summary(verdict: Verdict) -> str:
    """A pull-request comment: verdict, bound interval, checks, top layers, baseline, data."""
    data = verdict.report.to_dict()
    name = Path(data["model"].get("path") or "model").name
    lines = [f"## lipcheck: {STATUS_BADGE[verdict.status]} (`{name}`)", "",
             f"**{interval_line(data)}**", ""]
    lines += _checks_section(verdict.checks)
    if verdict.robustness is not None:
        lines += _robustness_section(verdict)
    lines += _layers_section(data)
    if verdict.comparison is not None:
        lines += _baseline_section(verdict.comparison)
    lines.append(f"<sub>lipcheck {__version__}, {verdict.seconds:.2f} s</sub>")
    return "\n".join(lines) + "\n"


def _checks_section(checks: list[Check]) -> list[str]:
    if not checks:
        return ["No thresholds set.", ""]
    failed = [c for c in checks if not c.passed]
    shown = failed + [c for c in checks if c.passed][:max(0, TOP_CHANGES - len(failed))]
    rows = [[c.name, _cell(c.value), _cell(c.limit), "pass" if c.passed else "**FAIL**",
             "certified" if c.certified else "estimate"] for c in shown]
    lines = [f"{len(checks) - len(failed)} of {len(checks)} checks passed.", "",
             table(["check", "value", "limit", "result", "status"], rows), ""]
    if len(shown) < len(checks):
        lines += [f"({len(checks) - len(shown)} more passing checks not shown)", ""]
    return lines


def _cell(x: float | None) -> str:
    return "-" if x is None else fmt(x)


def _robustness_section(verdict: Verdict) -> list[str]:
    r = verdict.robustness
    kind = "certified" if r.certified else "estimated (no certified bound: not a certificate)"
    at_eps = ("" if r.certified_accuracy is None else
              f"certified accuracy **{r.certified_accuracy:.2%}** at eps = {fmt(r.eps)} (L2), ")
    return ["### Robustness on data", "",
            f"{r.n} samples: clean accuracy **{r.clean_accuracy:.2%}**, {at_eps}"
            f"median radius {fmt(r.median_radius)}; radii {kind}, {r.method} rule.", ""]


def _layers_section(data: dict[str, Any]) -> list[str]:
    layers = sorted(data["layers"], key=lambda layer: -_value(layer["bound"]))[:TOP_LAYERS]
    rows = [[f"`{layer['name']}`", layer["op"], fmt(_value(layer["bound"])),
             "certified" if layer["certified"] else "estimate",
             fmt(_value(layer.get("running_bound")))] for layer in layers]
    return ["### Largest layer bounds", "",
            table(["node", "op", "bound", "status", "running AutoLip"], rows), ""]


def _baseline_section(comparison: Comparison) -> list[str]:
    name = Path(comparison.baseline).name or "baseline"
    changes = [comparison.overall] + comparison.largest_changes()
    rows = [[f"`{c.name}`" if c is not comparison.overall else "**global**", _side(c.old),
             _side(c.new), relative_text(c)] for c in changes]
    unchanged = len(comparison.layers) - len(changes) + 1
    lines = [f"### Against the baseline `{name}`", "",
             table(["", "baseline", "now", "change"], rows), ""]
    if unchanged > 0:
        lines += [f"({unchanged} layers unchanged or not shown)", ""]
    return lines


def table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(out)


def terminal_summary(verdict: Verdict) -> str:
    """Plain text for stdout: the verdict, the interval, every check, the data line."""
    data = verdict.report.to_dict()
    lines = [f"lipcheck check: {verdict.status.upper()} (exit {verdict.exit_code})",
             f"  {interval_line(data)}"]
    width = max([len(c.name) for c in verdict.checks] + [0])
    lines += [f"  {'PASS' if c.passed else 'FAIL'}  {c.name:{width}}  {c.message}"
              for c in verdict.checks]
    if verdict.robustness is not None:
        r = verdict.robustness
        lines.append(f"  data: {r.n} samples, clean accuracy {r.clean_accuracy:.4f}"
                     + ("" if r.certified_accuracy is None else
                        f", certified accuracy {r.certified_accuracy:.4f} at eps {fmt(r.eps)}")
                     + f" ({r.method} radii, {'certified' if r.certified else 'ESTIMATES'}, "
                     f"{r.seconds:.2f} s)")
    return "\n".join(lines)
