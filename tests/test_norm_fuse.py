"""Written-out Layer/RMS norms (ONNX before opset 17, user code in torch) fuse into one
normalisation node that runs like the original and gets the exact, finite constant."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from onnx import helper
from onnx_builders import const, model
from test_onnx_loader import check
from torch import nn

from lipcheck.graph import OpKind
from lipcheck.interpreter import run_graph
from lipcheck.loaders.torch_loader import load_module
from lipcheck.rules import BoundContext, get_rule
from lipcheck.settings import Settings

EPS = 1e-5
N = helper.make_node


def _layer_norm_nodes(axes: list[int], square: str = "Pow") -> list:
    squared = N("Pow", ["d", "two"], ["sq"]) if square == "Pow" else N("Mul", ["d", "d"], ["sq"])
    return [N("ReduceMean", ["x"], ["m"], axes=axes), N("Sub", ["x", "m"], ["d"]), squared,
            N("ReduceMean", ["sq"], ["v"], axes=axes), N("Add", ["v", "eps"], ["ve"]),
            N("Sqrt", ["ve"], ["s"]), N("Div", ["d", "s"], ["n"]),
            N("Mul", ["n", "g"], ["y"])]


def _rms_nodes() -> list:
    return [N("Pow", ["x", "two"], ["sq"]), N("ReduceMean", ["sq"], ["v"], axes=[-1]),
            N("Add", ["v", "eps"], ["ve"]), N("Sqrt", ["ve"], ["s"]),
            N("Reciprocal", ["s"], ["r"]), N("Mul", ["x", "r"], ["n"]), N("Mul", ["n", "g"], ["y"])]


INITS = [const("two", 2.0), const("eps", EPS), const("g", [1.0, -2.0, 0.5, 3.0])]


def _bounds(graph) -> dict[OpKind, float]:
    ctx = BoundContext(graph, Settings())
    return {n.op: get_rule(n.op).bound(n, ctx).value for n in graph.nodes}


@pytest.mark.parametrize("nodes, op", [
    (_layer_norm_nodes([-1]), OpKind.LAYER_NORM),
    (_layer_norm_nodes([1, 2], square="Mul"), OpKind.LAYER_NORM),
    (_rms_nodes(), OpKind.RMS_NORM),
])
def test_written_out_onnx_norms_fuse(nodes: list, op: OpKind, tmp_path: Path) -> None:
    graph = check(model(nodes, {"x": (2, 3, 4)}, ["y"], INITS, opset=13), tmp_path)
    assert [n.op for n in graph.nodes] == [op, OpKind.MUL]
    bounds = _bounds(graph)
    assert bounds[op] == pytest.approx(1 / math.sqrt(EPS))  # unit scale, exact


def test_axes_that_are_not_trailing_do_not_fuse(tmp_path: Path) -> None:
    graph = check(model(_layer_norm_nodes([1]), {"x": (2, 3, 4)}, ["y"], INITS, opset=13),
                  tmp_path)
    assert OpKind.LAYER_NORM not in {n.op for n in graph.nodes}
    assert math.isinf(_bounds(graph)[OpKind.POW])


def test_an_intermediate_with_another_consumer_does_not_fuse(tmp_path: Path) -> None:
    m = model(_layer_norm_nodes([-1]), {"x": (2, 3, 4)}, ["y", "s"], INITS, opset=13)
    graph = check(m, tmp_path)
    assert OpKind.LAYER_NORM not in {n.op for n in graph.nodes}


class _Written(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x - x.mean(-1, keepdim=True)
        y = d / torch.sqrt((d * d).mean(-1, keepdim=True) + 1e-5)
        return y + x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.w


def test_written_out_torch_norms_fuse() -> None:
    module = _Written()
    graph = load_module(module, [(2, 3, 8)])
    ops = [n.op for n in graph.nodes]
    assert ops[:2] == [OpKind.LAYER_NORM, OpKind.RMS_NORM] and OpKind.POW not in ops
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(run_graph(graph, {graph.inputs[0].name: x})[graph.outputs[0]],
                               module(x))
    assert all(math.isfinite(b) for b in _bounds(graph).values())
