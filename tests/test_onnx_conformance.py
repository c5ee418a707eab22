"""The real graphs that ship with the onnx package: every model loads and reproduces its
reference output, or fails with a lipcheck error (never another exception)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from lipcheck.errors import LipcheckError
from lipcheck.interpreter import run_graph
from lipcheck.loaders.onnx_loader import load_onnx

DATA = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data"
CONVERTED = sorted((DATA / "pytorch-converted").glob("*/model.onnx"))
LIGHT = sorted(p for p in (DATA / "light").glob("*.onnx"))
MAX_LIGHT_BYTES = 30 * 1024**2


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
