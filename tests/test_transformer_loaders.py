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
from test_onnx_loader import check
from torch import nn

from lipcheck.errors import UnsupportedOpsError
from lipcheck.graph import OpKind
from lipcheck.interpreter import run_graph
from lipcheck.loaders.dispatch import load_model
from lipcheck.loaders.torch_loader import load_module, load_pt2
from lipcheck.rules import BoundContext, get_rule
from lipcheck.settings import Settings

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


def _where_model(dynamic_other: bool):
    import numpy as np
    from onnx import helper
    from onnx_builders import const, model
    keep = np.array([[True, False, True], [False, False, True]])
    inits = [const("keep", keep, np.bool_), const("fill", -np.inf)]
    other = "x" if dynamic_other else "fill"
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]) if dynamic_other else
             helper.make_node("Identity", ["x"], ["sq"]),
             helper.make_node("Where", ["keep", "sq", other], ["y"])]
    return model(nodes, {"x": (4, 2, 3)}, ["y"], inits, opset=16)


@pytest.mark.parametrize("dynamic_other", [False, True])
def test_onnx_where_with_a_constant_condition(dynamic_other: bool, tmp_path: Path) -> None:
    graph = check(_where_model(dynamic_other), tmp_path)
    assert {n.source_op for n in graph.nodes} >= {"Where"}
    if not dynamic_other:  # Identity then x * keep + (-inf where not kept): scaling by 0/1
        assert not _infinite(graph)


class _CausalLayer(nn.Module):
    """An encoder layer with a float -inf causal mask held in a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x, src_mask=self.mask, is_causal=True)


class _MultiHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x, x, x)[0]  # need_weights=True: the weights path


@pytest.mark.parametrize("build", [_CausalLayer, _MultiHead])
def test_masked_and_weighted_attention_modules_lower(build) -> None:
    torch.manual_seed(0)
    module = build().eval()
    graph = load_module(module, [(1, 6, 16)])
    x = torch.randn(1, 6, 16)
    torch.testing.assert_close(_output(graph, x), module(x), atol=1e-5, rtol=1e-5)
    assert {n.op for n in _infinite(graph)} == {OpKind.MATMUL}


def test_onnx_infinite_weights_are_still_refused(tmp_path: Path) -> None:
    import numpy as np
    from onnx_builders import const, one_node, save

    from lipcheck.errors import BadWeightsError
    from lipcheck.loaders.onnx_loader import load_onnx
    path = save(one_node("MatMul", (2, 2), [const("w", [[1.0, np.inf], [0, 1]])],
                         extra_inputs=["w"]), tmp_path)
    with pytest.raises(BadWeightsError, match="'w'"):
        load_onnx(path)


def test_encoder_layer_norm_bounds_agree_between_formats() -> None:
    per_format = []
    for suffix in ("onnx", "pt2"):
        graph = load_model(DATA / f"transformer_encoder.{suffix}")
        ctx = BoundContext(graph, Settings())
        per_format.append([get_rule(n.op).bound(n, ctx).value for n in graph.nodes
                           if n.op == OpKind.LAYER_NORM])
    assert len(per_format[0]) == 2
    assert per_format[0] == pytest.approx(per_format[1], rel=1e-6)


class _GroupedQuery(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.kv = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q(x).unflatten(-1, (4, 4)).transpose(1, 2)         # 4 query heads
        k, v = self.kv(x).unflatten(-1, (2, 8)).transpose(1, 2).chunk(2, dim=-1)  # 2 kv heads
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def test_grouped_query_attention_repeats_key_heads() -> None:
    torch.manual_seed(0)
    module = _GroupedQuery().eval()
    graph = load_module(module, [(2, 5, 16)])
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(_output(graph, x), module(x), atol=1e-5, rtol=1e-5)
    assert [n.op for n in _infinite(graph)] == [OpKind.MATMUL, OpKind.MATMUL]


class _WithUnsupportedOp(nn.Module):
    """glu has no converter: the loader retries on the core-ATen decomposition, where
    attention comes with a guard for fully masked rows."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.glu(torch.cat([self.layer(x), x], dim=-1))


def test_attention_in_the_core_aten_decomposition_lowers() -> None:
    torch.manual_seed(0)
    module = _WithUnsupportedOp().eval()
    graph = load_module(module, [(1, 6, 16)])
    x = torch.randn(1, 6, 16)
    torch.testing.assert_close(_output(graph, x), module(x), atol=1e-5, rtol=1e-5)
    assert sum(n.op == OpKind.SOFTMAX for n in graph.nodes) == 1
