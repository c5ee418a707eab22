"""The robustness gate: exit codes, threshold sources and precedence, baseline drift,
JUnit and Markdown outputs, compare, plot, the pre-commit hook and the CI example."""
import json
import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
import tomllib
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import lipcheck.api as lc
from lipcheck.cli import app
from lipcheck.errors import UserError
from lipcheck.gate.thresholds import Thresholds, parse_fraction, resolve_thresholds
from lipcheck.report import load_schema

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "check_summary.md"
FAST = ("--method", "autolip", "--lower-budget", "0")
runner = CliRunner()


def weights(scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((6, 4)).astype(np.float32)
    w2 = (rng.standard_normal((3, 6)) * scale).astype(np.float32)
    return w1, w2


def mlp_onnx(path: Path, scale: float = 1.0, middle: str = "Relu") -> Path:
    """Gemm(4->6) -> middle -> Gemm(6->3), batch 1."""
    w1, w2 = weights(scale)
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1", transB=1),
             helper.make_node(middle, ["h"], ["r"], name="act"),
             helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2", transB=1)]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def conv_onnx(path: Path) -> Path:
    w = np.random.default_rng(0).standard_normal((2, 1, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def lipschitz(scale: float = 1.0) -> float:
    w1, w2 = weights(scale)
    return float(np.linalg.norm(w1.astype(float), 2) * np.linalg.norm(w2.astype(float), 2))


def data_npz(path: Path, n: int = 40) -> Path:
    """Samples labelled by the model itself, with every fifth label wrong."""
    w1, w2 = (w.astype(float) for w in weights())
    x = np.random.default_rng(1).standard_normal((n, 4))
    y = (np.maximum(x @ w1.T, 0) @ w2.T).argmax(1)
    y[::5] = (y[::5] + 1) % 3
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A clean working directory (no config file unless a test writes one)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def check(*args):
    return invoke("check", *args, *FAST)


# ----- exit codes ---------------------------------------------------------------------

def test_exit_0_when_every_threshold_passes(work):
    result = check(mlp_onnx(work / "m.onnx"), "--max-lipschitz", 100, "--max-layer", 100)
    assert result.exit_code == 0, result.output
    assert "lipcheck check: PASS (exit 0)" in result.stdout
    assert re.search(r"PASS  max-lipschitz\s+value \S+ <= limit 100", result.stdout)
    for node in ("fc1", "act", "fc2"):
        assert f"PASS  max-layer[{node}]" in result.stdout


def test_exit_1_lists_every_failed_check_with_value_and_limit(work):
    w1, w2 = weights()
    model = mlp_onnx(work / "m.onnx")
    limit = float(np.linalg.norm(w1.astype(float), 2)) * 0.99   # only fc1 (and global) fail
    result = check(model, "--max-lipschitz", 1, "--max-layer", limit)
    assert result.exit_code == 1, result.output
    failed = [line for line in result.stdout.splitlines() if line.startswith("  FAIL")]
    assert len(failed) == 2 + (np.linalg.norm(w2.astype(float), 2) > limit)
    assert f"value {lipschitz():.6g} > limit 1" in result.stdout
    assert re.search(r"FAIL  max-layer\[fc1\]\s+value [\d.]+ > limit", result.stdout)
    assert "PASS  max-layer[act]" in result.stdout


@pytest.mark.parametrize("args, words", [
    (["missing.onnx"], "missing.onnx"),
    (["{model}", "--max-increase", "ten"], "--max-increase 'ten'"),
    (["{model}", "--max-increase", "10%"], "--max-increase needs --baseline"),
    (["{model}", "--min-certified-accuracy", "0.5"], "needs --eps and --data"),
    (["{model}", "--eps", "-1"], "--eps -1.0"),
    (["{model}", "--baseline", "nothere.json"], "nothere.json"),
    (["{model}", "--data", "nothere.npz"], "nothere.npz"),
    (["{model}", "--config", "nothere.toml"], "nothere.toml"),
])
def test_exit_2_user_errors_are_one_line(work, args, words):
    model = mlp_onnx(work / "m.onnx")
    result = check(*[a.format(model=model) for a in args])
    assert result.exit_code == 2, result.output
    assert words in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_exit_3_no_finite_bound_wins_over_failures(work):
    model = mlp_onnx(work / "m.onnx", middle="Exp")
    junit = work / "j.xml"
    result = check(model, "--max-lipschitz", 1, "--junit", junit)
    assert result.exit_code == 3, result.output
    assert "FAIL  finite-bound" in result.stdout and "act" in result.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    names = {case.get("name") for case in suite.iter("testcase")
             if case.find("failure") is not None}
    assert names == {"finite-bound", "max-lipschitz"}


def test_require_certified(work):
    model = conv_onnx(work / "c.onnx")
    power = ("--layer-method", "power")
    estimate_only = check(model, *power, "--max-lipschitz", 100)
    assert estimate_only.exit_code == 0, estimate_only.output
    assert "(estimate, not certified)" in estimate_only.stdout
    strict = check(model, *power, "--require-certified")
    assert strict.exit_code == 1
    assert "FAIL  require-certified" in strict.stdout
    assert check(model, "--require-certified").exit_code == 0


# ----- threshold sources ----------------------------------------------------------------

def test_fractions_and_percentages():
    assert parse_fraction("10%", "x") == pytest.approx(0.1)
    assert parse_fraction("0.1", "x") == pytest.approx(0.1)
    assert parse_fraction(0.25, "x") == 0.25 and parse_fraction(None, "x") is None
    with pytest.raises(UserError, match="'1/10'"):
        parse_fraction("1/10", "--max-increase")


def test_pyproject_is_read_and_options_win(work):
    model = mlp_onnx(work / "m.onnx")
    (work / "pyproject.toml").write_text("[project]\nname='x'\n[tool.lipcheck]\n"
                                         "max-lipschitz = 1.0\n")
    from_file = check(model)
    assert from_file.exit_code == 1 and "limit 1" in from_file.stdout
    assert check(model, "--max-lipschitz", 100).exit_code == 0
    assert check(model, "--no-config").exit_code == 0


def test_lipcheck_toml_comes_before_pyproject(work):
    model = mlp_onnx(work / "m.onnx")
    (work / "pyproject.toml").write_text("[tool.lipcheck]\nmax-lipschitz = 1.0\n")
    (work / "lipcheck.toml").write_text("max-lipschitz = 100.0\nrequire-certified = true\n")
    result = check(model)
    assert result.exit_code == 0, result.output
    assert "limit 100" in result.stdout and "require-certified" in result.stdout


def test_explicit_config_replaces_the_files_in_the_folder(work):
    model = mlp_onnx(work / "m.onnx")
    (work / "lipcheck.toml").write_text("max-lipschitz = 1.0\n")
    other = work / "ci" / "gate.toml"
    other.parent.mkdir()
    other.write_text("[tool.lipcheck]\nmax-layer = 0.5\n")
    result = check(model, "--config", other)
    assert result.exit_code == 1
    assert "max-layer[fc1]" in result.stdout and "max-lipschitz" not in result.stdout


def test_config_paths_are_relative_to_the_config_file(work):
    model = mlp_onnx(work / "m.onnx")
    (work / "ci").mkdir()
    data_npz(work / "ci" / "val.npz")
    (work / "ci" / "gate.toml").write_text('data = "val.npz"\neps = 0.05\n'
                                           'min-certified-accuracy = "1%"\n')
    result = check(model, "--config", work / "ci" / "gate.toml")
    assert result.exit_code == 0, result.output
    assert "min-certified-accuracy[eps=0.05]" in result.stdout


@pytest.mark.parametrize("text, words", [
    ("max-lipshitz = 1.0\n", "unknown key(s) max-lipshitz"),
    ("max-lipschitz = 'big'\n", "expected a number"),
    ("require-certified = 'yes'\n", "true or false"),
    ("max-lipschitz = \n", "not valid TOML"),
])
def test_bad_config_exits_2(work, text, words):
    (work / "lipcheck.toml").write_text(text)
    result = check(mlp_onnx(work / "m.onnx"))
    assert result.exit_code == 2 and words in result.output, result.output


def test_resolve_precedence_key_by_key(work):
    (work / "lipcheck.toml").write_text("max-lipschitz = 1.0\nmax-layer = 2.0\n")
    resolved = resolve_thresholds(Thresholds(max_layer=5.0), cwd=work)
    assert resolved.max_lipschitz == 1.0 and resolved.max_layer == 5.0


# ----- baseline ---------------------------------------------------------------------------

def _baseline(work: Path) -> Path:
    result = invoke("estimate", mlp_onnx(work / "old.onnx"), "--json", work / "base.json",
                    "--quiet", *FAST)
    assert result.exit_code == 0, result.output
    return work / "base.json"


def test_baseline_increase_fails_and_decrease_passes(work):
    base = _baseline(work)
    grown = check(mlp_onnx(work / "up.onnx", scale=1.2), "--baseline", base,
                  "--max-increase", "10%")
    assert grown.exit_code == 1, grown.output
    limit = lipschitz() * 1.1
    assert re.search(rf"FAIL  max-increase\s+value {lipschitz(1.2):.6g} > limit {limit:.6g}",
                     grown.stdout)
    assert "FAIL  max-increase[fc2]" in grown.stdout
    assert "PASS  max-increase[fc1]" in grown.stdout      # the first layer did not change
    shrunk = check(mlp_onnx(work / "down.onnx", scale=0.8), "--baseline", base,
                   "--max-increase", "0.1", "--json", work / "r.json")
    assert shrunk.exit_code == 0, shrunk.output
    comparison = json.loads((work / "r.json").read_text())["check"]["comparison"]
    assert comparison["global"]["relative"] == pytest.approx(-0.2, rel=1e-5)
    fc2 = [c for c in comparison["layers"] if c["name"] == "fc2"][0]
    assert fc2["relative"] == pytest.approx(-0.2, rel=1e-5)
    # within the allowance: +5% passes a 10% gate
    assert check(mlp_onnx(work / "m5.onnx", scale=1.05), "--baseline", base,
                 "--max-increase", "10%").exit_code == 0


def test_compare_command(work):
    base = _baseline(work)
    invoke("estimate", mlp_onnx(work / "up.onnx", scale=1.2), "--json", work / "new.json",
           "--quiet", *FAST)
    result = invoke("compare", base, work / "new.json")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert set(rows) == {"global", "fc1", "act", "fc2"}
    assert "+20.00%" in rows["global"] and "+20.00%" in rows["fc2"]
    assert "unchanged" in rows["fc1"]
    gated = invoke("compare", base, work / "new.json", "--max-increase", "10%")
    assert gated.exit_code == 1 and "FAIL  max-increase[fc2]" in gated.stdout
    assert invoke("compare", base, work / "nothere.json").exit_code == 2


# ----- outputs -------------------------------------------------------------------------

JUNIT_REQUIRED = {"testsuite": {"name", "tests"}, "testcase": {"name", "classname"},
                  "failure": {"message", "type"}, "property": {"name", "value"}}


def _junit_is_structurally_valid(root: ET.Element) -> None:
    """The required attributes and child order of the common (Jenkins junit-10.xsd) schema."""
    assert root.tag == "testsuites"
    for element in root.iter():
        assert JUNIT_REQUIRED.get(element.tag, set()) <= set(element.attrib), element.tag
    for suite in root.iter("testsuite"):
        for key in ("tests", "failures", "errors", "skipped"):
            assert int(suite.get(key)) >= 0
        float(suite.get("time"))
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", suite.get("timestamp"))
        tags = [child.tag for child in suite]
        assert tags == sorted(tags, key=["properties", "testcase"].index)


def test_junit_parsed_back(work):
    model = mlp_onnx(work / "m.onnx")
    junit = work / "out" / "lipcheck.xml"
    junit.parent.mkdir()
    result = check(model, "--max-lipschitz", 1, "--max-layer", 100, "--junit", junit,
                   "--json", work / "r.json")
    assert result.exit_code == 1
    root = ET.parse(junit).getroot()
    _junit_is_structurally_valid(root)
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    checks = json.loads((work / "r.json").read_text())["check"]["checks"]
    assert suite.get("name") == "lipcheck"
    assert int(suite.get("tests")) == len(cases) == len(checks) == 5  # finite + global + 3 layers
    failures = [c for c in cases if c.find("failure") is not None]
    assert int(suite.get("failures")) == len(failures) == 1
    message = failures[0].find("failure").get("message")
    assert failures[0].get("name") == "max-lipschitz"
    value, limit = map(float, re.fullmatch(r"value (\S+) > limit (\S+)", message).groups())
    assert value == pytest.approx(lipschitz(), rel=1e-5) and limit == 1


def test_json_output_keeps_the_report_schema(work):
    result = check(mlp_onnx(work / "m.onnx"), "--max-lipschitz", 100, "--data",
                   data_npz(work / "val.npz"), "--eps", 0.1, "--json", work / "r.json")
    assert result.exit_code == 0, result.output
    data = json.loads((work / "r.json").read_text())
    jsonschema.validate(data, load_schema())
    assert data["check"]["status"] == "pass" and data["check"]["exit_code"] == 0
    robustness = data["check"]["robustness"]
    assert len(robustness["radii"]) == 40 and robustness["certified"] is True


def _normalised(text: str) -> str:
    return re.sub(r"<sub>lipcheck .*</sub>", "<sub>lipcheck VERSION, TIME</sub>", text)


def test_markdown_summary_matches_golden(work):
    base = _baseline(work)
    markdown = work / "summary.md"
    result = check(mlp_onnx(work / "model.onnx", scale=1.2), "--baseline", base,
                   "--max-increase", "10%", "--max-lipschitz", 100, "--data",
                   data_npz(work / "val.npz"), "--eps", 0.1, "--min-certified-accuracy", "50%",
                   "--markdown", markdown)
    assert result.exit_code == 1, result.output
    text = _normalised(markdown.read_text())
    if os.environ.get("LIPCHECK_REGEN_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_the_data_line_names_the_margin_stages_only_while_they_could_add_samples(work):
    model, data = mlp_onnx(work / "model.onnx", scale=1.2), data_npz(work / "val.npz")
    plain = check(model, "--data", data, "--eps", 0.1)
    # the golden case: clean 80.00 % and certified 67.50 % of 40 samples, so 5 are left
    assert "5 correctly classified samples are not certified: --bab-domains" in plain.output
    staged = check(model, "--data", data, "--eps", 0.1, "--bab-domains", 5)
    assert staged.exit_code == 0, staged.output
    assert "correctly classified samples are not certified" not in staged.output


def test_api_check_mirrors_the_cli(work):
    model = mlp_onnx(work / "m.onnx")
    data = data_npz(work / "val.npz")
    args = ("--max-layer", 3, "--data", data, "--eps", 0.1, "--min-certified-accuracy", 0.5)
    result = check(model, *args, "--json", work / "r.json")
    cli = json.loads((work / "r.json").read_text())["check"]
    verdict = lc.check(str(model), max_layer=3, data=data, eps=0.1, min_certified_accuracy="50%",
                       options=lc.EstimateOptions(methods=("autolip",), lower_budget=0))
    assert verdict.exit_code == result.exit_code == cli["exit_code"]
    assert [c.to_dict() for c in verdict.checks] == cli["checks"]
    assert verdict.robustness.certified_accuracy == cli["robustness"]["certified_accuracy"]
    with pytest.raises(UserError, match="unknown threshold"):
        lc.check(str(model), max_lipshitz=1)


def test_certified_accuracy_gate_on_both_sides_of_the_measured_value(work):
    model, data = mlp_onnx(work / "m.onnx"), data_npz(work / "val.npz")
    verdict = lc.check(str(model), data=data, eps=0.1,
                       options=lc.EstimateOptions(methods=("autolip",), lower_budget=0))
    measured = verdict.robustness.certified_accuracy
    assert 0 < measured < verdict.robustness.clean_accuracy == pytest.approx(0.8)
    common = ("--data", data, "--eps", 0.1, "--min-certified-accuracy")
    assert check(model, *common, measured).exit_code == 0
    assert check(model, *common, measured + 0.01).exit_code == 1


def test_plot(work, monkeypatch):
    model = mlp_onnx(work / "m.onnx")
    check(model, "--data", data_npz(work / "val.npz"), "--eps", 0.1, "--json", work / "r.json")
    result = invoke("plot", work / "r.json", "-o", work / "layers.png")
    assert result.exit_code == 0, result.output
    assert (work / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    missing = invoke("plot", work / "r.json", "-o", work / "again.png")
    assert missing.exit_code == 2 and "lipcheck[plot]" in missing.output


# ----- integration -----------------------------------------------------------------------

def _hook() -> dict[str, str]:
    text = (ROOT / ".pre-commit-hooks.yaml").read_text()
    return dict(re.findall(r"^\s*-?\s*(\w+): (.+)$", text, re.MULTILINE))


def test_pre_commit_hook_entry_is_a_real_command(work):
    hook = _hook()
    assert hook["id"] == "lipcheck-check" and hook["language"] == "python"
    script, command = shlex.split(hook["entry"])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[script] == "lipcheck.cli:main"
    assert command in {c.name or c.callback.__name__ for c in app.registered_commands}
    assert re.search(hook["files"], "models/digits_mlp.onnx")
    model = mlp_onnx(work / "m.onnx")
    (work / "pyproject.toml").write_text("[tool.lipcheck]\nmax-lipschitz = 1.0\n")
    result = invoke(command, model, "--quiet", *FAST)
    assert result.exit_code == 1 and "FAIL  max-lipschitz" in result.stdout


@pytest.mark.slow
def test_github_actions_example_runs_the_tested_command(work):
    workflow = (ROOT / "examples" / "github-actions.yml").read_text()
    lines = re.findall(r"^\s*run: (lipcheck check .*)$", workflow, re.MULTILINE)
    assert len(lines) == 1
    assert re.search(r"^\s*MODEL: models/\S+\.onnx$", workflow, re.MULTILINE)
    mlp_onnx(work / "m.onnx")
    data_npz(work / "val.npz")
    (work / "pyproject.toml").write_text('[tool.lipcheck]\nmax-lipschitz = 100.0\n'
                                         'eps = 0.1\nmin-certified-accuracy = "10%"\n')
    env = {**os.environ, "MODEL": "m.onnx", "DATA": "val.npz", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", "-c", lines[0]], cwd=work, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS  min-certified-accuracy[eps=0.1]" in proc.stdout
    for name in ("lipcheck-junit.xml", "lipcheck.md", "lipcheck.json"):
        assert (work / name).stat().st_size > 0
    _junit_is_structurally_valid(ET.parse(work / "lipcheck-junit.xml").getroot())
