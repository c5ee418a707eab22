"""Presentation of a Report: a rich table for terminals, and Markdown."""
from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lipcheck.report import Report


def fmt(x: float | None, digits: int = 5) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}g}"


def shape(s: list[int]) -> str:
    return "x".join(str(d) for d in s) if s else "-"


def shapes(layer: dict[str, Any]) -> str:
    return f"{shape(layer['input_shape'])} -> {shape(layer['output_shape'])}"


def how(layer: dict[str, Any]) -> str:
    """The method, with power-iteration progress or the certified/estimate gap."""
    method = layer["method"]
    if method == "power-iteration" and layer.get("iterations") is not None:
        state = "converged" if layer.get("converged") else "NOT converged"
        return f"power-iteration ({layer['iterations']} it, {state})"
    if layer.get("gap") is not None and layer["certified"] and abs(layer["gap"] - 1) > 1e-9:
        return f"{method} (Krylov est. {fmt(layer['estimate'])}, gap {layer['gap']:.4f}x)"
    return method


def label(certified: bool, kind: str = "upper") -> str:
    if kind == "lower":
        return "certified lower" if certified else "estimate"
    if kind == "estimate" or not certified:
        return "estimate"
    return "certified upper"


def layer_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for layer in data["layers"]:
        bound = fmt(layer["bound"]) if layer["bound"] is not None else "inf"
        rows.append([layer["name"], layer["op"],
                     shapes(layer), bound, "certified" if layer["certified"] else "estimate", how(layer),
                     fmt(layer["running_bound"]) if layer["running_bound"] is not None else "inf"])
    return rows


LAYER_HEADERS = ["node", "op", "shape in -> out", "bound", "status", "how", "running AutoLip"]


def bound_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for b in data["bounds"] + ([data["lower_bound"]] if data["lower_bound"] else []):
        value = fmt(b["value"]) if b["finite"] else "inf"
        rows.append([b["method"], value, label(b["certified"], b["kind"]), f"{b['seconds']:.2f}s"])
    return rows


def interval_line(data: dict[str, Any]) -> str:
    ub, lb = data["upper_bound"], data["lower_bound"]
    if ub is None or not ub["finite"]:
        upper = "no finite certified upper bound"
    else:
        upper = f"{fmt(ub['value'])} ({ub['method']})"
    if lb is None:
        return f"Lipschitz constant <= {upper}" if ub and ub["finite"] else upper
    gap = f", gap {data['gap']:.3g}x" if data.get("gap") else ""
    return f"{fmt(lb['value'])} ({lb['method']}) <= Lipschitz constant <= {upper}{gap}"


def local_line(local: dict[str, Any]) -> str:
    """'local on box [0, 1]: A <= Lipschitz constant <= B (global <= C)'."""
    glob = local.get("global_upper_bound")
    beside = "" if glob is None else f" (global <= {fmt(glob)})"
    per = " (max over the balls, each on its own)" if local["sets"] > 1 else ""
    return (f"local on {local['set']}: {fmt(local['lower_bound'])} <= Lipschitz constant <= "
            f"{fmt(local['upper_bound'])}{per}{beside}")


def print_table(report: Report, console: Console) -> None:
    data = report.to_dict()
    table = Table(title=escape(f"lipcheck: {data['model'].get('path') or 'model'}"), show_lines=False)
    for header in LAYER_HEADERS:
        table.add_column(header, overflow="fold",
                         justify="right" if header in ("bound", "running AutoLip")
                         else "left")
    for row in layer_rows(data):
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    bounds = Table(title="Global bounds")
    for header in ("method", "value", "what it is", "time"):
        bounds.add_column(header)
    for row in bound_rows(data):
        bounds.add_row(*(escape(cell) for cell in row))
    console.print(bounds)
    console.print(f"[bold]{escape(interval_line(data))}[/bold]")
    if data.get("local") and not data["local"].get("skipped"):
        console.print(f"[bold]{escape(local_line(data['local']))}[/bold]")
    for w in data["warnings"]:
        where = f" ({w['node']})" if w.get("node") else ""
        console.print(f"[yellow]warning[/yellow] {escape(w['code'] + where)}: {escape(w['message'])}")


def markdown(report: Report) -> str:
    data = report.to_dict()
    lines = [f"# lipcheck: {data['model'].get('path') or 'model'}", "",
             f"**{interval_line(data)}**", "",
             *([f"**{local_line(data['local'])}**", ""]
               if data.get("local") and not data["local"].get("skipped") else []),
             "## Layers", "",
             _md_table(LAYER_HEADERS, layer_rows(data)), "", "## Global bounds", "",
             _md_table(["method", "value", "what it is", "time"], bound_rows(data)), ""]
    if data["warnings"]:
        lines += ["## Warnings", ""]
        for w in data["warnings"]:
            where = f" (`{w['node']}`)" if w.get("node") else ""
            lines.append(f"- **{w['code']}**{where}: {w['message']}")
        lines.append("")
    return "\n".join(lines)


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
