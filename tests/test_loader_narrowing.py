"""Edge cases the type checker found in the loaders: a one-output Split, arguments of the
wrong kind, required ONNX inputs that are absent. Each is lowered right or refused with a
clear UnsupportedOpsError, never a crash or a "converter bug"."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.fx as fx
from onnx import helper
from onnx_builders import const, model, save
from torch import nn

from lipcheck.errors import UnsupportedOpsError
from lipcheck.graph import OpKind
from lipcheck.interpreter import run_graph
from lipcheck.loaders.onnx_loader import load_onnx
from lipcheck.loaders.torch_loader import load_module
from lipcheck.loaders.torch_lowering import Unsupported, as_int, as_ints, as_node


class OneChunk(nn.Module):
    """torch.split into a single chunk: the FX graph reads output 0 of a one-output split."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (part,) = torch.split(self.fc(x), 8, dim=1)
        return torch.relu(part)


def test_split_into_one_chunk_lowers_and_matches_torch() -> None:
    torch.manual_seed(0)
    net = OneChunk().eval()
    graph = load_module(net, [(3, 4)])
    assert [n.op for n in graph.nodes] == [OpKind.GEMM, OpKind.SPLIT, OpKind.RELU]
    x = torch.randn(3, 4)
    got = run_graph(graph, {graph.inputs[0].name: x})[graph.outputs[0]]
    torch.testing.assert_close(got, net(x))


class UnbatchedAdaptivePool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(x, (3, 3))


def test_adaptive_pool_without_batch_axis_is_refused() -> None:
    with pytest.raises(UnsupportedOpsError, match="without a batch axis"):
        load_module(UnbatchedAdaptivePool().eval(), [(2, 6, 6)])


def test_fx_argument_helpers_narrow_or_refuse() -> None:
    graph = fx.Graph()
    node = graph.placeholder("x")
    assert as_node(node) is node
    assert as_int(3) == 3 and as_ints((1, -2)) == [1, -2]
    for bad, helper_fn in ((3, as_node), (node, as_int), (2.5, as_int), (4, as_ints),
                           ([1, "a"], as_ints)):
        with pytest.raises(Unsupported):
            helper_fn(bad)


def test_resize_without_scales_or_sizes_is_refused(tmp_path: Path) -> None:
    node = helper.make_node("Resize", ["x"], ["y"], mode="nearest")
    with pytest.raises(UnsupportedOpsError, match="scales"):
        load_onnx(save(model([node], {"x": (1, 2, 4, 4)}, ["y"], opset=13), tmp_path))


def test_reshape_with_absent_shape_input_is_refused(tmp_path: Path) -> None:
    node = helper.make_node("Reshape", ["x", ""], ["y"])
    with pytest.raises(UnsupportedOpsError, match="required input 1"):
        load_onnx(save(model([node], {"x": (2, 6)}, ["y"]), tmp_path))


def test_pad_with_absent_pads_input_is_refused(tmp_path: Path) -> None:
    node = helper.make_node("Pad", ["x", "", "v"], ["y"])
    m = model([node], {"x": (2, 6)}, ["y"], [const("v", 0.0)])
    with pytest.raises(UnsupportedOpsError, match="required input 1"):
        load_onnx(save(m, tmp_path))
