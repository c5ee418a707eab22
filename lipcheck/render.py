"""Presentation of a Report: a rich table for terminals, and Markdown."""
from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lipcheck.render_fit import Column, drop, fit, middle, recompute, rename, squeeze
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
                     shapes(layer), bound, "certified" if layer["certified"] else "estimate",
                     how(layer),
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
    gap = f", gap {gap_text(data['gap'])}" if data.get("gap") else ""
    return f"{fmt(lb['value'])} ({lb['method']}) <= Lipschitz constant <= {upper}{gap}"


def gap_text(gap: float) -> str:
    """'3.73x', but '1.00007x' where three digits would round a near-tight gap to '1x'."""
    return f"{gap:.3g}x" if gap >= 1.01 else f"{gap:.5f}x"


def local_line(local: dict[str, Any]) -> str:
    """'local on box [0, 1]: A <= Lipschitz constant <= B (global <= C)'."""
    glob = local.get("global_upper_bound")
    beside = "" if glob is None else f" (global <= {fmt(glob)})"
    if local.get("global_unbounded"):
        beside = " (global: no finite bound)"
    per = " (max over the balls, each on its own)" if local["sets"] > 1 else ""
    return (f"local on {local['set']}: {fmt(local['lower_bound'])} <= Lipschitz constant <= "
            f"{fmt(local['upper_bound'])}{per}{beside}")


def layer_columns(data: dict[str, Any], width: int) -> list[Column]:
    """The layer table's columns, fitted to `width`. Until it fits: the detail of `how` goes,
    long headers shorten, shapes go, `how` goes, `running` goes; after each drop, node names
    abbreviated from the middle (to 24 characters) are tried first, and last to 8. Node,
    op, bound and status always stay."""
    rows = layer_rows(data)
    columns = [Column(h, [r[i] for r in rows], right=h in ("bound", "running AutoLip"))
               for i, h in enumerate(LAYER_HEADERS)]
    methods = [layer["method"] for layer in data["layers"]]
    steps = [recompute("how", methods),
             rename({"running AutoLip": "running", "shape in -> out": "shape"}),
             drop("shape"), squeeze("node", 24, True), drop("how"), squeeze("node", 24, True),
             drop("running"), squeeze("node", 8)]
    return fit(columns, width, steps)


def print_table(report: Report, console: Console) -> None:
    """The layer table, the global bounds and the interval. At any width at which the kept
    columns fit (80 does), no cell is cut mid-word; text is printed without rich's automatic
    highlighting, which would colour `16.9x` as `16.` and `9x`."""
    data = report.to_dict()
    title = middle(f"lipcheck: {data['model'].get('path') or 'model'}", console.width)
    table = Table(title=escape(title), show_lines=False, highlight=False)
    columns = layer_columns(data, console.width)
    for column in columns:
        table.add_column(column.header, overflow="fold",
                         justify="right" if column.right else "left")
    for cells in zip(*(column.cells for column in columns), strict=True):
        table.add_row(*(escape(cell) for cell in cells))
    console.print(table, highlight=False)
    bounds = Table(title="Global bounds", highlight=False)
    for header in ("method", "value", "what it is", "time"):
        bounds.add_column(header)
    for row in bound_rows(data):
        bounds.add_row(*(escape(cell) for cell in row))
    console.print(bounds, highlight=False)
    console.print(f"[bold]{escape(interval_line(data))}[/bold]", highlight=False)
    if data.get("local") and not data["local"].get("skipped"):
        console.print(f"[bold]{escape(local_line(data['local']))}[/bold]", highlight=False)
    for w in data["warnings"]:
        where = f" ({w['node']})" if w.get("node") else ""
        console.print(f"[yellow]warning[/yellow] {escape(w['code'] + where)}: "
                      f"{escape(w['message'])}", highlight=False)


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
