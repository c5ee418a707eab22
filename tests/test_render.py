"""What a user sees, pinned by golden files (LIPCHECK_REGEN_GOLDEN=1 rewrites them)."""
import os
import re
from pathlib import Path

import pytest
from graphs import mlp
from rich.console import Console

from lipcheck import render
from lipcheck.api import EstimateOptions, estimate
from lipcheck.graph import OpKind
from lipcheck.settings import Settings

GOLDEN = Path(__file__).parent / "golden"


def _stable(text: str) -> str:
    return re.sub(r"\d+\.\d+s\b", "<t>s", text)


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("LIPCHECK_REGEN_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed: LIPCHECK_REGEN_GOLDEN=1 to accept"


def _report(layer_method: str = "auto"):
    graph = mlp([5, 7, 3], OpKind.RELU, seed=3)
    options = EstimateOptions(methods=("autolip",), lower_budget=0)
    return estimate(graph, settings=Settings(layer_method=layer_method), options=options)


def test_markdown_golden():
    _check("estimate_mlp.md", _stable(render.markdown(_report())))


def test_table_golden():
    console = Console(width=140, record=True, color_system=None, file=open(os.devnull, "w"))
    render.print_table(_report(), console)
    _check("estimate_mlp.txt", _stable(console.export_text()))


def test_power_iteration_layers_are_labelled_estimates():
    from graphs import conv_net
    report = estimate(conv_net(), settings=Settings(layer_method="power"),
                      options=EstimateOptions(methods=("autolip",), lower_budget=0))
    text = render.markdown(report)
    assert "power-iteration (" in text and "| estimate |" in text
    assert report.upper_bound is None
    assert "no finite certified upper bound" in text
    assert any(w.code == "not_certified" for w in report.warnings)


def _long_names_report():
    """Node names as long as a real model's (`encoder.conv_layers.0...`), a long op name."""
    import torch

    from lipcheck.graph import Graph, Node, ValueInfo
    from lipcheck.interpreter import infer_shapes
    gen = torch.Generator().manual_seed(0)
    c = {"w0": torch.randn(4, 2, 3, 3, generator=gen) / 3,
         "w1": torch.randn(4, 4, 3, 3, generator=gen) / 4, "b0": torch.randn(4, generator=gen)}
    pads = {"pads": [1, 1, 1, 1]}
    nodes = [Node("encoder.conv_layers.0.depthwise_separable", OpKind.CONV, ["x", "w0", "b0"],
                  ["c0"], pads),
             Node("encoder.conv_layers.1.activation", OpKind.RELU, ["c0"], ["r0"]),
             Node("encoder.conv_layers.2.pointwise_projection", OpKind.CONV, ["r0", "w1"],
                  ["c1"], pads),
             Node("head.global_pool", OpKind.GLOBAL_AVERAGE_POOL, ["c1"], ["y"])]
    graph = Graph([ValueInfo("x", (1, 2, 6, 6))], ["y"], nodes, c)
    infer_shapes(graph)
    return estimate(graph, options=EstimateOptions(methods=("autolip",), lower_budget=0))


def _table_text(report, width: int) -> str:
    console = Console(width=width, record=True, color_system=None, file=open(os.devnull, "w"))
    render.print_table(report, console)
    return _stable(console.export_text())


def test_table_golden_at_80_and_160_columns():
    """80: what rich uses when stdout is not a terminal (CI logs); 160: a wide terminal."""
    report = _long_names_report()
    _check("estimate_long_names_80.txt", _table_text(report, 80))
    _check("estimate_long_names_160.txt", _table_text(report, 160))


def _layer_rows(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("┡"))
    end = next(i for i, line in enumerate(lines) if line.startswith("└"))
    return lines[start + 1:end]


@pytest.mark.parametrize("width", [60, 72, 80, 100, 120, 160, 200])
def test_no_cell_is_cut_at_any_width_the_kept_columns_fit(width):
    report = _long_names_report()
    text = _table_text(report, width)
    assert max(len(line) for line in text.splitlines()[:-4]) <= width   # the tables
    rows = _layer_rows(text)
    assert len(rows) == len(report.layers), "a cell wrapped onto a second line"
    for row, layer in zip(rows, report.layers, strict=True):
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert cells[1] == layer.op and "certified" in cells
        assert cells[0] == layer.name or ("…" in cells[0] and layer.name.startswith(
            cells[0].split("…")[0]) and layer.name.endswith(cells[0].split("…")[1]))
    full = width >= 160
    assert ("shape in -> out" in text and "running AutoLip" in text) == full


def test_numbers_are_not_split_by_highlighting():
    """rich's default highlighter colours `16.9x` as `16.` and `9x`; the interval line (and
    every number) must come out as one piece even on a console that highlights."""
    import io
    graph = mlp([5, 7, 3], OpKind.RELU, seed=3)
    report = estimate(graph, options=EstimateOptions(methods=("autolip",), lower_budget=5.0,
                                                     lower_rounds=1))
    out = io.StringIO()
    render.print_table(report, Console(file=out, force_terminal=True, color_system="standard",
                                       width=160))
    line = render.interval_line(report.to_dict())
    assert "gap" in line and line.rstrip().endswith("x")
    assert line in out.getvalue()
    plain = io.StringIO()
    Console(file=plain, force_terminal=True, color_system="standard").print(line)
    assert line not in plain.getvalue()   # the test would catch highlighting


def test_a_near_tight_gap_is_not_rounded_to_one() -> None:
    from lipcheck.render import gap_text
    assert gap_text(3.7312) == "3.73x"
    assert gap_text(1.00007) == "1.00007x"
    assert gap_text(1.0) == "1.00000x"
