"""The first five minutes: fast user errors, --version, one-way CLI imports, the progress line."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lipcheck.cli_progress import PhaseClock

ROOT = Path(__file__).resolve().parents[1]

# Runs the CLI in a fresh interpreter and reports what was imported and how long main() took
# (the interpreter's own start-up is not counted: it is the same for every command).
PROBE = """
import json, sys, time
sys.argv = ["lipcheck"] + json.loads(sys.argv[1])
start = time.perf_counter()
from lipcheck.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "seconds": time.perf_counter() - start,
                  "torch": "torch" in sys.modules, "numpy": "numpy" in sys.modules}))
"""


def probe(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps([str(a) for a in args])],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "stderr": proc.stderr}


def _model(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not read: an option is wrong first")
    return path


@pytest.mark.parametrize("case", ["missing", "directory", "bad-method", "bad-layer-method",
                                  "bad-range", "bad-shape", "bad-device", "json-folder",
                                  "arch-file", "check-baseline", "check-data"])
def test_user_errors_come_before_torch_is_imported(tmp_path, case) -> None:
    model = _model(tmp_path)
    args, words = {
        "missing": (["estimate", tmp_path / "nope.onnx"], "nope.onnx: no such file"),
        "directory": (["estimate", tmp_path], "is a directory"),
        "bad-method": (["estimate", model, "--method", "magic"], "--method"),
        "bad-layer-method": (["estimate", model, "--layer-method", "magic"], "--layer-method"),
        "bad-range": (["estimate", model, "--input-range", "1,0"], "--input-range"),
        "bad-shape": (["estimate", model, "--input-shape", "1,a"], "--input-shape"),
        "bad-device": (["estimate", model, "--device", "tpu"], "--device"),
        "json-folder": (["estimate", model, "--json", tmp_path / "no" / "r.json"], "--json"),
        "arch-file": (["estimate", model, "--arch", "net.py:make"], "no file net.py"),
        "check-baseline": (["check", model, "--baseline", tmp_path / "old.json"], "--baseline"),
        "check-data": (["check", model, "--data", tmp_path / "val.npz"], "--data"),
    }[case]
    out = probe(*args)
    assert out["code"] == 2 and words in out["stderr"], out
    assert not out["torch"] and not out["numpy"], f"{case}: heavy imports before the check"
    # torch alone takes seconds to import; the check itself is milliseconds. The 0.5 s goal
    # holds on an idle machine; 3 s leaves room for a loaded CI box and still fails on torch.
    assert out["seconds"] < 3.0, out


def test_help_and_version_are_light() -> None:
    for args in (["--help"], ["--version"], ["estimate", "--help"], ["check", "--help"]):
        out = probe(*args)
        assert out["code"] == 0 and not out["torch"], (args, out)
        assert out["seconds"] < 3.0, (args, out)


def test_version_flag_prints_the_package_version() -> None:
    from lipcheck import __version__
    proc = subprocess.run([sys.executable, "-m", "lipcheck", "--version"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == f"lipcheck {__version__}"


def _imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / "lipcheck" / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_cli_modules_depend_one_way() -> None:
    """cli -> cli_gate -> cli_base: no module imports one that imports it."""
    assert "lipcheck.cli" not in _imports("cli_gate")
    assert not {"lipcheck.cli", "lipcheck.cli_gate"} & _imports("cli_base")
    assert "lipcheck.cli_gate" in _imports("cli")   # the test sees the import it checks


class FakeTime:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_progress_names_the_phase_with_elapsed_and_budget_left() -> None:
    now = FakeTime()
    clock = PhaseClock({"global methods": 60.0, "lower-bound search": 10.0}, timeout=120.0,
                       now=now)
    clock.enter("loading")
    now.t += 1.5
    assert clock.text() == "loading · 1.5s · run 1.5s, 118s left"
    clock.enter("per-layer bounds", 8)
    clock.node_done("/0/Conv")
    clock.node_done("/2/Relu")
    now.t += 0.5
    assert clock.text().startswith("per-layer bounds 2/8 (/2/Relu) · 0.5s · run 2.0s")
    clock.enter("lower-bound search")
    now.t += 2.0
    assert clock.text() == "lower-bound search · 2.0s, 8.0s of 10s left · run 4.0s, 116s left"
    now.t += 30
    assert "0.0s of 10s left" in clock.text()   # over the cap: never a negative budget


def test_estimate_announces_each_phase_in_order() -> None:
    from graphs import mlp

    from lipcheck.api import EstimateOptions, estimate
    from lipcheck.graph import OpKind
    graph = mlp([4, 6, 2], OpKind.RELU, seed=1)
    phases, nodes = [], []
    estimate(graph, options=EstimateOptions(methods=("autolip",), lower_budget=1.0,
                                            lower_rounds=1),
             progress=lambda node: nodes.append(node.name),
             on_phase=lambda name, count: phases.append((name, count)))
    assert phases == [("loading", None), ("per-layer bounds", len(graph.nodes)),
                      ("global methods", None), ("lower-bound search", None)]
    assert len(nodes) == len(graph.nodes)
    phases.clear()
    estimate(graph, options=EstimateOptions(methods=("autolip",), lower_budget=0),
             on_phase=lambda name, count: phases.append(name))
    assert phases == ["loading", "per-layer bounds", "global methods"]
