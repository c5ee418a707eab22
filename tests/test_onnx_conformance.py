"""The real graphs that ship with the onnx package: every model loads and reproduces its
reference output, or fails with a lipcheck error (never another exception)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

from lipcheck.cli import app
from lipcheck.errors import EXIT_NO_FINITE_BOUND, EXIT_OK, EXIT_USER_ERROR, LipcheckError
from lipcheck.interpreter import run_graph
from lipcheck.loaders.onnx_loader import load_onnx
from lipcheck.report import load_schema

DATA = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data"
CONVERTED = sorted((DATA / "pytorch-converted").glob("*/model.onnx"))
LIGHT = sorted(p for p in (DATA / "light").glob("*.onnx"))
MAX_LIGHT_BYTES = 30 * 1024**2
runner = CliRunner()


def _tensor(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(numpy_helper.to_array(onnx.load_tensor(str(path)))))


def test_data_is_present() -> None:
    assert len(CONVERTED) >= 50 and len(LIGHT) >= 5


@pytest.mark.parametrize("path", CONVERTED, ids=lambda p: p.parent.name)
def test_pytorch_converted_reproduces_reference(path: Path) -> None:
    case = path.parent / "test_data_set_0"
    try:
        graph = load_onnx(path)
    except LipcheckError:
        pytest.skip("refused cleanly")
    out = run_graph(graph, {graph.inputs[0].name: _tensor(case / "input_0.pb")})
    expected = _tensor(case / "output_0.pb")
    torch.testing.assert_close(out[graph.outputs[0]], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", LIGHT, ids=lambda p: p.stem)
def test_light_models_load_with_shapes(path: Path) -> None:
    if path.stat().st_size > MAX_LIGHT_BYTES:
        pytest.skip("large model")
    try:
        graph = load_onnx(path)
    except LipcheckError:
        pytest.skip("refused cleanly")
    assert graph.nodes and all(n.output_shapes for n in graph.nodes)
    final = graph.producers()[graph.outputs[0]].output_shapes[0]
    expected = _tensor(path.with_name(path.stem + "_output_0.pb")).shape
    assert tuple(final) == tuple(expected)


# --- issue 16: every model through the CLI entry point, default options -----------------

CLI_LOWER_CAP = "0.5"   # seconds: the lower-bound search runs, with a short cap
USER_ERROR_CODES = {"user_error", "model_error", "unsafe_file", "shape_error", "graph_error",
                    "bad_weights", "unsupported_op", "timeout"}   # lipcheck/errors.py, README
ERROR_LINE = re.compile(r"^error \((\w+)\): \S")
SLOW_LIGHT = {"light_bvlc_alexnet", "light_zfnet512", "light_vgg19", "light_inception_v1"}


def _cli_case(path: Path):
    name = path.parent.name if path.name == "model.onnx" else path.stem
    marks = [pytest.mark.slow] if name in SLOW_LIGHT else []   # dense 4096-wide layers at 224
    return pytest.param(path, id=name, marks=marks)


def _estimate_cli(path: Path, report: Path):
    """The CLI's own command, in this process (one subprocess a model would double the
    suite's time), with default options but the lower-bound cap."""
    return runner.invoke(app, ["estimate", str(path), "--quiet", "--lower-budget", CLI_LOWER_CAP,
                               "--json", str(report)])


@pytest.mark.parametrize("path", [_cli_case(p) for p in CONVERTED + LIGHT])
def test_cli_default_estimate_never_fails_internally(path: Path, tmp_path: Path) -> None:
    result = _estimate_cli(path, tmp_path / "report.json")
    output = result.output
    assert result.exit_code in (EXIT_OK, EXIT_USER_ERROR, EXIT_NO_FINITE_BOUND), output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    assert "Traceback" not in output and "internal error" not in output
    if result.exit_code == EXIT_USER_ERROR:
        lines = [ERROR_LINE.match(line) for line in output.strip().splitlines()]
        codes = [m.group(1) for m in lines if m]
        assert codes and codes[0] in USER_ERROR_CODES, output
        return
    report = json.loads((tmp_path / "report.json").read_text())
    jsonschema.validate(report, load_schema())
    assert "lower_bound" in report["timings"]
    lower, upper = report["lower_bound"], report["upper_bound"]
    if lower is not None and upper is not None and upper["value"] is not None:
        assert lower["value"] <= upper["value"]


@pytest.mark.parametrize("name", ["test_Embedding", "test_Embedding_sparse"])
def test_integer_input_is_a_warning_in_a_complete_report(name: str, tmp_path: Path) -> None:
    path = DATA / "pytorch-converted" / name / "model.onnx"
    result = _estimate_cli(path, tmp_path / "report.json")
    assert result.exit_code in (EXIT_OK, EXIT_NO_FINITE_BOUND), result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["lower_bound"] is None and report["layers"]
    (note,) = [w for w in report["warnings"] if w["code"] == "lower_bound_skipped"]
    assert "int64" in note["message"] and "with respect to" in note["message"]
    assert "embedded vectors" in note["message"]
