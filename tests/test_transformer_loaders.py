"""Transformer pieces through both front ends: attention (the aten op and the written-out
matmul/softmax form), embedding lookups, where/masked_fill with constant masks.

The encoder layer fixture (tests/data/make_transformer.py) loads from .onnx and .pt2 into
graphs that evaluate like torch; its only unbounded nodes are the attention's two
products of input-dependent signals."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipcheck.errors import UnsupportedOpsError
from lipcheck.graph import OpKind
from lipcheck.interpreter import run_graph
from lipcheck.loaders.dispatch import load_model
from lipcheck.loaders.torch_loader import load_module, load_pt2
from lipcheck.rules import BoundContext, get_rule
from lipcheck.settings import Settings
from test_onnx_loader import check

DATA = Path(__file__).resolve().parent / "data"


def _infinite(graph) -> list:
    ctx = BoundContext(graph, Settings())
    return [n for n in graph.nodes if not math.isfinite(get_rule(n.op).bound(n, ctx).value)]


def _torch_reference(x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.load(str(DATA / "transformer_encoder.pt2")).module()(x)


def _output(graph, x: torch.Tensor) -> torch.Tensor:
    return run_graph(graph, {graph.inputs[0].name: x})[graph.outputs[0]]


@pytest.mark.parametrize("suffix", ["onnx", "pt2"])
def test_encoder_layer_evaluates_like_torch_from_both_formats(suffix: str) -> None:
    graph = load_model(DATA / f"transformer_encoder.{suffix}")
    x = torch.randn(1, 8, 32)
    torch.testing.assert_close(_output(graph, x), _torch_reference(x), atol=2e-5, rtol=1e-4)
    ops = {n.op for n in graph.nodes}
    assert {OpKind.LAYER_NORM, OpKind.SOFTMAX, OpKind.MATMUL} <= ops


def test_encoder_layer_onnx_matches_onnxruntime(tmp_path: Path) -> None:
    check(onnx.load(str(DATA / "transformer_encoder.onnx")), tmp_path, atol=1e-4)


@pytest.mark.parametrize("suffix", ["onnx", "pt2"])
def test_encoder_layer_is_unbounded_only_at_the_attention(suffix: str) -> None:
    graph = load_model(DATA / f"transformer_encoder.{suffix}")
    infinite = _infinite(graph)
    assert len(infinite) == 2 and all(n.op == OpKind.MATMUL for n in infinite)
    assert all(len(graph.dynamic_inputs(n)) == 2 for n in infinite)
    if suffix == "pt2":
        assert all("scaled_dot_product_attention" in n.name for n in infinite)


class _Attention(nn.Module):
    """Single-head attention written out, with constant masks applied three ways."""

    def __init__(self, sdpa: bool, causal: bool = False) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.sdpa, self.causal = sdpa, causal
        self.register_buffer("keep", (torch.rand(6, 6) > 0.3) | torch.eye(6, dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.sdpa:
            mask = None if self.causal else self.keep
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal)
        scores = (q @ k.transpose(-2, -1) / 4.0).masked_fill(~self.keep, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
        return torch.where(self.keep[0, :1].expand(16), out, 0.5 * out)


@pytest.mark.parametrize("sdpa, causal", [(True, False), (True, True), (False, False)])
def test_attention_forms_lower_and_are_unbounded_at_the_products(sdpa: bool,
                                                                  causal: bool) -> None:
    torch.manual_seed(1)
    model = _Attention(sdpa, causal).eval()
    graph = load_module(model, [(2, 6, 16)])
    x = torch.randn(2, 6, 16)
    torch.testing.assert_close(_output(graph, x), model(x), atol=1e-5, rtol=1e-5)
    infinite = _infinite(graph)
    assert len(infinite) == 2 and all(n.op == OpKind.MATMUL for n in infinite)


class _Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, 0.0)


def test_where_with_an_input_dependent_condition_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedOpsError, match="aten.where"):
        load_module(_Gate(), [(2, 3)])


class _Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.embed(ids)))


def test_embedding_lookup_becomes_the_input_with_a_warning(tmp_path: Path) -> None:
    model = _Tokens().eval()
    ids = torch.randint(0, 20, (2, 5))
    path = tmp_path / "tokens.pt2"
    torch.export.save(torch.export.export(model, (ids,)), str(path))
    graph = load_pt2(path)
    (info,) = graph.inputs
    assert info.shape == (2, 5, 8) and info.dtype == torch.float32
    codes = [code for code, _ in graph.metadata["warnings"]]
    assert codes == ["embedding_input"]
    assert "not a continuous input" in graph.metadata["warnings"][0][1]
    rows = model.embed.weight.detach()[ids]
    torch.testing.assert_close(_output(graph, rows), model(ids))
    assert not _infinite(graph)
