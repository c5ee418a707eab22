"""Numerics: NaN/Inf weights refused; huge, tiny and overflowing weights never give a finite
wrong bound (overflow -> infinite bound + "overflow" warning, never NaN); --dtype."""
import json
import math

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from onnx_builders import const, model, save
from typer.testing import CliRunner

from lipcheck import api
from lipcheck.cli import app
from lipcheck.errors import BadWeightsError, UserError
from lipcheck.estimators.upper.autolip import autolip, bound_nodes
from lipcheck.graph import Graph, Node, OpKind, ValueInfo
from lipcheck.interpreter import infer_shapes
from lipcheck.numerics import checked_bound, round_up_tiny, safe_rss
from lipcheck.settings import Settings

FAST = api.EstimateOptions(methods=("autolip",), lower_budget=0.0)


def _mlp_onnx(tmp_path, scale1: float, scale2: float, dtype=np.float32):
    """x(1,4) -MatMul w1-> Relu -MatMul w2-> y, weights N(0,1) * scale, stored in `dtype`."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((4, 5)) * scale1).astype(dtype)
    w2 = (rng.standard_normal((5, 3)) * scale2).astype(dtype)
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    m = model(nodes, {"x": [1, 4]}, ["y"], [const("w1", w1, dtype), const("w2", w2, dtype)],
              elem=elem)
    return save(m, tmp_path), w1.astype(np.float64), w2.astype(np.float64)


def _max_jacobian_norm(w1: np.ndarray, w2: np.ndarray, points: int = 200) -> float:
    """max over activation patterns seen at random points of ||W2^T D W1^T||_2 (float64)."""
    rng = np.random.default_rng(1)
    best = 0.0
    for _ in range(points):
        d = (rng.standard_normal(4) @ w1 > 0).astype(np.float64)
        best = max(best, float(np.linalg.norm((w1 * d) @ w2, 2)))
    return best


def _report(path, **settings) -> dict:
    report = api.estimate(str(path), settings=Settings(**settings), options=FAST)
    return json.loads(report.to_json())


@pytest.mark.parametrize("scale", [1e30, 1e-40, 1e-20])
def test_huge_and_denormal_float32_weights_give_a_true_finite_bound(tmp_path, scale):
    path, w1, w2 = _mlp_onnx(tmp_path, scale, scale)
    data = _report(path)
    ub = data["upper_bound"]
    truth = _max_jacobian_norm(w1, w2)
    assert ub["finite"] and ub["certified"] and truth > 0
    assert ub["value"] >= truth
    assert ub["value"] <= np.linalg.norm(w1, 2) * np.linalg.norm(w2, 2) * (1 + 1e-6)
    assert "overflow" not in {w["code"] for w in data["warnings"]}


def test_overflowing_product_is_infinite_with_a_warning(tmp_path):
    path, _, _ = _mlp_onnx(tmp_path, 1e200, 1e200, np.float64)  # product ~1e400 > 1.8e308
    data = _report(path)
    autolip_bound = [b for b in data["bounds"] if b["method"] == "autolip"][0]
    assert autolip_bound["finite"] is False and autolip_bound["value"] is None
    assert data["upper_bound"] is None or data["upper_bound"]["finite"] is False
    overflow = [w for w in data["warnings"] if w["code"] == "overflow"]
    assert overflow and overflow[0]["node"] == "fc2"
    for layer in data["layers"]:  # each layer alone is finite and exact
        assert layer["bound"] is not None and math.isfinite(layer["bound"])


def test_overflow_in_the_cli_is_exit_3_with_one_warning_line(tmp_path):
    path, _, _ = _mlp_onnx(tmp_path, 1e200, 1e200, np.float64)
    result = CliRunner().invoke(app, ["estimate", str(path), "--format", "json",
                                      "--lower-budget", "0.2"])
    assert result.exit_code == 3, result.output
    data = json.loads(result.stdout)  # strict JSON: no NaN or Infinity tokens
    assert "overflow" in {w["code"] for w in data["warnings"]}
    assert data["lower_bound"] is None or data["lower_bound"]["value"] >= 0


def test_subnormal_product_stays_a_positive_upper_bound(tmp_path):
    path, w1, w2 = _mlp_onnx(tmp_path, 1e-160, 1e-160, np.float64)  # true value ~1e-320
    data = _report(path)
    assert data["upper_bound"]["value"] >= _max_jacobian_norm(w1, w2) > 0


def _gemm_graph(weight: torch.Tensor, alpha: float = 1.0) -> Graph:
    g = Graph([ValueInfo("x", (1, weight.shape[1]), weight.dtype)], ["y"],
              [Node("fc", OpKind.GEMM, ["x", "w"], ["y"], {"transB": 1, "alpha": alpha})],
              {"w": weight})
    infer_shapes(g)
    return g


def test_node_whose_own_bound_overflows_is_infinite_not_nan():
    graph = _gemm_graph(torch.full((3, 4), 1e200, dtype=torch.float64), alpha=1e200)
    bounds = bound_nodes(graph, Settings())
    result = autolip(graph, bounds)
    assert result.value == math.inf and not math.isnan(result.value)
    assert [code for code, _ in bounds["fc"].warnings] == ["overflow"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_refused_naming_the_tensor(bad):
    weight = torch.ones(3, 4)
    weight[1, 2] = bad
    with pytest.raises(BadWeightsError, match="'w'"):
        api.estimate(_gemm_graph(weight), options=FAST)


def test_inf_weight_in_onnx_exits_2(tmp_path):
    path, _, _ = _mlp_onnx(tmp_path, 1.0, 1.0)
    w = np.ones((4, 5), np.float32)
    w[0, 0] = np.inf
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["y"], name="fc1")]
    path = save(model(nodes, {"x": [1, 4]}, ["y"], [const("w1", w)]), tmp_path, "inf.onnx")
    result = CliRunner().invoke(app, ["estimate", str(path)])
    assert result.exit_code == 2 and "w1" in result.output and "Traceback" not in result.output


def test_helpers():
    assert checked_bound(math.nan) == (math.inf, True)
    assert checked_bound(-math.inf) == (math.inf, True)
    assert checked_bound(2.5) == (2.5, False)
    assert safe_rss([1e200, 1e200]) == pytest.approx(math.sqrt(2) * 1e200)
    assert round_up_tiny(0.0, True) > 0 and round_up_tiny(0.0, False) == 0.0
    assert round_up_tiny(1.0, True) == 1.0


def test_dtype_float64_gives_the_same_certificates(tmp_path):
    path, _, _ = _mlp_onnx(tmp_path, 1.0, 1.0)
    f32, f64 = _report(path, dtype="float32"), _report(path, dtype="float64")
    # bitwise: --dtype changes only the estimates; the certificates run the same float64 code
    assert f32["upper_bound"]["value"] == f64["upper_bound"]["value"]
    assert f64["settings"]["dtype"] == "float64"
    p32 = _report(path, dtype="float32", layer_method="power")
    p64 = _report(path, dtype="float64", layer_method="power")
    for a, b in zip(p32["layers"], p64["layers"], strict=True):
        assert a["estimate"] == pytest.approx(b["estimate"], rel=1e-5) if b["estimate"] else True
    with pytest.raises(UserError, match="--dtype"):
        api.estimate(str(path), settings=Settings(dtype="float16"), options=FAST)
    result = CliRunner().invoke(app, ["estimate", str(path), "--dtype", "float16"])
    assert result.exit_code == 2 and "--dtype" in result.output


@pytest.mark.parametrize("scale", [1e-100, 1e20, 1e100])
def test_every_method_on_badly_scaled_weights_is_true_or_infinite(tmp_path, scale):
    """SeqLip/SDP/ECLipsE square layer matrices: at 1e-100 they once certified 0.0 (below
    the true 3.4e-200) and at 1e20..1e100 they crashed. Now: every certified value >= truth."""
    path, w1, w2 = _mlp_onnx(tmp_path, scale, scale, np.float64)
    report = api.estimate(str(path), options=api.EstimateOptions(lower_budget=0.2))
    truth = _max_jacobian_norm(w1, w2)
    for bound in report.bounds:
        assert not math.isnan(bound.value), bound.method
        if bound.certified and bound.kind == "upper":
            assert bound.value >= truth, (bound.method, bound.value, truth)
    if report.lower_bound is not None:
        assert report.lower_bound.value <= min(b.value for b in report.bounds if b.certified)
