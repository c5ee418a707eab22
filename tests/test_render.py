"""What a user sees, pinned by golden files (LIPCHECK_REGEN_GOLDEN=1 rewrites them)."""
import os
import re
from pathlib import Path

from rich.console import Console

from graphs import mlp
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
