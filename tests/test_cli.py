"""The CLI: outputs, the JSON contract, and one clean line + exit code for every user error."""
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from lipcheck.cli import app
from lipcheck.report import load_schema

runner = CliRunner()


def _mlp_onnx(path: Path, w1: np.ndarray | None = None, extra_nodes=(), dims=(1, 4),
              output="y") -> Path:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 5)).astype(np.float32) if w1 is None else w1
    w2 = rng.standard_normal((5, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"), *extra_nodes]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_estimate_table(tmp_path):
    result = invoke("estimate", _mlp_onnx(tmp_path / "m.onnx"), "--lower-budget", "0.5")
    assert result.exit_code == 0, result.output
    assert "fc1" in result.output and "certified" in result.output
    assert "NP-hard" in result.output


def test_json_report_follows_schema_and_is_tight(tmp_path):
    model = _mlp_onnx(tmp_path / "m.onnx")
    out = tmp_path / "r.json"
    result = invoke("estimate", model, "--json", out, "--quiet", "--lower-budget", "0.5")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    jsonschema.validate(data, load_schema())
    assert data["upper_bound"]["certified"] is True
    w = [numpy_helper.to_array(t) for t in onnx.load(model).graph.initializer]
    product = np.linalg.norm(w[0], 2) * np.linalg.norm(w[1], 2)
    autolip = [b for b in data["bounds"] if b["method"] == "autolip"][0]
    assert autolip["value"] == pytest.approx(product, rel=1e-6)
    assert data["upper_bound"]["value"] <= product * (1 + 1e-6)
    assert {"name", "op", "input_shape", "output_shape", "bound", "method", "certified",
            "iterations", "converged"} <= set(data["layers"][0])
    if data["lower_bound"] is not None:
        assert data["lower_bound"]["value"] <= data["upper_bound"]["value"]


def test_format_json_and_markdown(tmp_path):
    model = _mlp_onnx(tmp_path / "m.onnx")
    result = invoke("estimate", model, "--format", "json", "--lower-budget", "0")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["schema_version"].startswith("1.")
    result = invoke("estimate", model, "--format", "markdown", "--lower-budget", "0")
    assert result.exit_code == 0 and "| node | op |" in result.stdout


def _error(result, code: int, words: str) -> None:
    assert result.exit_code == code, result.output
    assert words in result.output, result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) <= 2


def test_missing_file(tmp_path):
    _error(invoke("estimate", tmp_path / "nope.onnx"), 2, "nope.onnx")


def test_directory(tmp_path):
    _error(invoke("estimate", tmp_path), 2, "error")


def test_not_a_model(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    _error(invoke("estimate", path), 2, "error")


def test_truncated_model(tmp_path):
    path = _mlp_onnx(tmp_path / "m.onnx")
    path.write_bytes(path.read_bytes()[:60])
    _error(invoke("estimate", path), 2, "error")


def test_nan_weights(tmp_path):
    w1 = np.full((4, 5), np.nan, dtype=np.float32)
    _error(invoke("estimate", _mlp_onnx(tmp_path / "m.onnx", w1=w1)), 2, "w1")


def test_dynamic_dims_need_input_shape(tmp_path):
    path = _mlp_onnx(tmp_path / "m.onnx", dims=("batch", "features"))
    _error(invoke("estimate", path), 2, "--input-shape")
    result = invoke("estimate", path, "--input-shape", "1,4", "--lower-budget", "0", "-q")
    assert result.exit_code == 0, result.output


def test_input_shape_that_does_not_fit(tmp_path):
    path = _mlp_onnx(tmp_path / "m.onnx", dims=("batch", "features"))
    _error(invoke("estimate", path, "--input-shape", "1,7"), 2, "error")
    _error(invoke("estimate", path, "--input-shape", "1,x"), 2, "--input-shape")


def test_unbounded_op_exits_3(tmp_path):
    exp = helper.make_node("Exp", ["y"], ["z"], name="the_exp")
    path = _mlp_onnx(tmp_path / "m.onnx", extra_nodes=[exp], output="z")
    result = invoke("estimate", path, "--lower-budget", "0")
    assert result.exit_code == 3, result.output
    assert "the_exp" in result.output


def test_unknown_ops_are_listed_together(tmp_path):
    nodes = [helper.make_node("FancyOp", ["y"], ["z"], name="f1"),
             helper.make_node("OtherOp", ["z"], ["u"], name="o1")]
    path = _mlp_onnx(tmp_path / "m.onnx", extra_nodes=nodes, output="u")
    result = invoke("estimate", path)
    _error(result, 2, "FancyOp")
    assert "OtherOp" in result.output


def test_external_data_outside_folder(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path = _mlp_onnx(model_dir / "m.onnx")
    model = onnx.load(path)
    init = model.graph.initializer[0]
    init.data_location = TensorProto.EXTERNAL
    del init.external_data[:]
    init.external_data.add(key="location", value="../secret.bin")
    init.ClearField("raw_data")
    (tmp_path / "secret.bin").write_bytes(np.zeros(20, np.float32).tobytes())
    onnx.save(model, path)
    _error(invoke("estimate", path), 2, "error")


def test_pickled_module_needs_unsafe_pickle(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3)), path)
    _error(invoke("estimate", path, "--input-shape", "1,4"), 2, "--unsafe-pickle")
    result = invoke("estimate", path, "--input-shape", "1,4", "--unsafe-pickle", "-q",
                    "--lower-budget", "0")
    assert result.exit_code == 0, result.output


def test_bad_options(tmp_path):
    model = _mlp_onnx(tmp_path / "m.onnx")
    _error(invoke("estimate", model, "--layer-method", "magic"), 2, "--layer-method")
    _error(invoke("estimate", model, "--method", "magic"), 2, "--method")
    _error(invoke("estimate", model, "--input-range", "1,0"), 2, "--input-range")


def test_python_dash_m_runs_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lipcheck", "estimate", str(tmp_path / "x.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "x.onnx" in proc.stderr
