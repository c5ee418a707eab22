"""Fuzzing every entry point with mutated ONNX bytes and mutated JSON reports.

Property: only lipcheck's own errors come out (exit code 2, or 0/1/3 when the mutation left
a valid input), never an uncaught exception (exit code 4 "internal error"), and every input
finishes within PER_INPUT_S. Examples are bounded and derandomized so CI is reproducible.
"""
import functools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper
from onnx_builders import const, model
from typer.testing import CliRunner

from lipcheck import api
from lipcheck.cli import app
from lipcheck.errors import LipcheckError

PER_INPUT_S = 10.0
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FAST = ["--method", "autolip", "--lower-budget", "0", "--quiet"]
runner = CliRunner()


@functools.cache
def seed_onnx() -> bytes:
    """A 4-node Conv/Relu/Flatten/Gemm model, about 700 bytes."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "g", "b"], ["y"], name="fc", alpha=0.5)]
    inits = [const("w", rng.standard_normal((3, 2, 3, 3))),
             const("g", rng.standard_normal((12, 3))), const("b", rng.standard_normal(3))]
    return model(nodes, {"x": [1, 2, 4, 4]}, ["y"], inits).SerializeToString()


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """Truncation at a random offset, 1-4 byte overwrites, or an inserted run of bytes."""
    kind = draw(st.sampled_from(["truncate", "flip", "insert"]))
    out = bytearray(data)
    if kind == "truncate":
        return bytes(out[:draw(st.integers(0, len(out) - 1))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        return bytes(out)
    at = draw(st.integers(0, len(out)))
    return bytes(out[:at] + draw(st.binary(min_size=1, max_size=8)) + out[at:])


def _write(folder: str, name: str, payload: bytes | str) -> Path:
    path = Path(folder) / name
    path.write_bytes(payload if isinstance(payload, bytes) else payload.encode())
    return path


def _invoke(*args: Any) -> tuple[int, str, float]:
    start = time.monotonic()
    result = runner.invoke(app, [str(a) for a in args])
    elapsed = time.monotonic() - start
    assert result.exit_code in (0, 1, 2, 3), (result.exit_code, result.output, result.exception)
    assert "internal error" not in result.output and "Traceback" not in result.output
    assert elapsed < PER_INPUT_S, (elapsed, args)
    return result.exit_code, result.output, elapsed


@FUZZ
@given(mutated_bytes(seed_onnx()))
def test_cli_estimate_on_mutated_onnx(payload: bytes):
    with tempfile.TemporaryDirectory() as folder:
        code, output, _ = _invoke("estimate", _write(folder, "m.onnx", payload), *FAST)
        if code == 2:
            errors = [line for line in output.splitlines() if line.startswith("error")]
            assert len(errors) == 1, output


@FUZZ
@given(mutated_bytes(seed_onnx()))
def test_api_estimate_on_mutated_onnx(payload: bytes):
    with tempfile.TemporaryDirectory() as folder:
        start = time.monotonic()
        try:
            report = api.estimate(str(_write(folder, "m.onnx", payload)),
                                  options=api.EstimateOptions(methods=("autolip",),
                                                              lower_budget=0.0))
            json.loads(report.to_json())  # strict JSON: no NaN, no bytes
        except LipcheckError as exc:
            assert str(exc) and "\n" not in str(exc)
        assert time.monotonic() - start < PER_INPUT_S


def test_the_seed_model_itself_estimates():
    with tempfile.TemporaryDirectory() as folder:
        code, _, _ = _invoke("estimate", _write(folder, "m.onnx", seed_onnx()), *FAST)
    assert code == 0


# --- JSON reports ------------------------------------------------------------------------

@functools.cache
def seed_report() -> str:
    with tempfile.TemporaryDirectory() as folder:
        report = api.estimate(str(_write(folder, "m.onnx", seed_onnx())),
                              options=api.EstimateOptions(methods=("autolip",), lower_budget=0.2))
        return report.to_json()


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, prefix + (i,))
    return out


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.text(max_size=8)
    | st.floats(allow_nan=True, allow_infinity=True),
    lambda inner: (st.lists(inner, max_size=3)
                   | st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)


def _set(data: Any, path: tuple, value: Any, delete: bool) -> Any:
    if not path:
        return value
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return data


@st.composite
def mutated_report(draw: st.DrawFn) -> str:
    """A valid report with one value replaced or deleted, or its text truncated."""
    text = seed_report()
    if draw(st.integers(0, 9)) == 0:
        return text[:draw(st.integers(0, len(text) - 1))]
    data = json.loads(text)
    path = draw(st.sampled_from(_paths(data)))
    delete = bool(path) and draw(st.booleans())
    return json.dumps(_set(data, path, draw(JSON_VALUES), delete))


JSON_FUZZ = settings(FUZZ, max_examples=80)


@JSON_FUZZ
@given(mutated_report())
def test_compare_on_mutated_reports(text: str):
    with tempfile.TemporaryDirectory() as folder:
        good, bad = _write(folder, "good.json", seed_report()), _write(folder, "bad.json", text)
        _invoke("compare", good, bad, "--max-increase", "10%")
        _invoke("compare", bad, good)


@settings(FUZZ, max_examples=25)
@given(mutated_report())
def test_check_baseline_on_mutated_reports(text: str):
    with tempfile.TemporaryDirectory() as folder:
        model_path = _write(folder, "m.onnx", seed_onnx())
        baseline = _write(folder, "base.json", text)
        _invoke("check", model_path, "--baseline", baseline, "--max-increase", "10%",
                "--no-config", *FAST)


@settings(FUZZ, max_examples=8)
@given(mutated_report())
def test_plot_on_mutated_reports(text: str):
    pytest.importorskip("matplotlib")
    with tempfile.TemporaryDirectory() as folder:
        _invoke("plot", _write(folder, "r.json", text), "--output", Path(folder) / "p.png")
