"""Untrusted files: no pickle runs without --unsafe-pickle, ONNX external data stays in the
model's folder, size and node-count limits, and --timeout stops a run cleanly."""
import os
import pickle
import signal
import threading
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from onnx_builders import const, model, save
from typer.testing import CliRunner

from lipcheck import api, limits
from lipcheck.cli import app
from lipcheck.errors import ModelLoadError, UnsafeFileError
from lipcheck.settings import Settings

runner = CliRunner()


class Payload:
    """Unpickling this creates the marker file: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _error(args, words: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output, result.output
    return result.output


def _malicious_files(tmp_path: Path, marker: Path) -> list[Path]:
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps(Payload(marker)))
    zipped = tmp_path / "model.pt"
    torch.save(Payload(marker), zipped)
    state = tmp_path / "weights.bin"
    torch.save({"w": torch.ones(2), "evil": Payload(marker)}, state)
    return [legacy, zipped, state]


def test_pickles_never_run_without_unsafe_pickle(tmp_path):
    marker = tmp_path / "PWNED"
    for path in _malicious_files(tmp_path, marker):
        _error(["estimate", path, "--input-shape", "1,2"], "error")
        _error(["estimate", path, "--input-shape", "1,2", "--arch", "torch.nn:Identity"],
               "error")
        assert not marker.exists(), f"{path.name} ran code"


def test_a_pickle_under_another_extension_is_not_unpickled(tmp_path):
    marker = tmp_path / "PWNED"
    for name in ("model.onnx", "model.pt2", "model.safetensors"):
        path = tmp_path / name
        torch.save(Payload(marker), path)
        _error(["estimate", path, "--input-shape", "1,2"], "error")
        assert not marker.exists(), f"{name} ran code"


def test_unsafe_pickle_is_the_only_way_and_says_so(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "model.pt"
    torch.save(Payload(marker), path)
    runner.invoke(app, ["estimate", str(path), "--input-shape", "1,2", "--unsafe-pickle"])
    assert marker.exists()  # the control: this payload does run when allowed


def _mlp(folder: Path) -> Path:
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["y"], name="fc1")]
    return save(model(nodes, {"x": [1, 4]}, ["y"], [const("w1", np.ones((4, 3)))]), folder)


def _external(path: Path, location: str) -> Path:
    m = onnx.load(str(path))
    init = m.graph.initializer[0]
    init.data_location = TensorProto.EXTERNAL
    del init.external_data[:]
    init.external_data.add(key="location", value=location)
    init.ClearField("raw_data")
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("where", ["traversal", "absolute", "symlink", "symlinked_dir"])
def test_external_data_may_not_escape_the_folder(tmp_path, where):
    inside, outside = tmp_path / "model", tmp_path / "secret"
    inside.mkdir(), outside.mkdir()
    secret = outside / "w.bin"
    secret.write_bytes(np.ones(12, np.float32).tobytes())
    location = {"traversal": "../secret/w.bin", "absolute": str(secret),
                "symlink": "link.bin", "symlinked_dir": "sub/w.bin"}[where]
    if where == "symlink":
        (inside / "link.bin").symlink_to(secret)
    if where == "symlinked_dir":
        (inside / "sub").symlink_to(outside)
    path = _external(_mlp(inside), location)
    with pytest.raises(UnsafeFileError):
        api.load(str(path))
    _error(["estimate", path], "unsafe_file")


def test_external_data_inside_the_folder_loads(tmp_path):
    path = _mlp(tmp_path)
    (tmp_path / "w.bin").write_bytes(np.full(12, 2.0, np.float32).tobytes())
    graph = api.load(str(_external(path, "w.bin")))
    assert float(next(iter(graph.constants.values())).sum()) == 24.0


def test_size_and_node_limits_give_one_clear_line(tmp_path, monkeypatch):
    path = _mlp(tmp_path)
    monkeypatch.setattr(limits, "MAX_MODEL_BYTES", 10)
    out = _error(["estimate", path], "bytes, more than the")
    assert str(path.stat().st_size) in out
    torch_file = tmp_path / "w.pt"
    torch.save({"w": torch.ones(100)}, torch_file)
    with pytest.raises(ModelLoadError, match="more than the limit"):
        api.load(str(torch_file), [(1, 2)])
    monkeypatch.undo()
    monkeypatch.setattr(limits, "MAX_NODES", 0)
    _error(["estimate", path], "1 nodes, more than the limit of 0")


def _slow_graph_path(tmp_path: Path) -> Path:
    nodes, x = [], "x"
    for i in range(60):  # 60 exact SVDs of 64x64: well over the timeouts below
        nodes.append(helper.make_node("Gemm", [x, f"w{i}"], [f"h{i}"], name=f"fc{i}"))
        x = f"h{i}"
    inits = [const(f"w{i}", np.eye(64) * 0.5) for i in range(60)]
    return save(model(nodes, {"x": [1, 64]}, [x], inits), tmp_path)


def test_timeout_stops_the_cli_with_one_line(tmp_path):
    path = _slow_graph_path(tmp_path)
    before = signal.getsignal(signal.SIGALRM)
    result = runner.invoke(app, ["estimate", str(path), "--timeout", "0.001"])
    assert result.exit_code == 2, result.output
    assert "--timeout 0.001 s" in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
    assert signal.getsignal(signal.SIGALRM) == before
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
    _error(["estimate", path, "--timeout", "-1"], "--timeout")
    ok = runner.invoke(app, ["estimate", str(path), "--timeout", "120", "--method", "autolip",
                             "--lower-budget", "0", "-q"])
    assert ok.exit_code == 0, ok.output


def test_timeout_off_the_main_thread_uses_the_node_deadline(tmp_path):
    path = _slow_graph_path(tmp_path)
    caught: list[BaseException] = []

    def run() -> None:
        try:
            api.estimate(str(path), settings=Settings(timeout=0.001),
                         options=api.EstimateOptions(methods=("autolip",), lower_budget=0))
        except BaseException as exc:  # noqa: BLE001
            caught.append(exc)
    worker = threading.Thread(target=run)
    worker.start()
    worker.join(60)
    assert len(caught) == 1 and isinstance(caught[0], limits.RunTimeout), caught
    assert "last node bounded: 'fc0'" in str(caught[0])


def test_pt2_and_torchscript_need_their_own_loader(tmp_path):
    """A zip that looks like a TorchScript or .pt2 archive but is not one fails cleanly."""
    fake = tmp_path / "fake.pt2"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr("fake/archive_format", "pt2")
    _error(["estimate", fake], "error")
