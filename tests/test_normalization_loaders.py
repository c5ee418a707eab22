"""The ONNX and torch front ends lower every normalisation to an IR node that runs like
onnxruntime / torch and gets a finite certified bound."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx_builders import const, one_node
from test_onnx_conformance import DATA
from test_onnx_loader import check
from torch import nn

from lipcheck.graph import OpKind
from lipcheck.interpreter import run_graph
from lipcheck.loaders.onnx_loader import load_onnx
from lipcheck.rules import BoundContext, get_rule
from lipcheck.settings import Settings

X4 = (2, 4, 3, 3)


def _bounds(graph, op: OpKind) -> list[float]:
    ctx = BoundContext(graph, Settings())
    return [get_rule(n.op).bound(n, ctx).value for n in graph.nodes if n.op == op]


ONNX_CASES = {
    "group_norm_18": (lambda: one_node("GroupNormalization", X4, [const("g", [2.0, -1.0]),
                                                                  const("b", [0.5, 0.0])],
                                       opset=18, extra_inputs=["g", "b"], num_groups=2),
                      OpKind.GROUP_NORM),
    "group_norm_21": (lambda: one_node("GroupNormalization", X4, [const("g", [1, 2, 3, 4]),
                                                                  const("b", [0, 1, 0, 1])],
                                       opset=21, extra_inputs=["g", "b"], num_groups=2,
                                       epsilon=1e-3), OpKind.GROUP_NORM),
    "rms_norm_23": (lambda: one_node("RMSNormalization", (2, 3, 4), [const("g", [1, 2, 3, 4])],
                                     opset=23, extra_inputs=["g"], axis=-1), OpKind.RMS_NORM),
    "layer_norm_17": (lambda: one_node("LayerNormalization", (2, 3, 4),
                                       [const("g", np.ones((3, 4))), const("b", [0, 1, 0, 1])],
                                       extra_inputs=["g", "b"], axis=1), OpKind.LAYER_NORM),
    "instance_norm": (lambda: one_node("InstanceNormalization", X4, [const("g", [1, 2, 3, 4]),
                                                                     const("b", [0, 1, 0, 1])],
                                       extra_inputs=["g", "b"], epsilon=1e-3),
                      OpKind.INSTANCE_NORM),
    "lrn": (lambda: one_node("LRN", X4, size=3, alpha=0.1, beta=0.75, bias=2.0), OpKind.LRN),
}


@pytest.mark.parametrize("case", sorted(ONNX_CASES))
def test_onnx_normalisations_run_like_onnxruntime_with_finite_bounds(case: str,
                                                                       tmp_path: Path) -> None:
    build, op = ONNX_CASES[case]
    graph = check(build(), tmp_path, atol=1e-4)
    bounds = _bounds(graph, op)
    assert bounds and all(math.isfinite(b) and b > 0 for b in bounds)


def test_group_norm_18_per_group_scale_becomes_per_channel(tmp_path: Path) -> None:
    build, _ = ONNX_CASES["group_norm_18"]
    graph = check(build(), tmp_path, atol=1e-4)
    (node,) = graph.nodes
    torch.testing.assert_close(graph.constants[node.inputs[1]], torch.tensor([2., 2, -1, -1]))
    # groups of 2 channels x 9 pixels with one scale each: ||g P|| = max |g| = 2
    assert _bounds(graph, OpKind.GROUP_NORM)[0] == pytest.approx(2 / math.sqrt(1e-5))


@pytest.mark.parametrize("name", ["light_bvlc_alexnet", "light_inception_v1"])
def test_bundled_lrn_models_get_finite_lrn_bounds(name: str) -> None:
    graph = load_onnx(DATA / "light" / f"{name}.onnx")
    nodes = [n for n in graph.nodes if n.op == OpKind.LRN]
    for node, bound in zip(nodes, _bounds(graph, OpKind.LRN), strict=True):
        at_zero = float(node.attrs.get("bias", 1.0)) ** -float(node.attrs.get("beta", 0.75))
        assert at_zero <= bound < 1.5 * at_zero  # the Jacobian at x = 0 is k^-beta I
    assert nodes


# ----- torch front end (.pt2 through torch.export) ------------------------------------
class _RMS(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(6, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def _affine(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module.eval()


TORCH_CASES = {
    "group_norm": (lambda: nn.GroupNorm(2, 4), X4, OpKind.GROUP_NORM),
    "instance_norm_affine": (lambda: nn.InstanceNorm2d(4, affine=True), X4, OpKind.INSTANCE_NORM),
    "instance_norm_plain": (lambda: nn.InstanceNorm1d(4), (2, 4, 5), OpKind.INSTANCE_NORM),
    "layer_norm": (lambda: nn.LayerNorm([3, 3]), X4, OpKind.LAYER_NORM),
    "layer_norm_no_affine": (lambda: nn.LayerNorm(3, elementwise_affine=False), X4,
                             OpKind.LAYER_NORM),
    "rms_norm": (_RMS, (2, 3, 6), OpKind.RMS_NORM),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
@pytest.mark.parametrize("decompose", [False, True])
def test_torch_normalisations_lower_and_run_like_torch(case: str, decompose: bool) -> None:
    from lipcheck.loaders.aten_table import TABLE
    from lipcheck.loaders.torch_lowering import lower_program

    build, shape, op = TORCH_CASES[case]
    if decompose and op in (OpKind.RMS_NORM, OpKind.INSTANCE_NORM):
        pytest.skip("core ATen spells these out (batch-norm views, rsqrt); export keeps them "
                    "whole and the loader decomposes only when an op is missing")
    module = _affine(build())
    x = torch.randn(shape)
    ep = torch.export.export(module, (x,))
    if decompose:
        ep = ep.run_decompositions()
    graph = lower_program(ep, TABLE, {})
    from lipcheck.interpreter import infer_shapes
    infer_shapes(graph)
    assert [n.op for n in graph.nodes] == [op]
    got = run_graph(graph, {graph.inputs[0].name: x})[graph.outputs[0]]
    torch.testing.assert_close(got, module(x), atol=1e-5, rtol=1e-5)
    assert all(math.isfinite(b) for b in _bounds(graph, op))


class _LRN(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.local_response_norm(x, self.size, alpha=0.1, beta=0.75, k=2.0)


@pytest.mark.parametrize("shape, size", [(X4, 5), ((2, 6, 4), 3)])
def test_torch_local_response_norm_is_fused_into_one_lrn(shape, size: int) -> None:
    from lipcheck.loaders.torch_loader import load_module
    from lipcheck.rules.lrn import lrn_constant

    graph = load_module(_LRN(size), [shape])
    (node,) = graph.nodes
    assert node.op == OpKind.LRN and node.attrs == {"size": size, "alpha": 0.1, "beta": 0.75,
                                                    "bias": 2.0}
    x = torch.randn(shape)
    torch.testing.assert_close(run_graph(graph, {graph.inputs[0].name: x})[graph.outputs[0]],
                               _LRN(size)(x))
    assert _bounds(graph, OpKind.LRN) == [lrn_constant(size, shape[1], 0.1, 0.75, 2.0)]


def test_torch_local_response_norm_of_even_size_is_not_fused() -> None:
    # torch's window for an even size is not ONNX's (one channel shifted): left as the
    # written-out ops, whose Pow and Div are reported unbounded on their own
    from lipcheck.loaders.torch_loader import load_module

    graph = load_module(_LRN(4), [X4])
    assert OpKind.LRN not in {n.op for n in graph.nodes}
