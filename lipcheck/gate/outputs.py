"""What the gate hands to people and CI systems: JUnit XML, the pull-request Markdown
summary and the terminal summary. Reads Verdict and report dicts; computes nothing about
Lipschitz constants."""
from __future__ import annotations

import platform
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lipcheck.gate.checks import Check, fmt
from lipcheck.gate.comparison import TOP_CHANGES, Comparison, relative_text, side_text, value_or_inf
from lipcheck.gate.verdict import Verdict
from lipcheck.render import interval_line
from lipcheck.version import __version__

if TYPE_CHECKING:  # imported at run time by its callers (robustness needs torch)
    from lipcheck.gate.robustness import Robustness

TOP_LAYERS = 5


def junit_xml(verdict: Verdict) -> str:
    """One <testcase> per check in one <testsuite name="lipcheck">."""
    checks = verdict.checks
    counts = {"tests": str(len(checks)), "failures": str(len(verdict.failed)), "errors": "0"}
    seconds = f"{verdict.seconds:.3f}"
    root = ET.Element("testsuites", {"name": "lipcheck", "time": seconds, **counts})
    suite = ET.SubElement(root, "testsuite", {
        "name": "lipcheck", "skipped": "0", "time": seconds,
        "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "hostname": platform.node() or "localhost", **counts})
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
        lines += _robustness_section(verdict.robustness)
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


def _local_note(robustness: Any) -> str:
    """' (global constants 79.78%, local constants 91.33%)' for the gate's data line."""
    local = getattr(robustness, "local", None)
    if local is None:
        return ""
    if local.skipped is not None:
        return f" (local constants skipped: {local.skipped})"
    return (f" (global constants {robustness.certified_accuracy_global:.2%}, local constants "
            f"on each ball {local.certified_accuracy:.2%})")


def _robustness_section(r: Robustness) -> list[str]:
    kind = "certified" if r.certified else "estimated (no certified bound: not a certificate)"
    at_eps = ("" if r.certified_accuracy is None else
              f"certified accuracy **{r.certified_accuracy:.2%}** at eps = {fmt(r.eps)} (L2)"
              f"{_local_note(r)}, ")
    return ["### Robustness on data", "",
            f"{r.n} samples: clean accuracy **{r.clean_accuracy:.2%}**, {at_eps}"
            f"median radius {fmt(r.median_radius)}; radii {kind}, {r.method} rule.", ""]


def _layers_section(data: dict[str, Any]) -> list[str]:
    layers = sorted(data["layers"], key=lambda layer: -value_or_inf(layer["bound"]))[:TOP_LAYERS]
    rows = [[f"`{layer['name']}`", layer["op"], fmt(value_or_inf(layer["bound"])),
             "certified" if layer["certified"] else "estimate",
             fmt(value_or_inf(layer.get("running_bound")))] for layer in layers]
    return ["### Largest layer bounds", "",
            table(["node", "op", "bound", "status", "running AutoLip"], rows), ""]


def _baseline_section(comparison: Comparison) -> list[str]:
    name = Path(comparison.baseline).name or "baseline"
    changes = [comparison.overall] + comparison.largest_changes()
    rows = [[f"`{c.name}`" if c is not comparison.overall else "**global**", side_text(c.old),
             side_text(c.new), relative_text(c)] for c in changes]
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
                        f", certified accuracy {r.certified_accuracy:.4f} at eps {fmt(r.eps)}"
                        f"{_local_note(r)}")
                     + f" ({r.method} radii, {'certified' if r.certified else 'ESTIMATES'}, "
                     f"{r.seconds:.2f} s)")
        lines += _open_hint(r)
    return "\n".join(lines)


def _open_hint(robustness: Any) -> list[str]:
    """A line naming the slower margin stages when the local rule ran without them, left
    correctly classified samples uncertified, and the model has the ReLU form they need."""
    local = getattr(robustness, "local", None)
    if (local is None or local.skipped is not None or local.bab is not None
            or local.sdp is not None or not local.margin_stages
            or robustness.certified_accuracy is None):
        return []
    left = round((robustness.clean_accuracy - robustness.certified_accuracy) * robustness.n)
    if left <= 0:
        return []
    return [f"  {left} correctly classified samples are not certified: --bab-domains 30 and "
            "--sdp-margins 120 try them (slower; docs/gate.md)"]
