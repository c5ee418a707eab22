"""ONNX Attention (opset 23) runs like onnxruntime and is unbounded exactly at its two
products of input-dependent signals."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from onnx import helper
from onnx_builders import const, model, save
from test_onnx_loader import check

from lipcheck.errors import UnsupportedOpsError
from lipcheck.graph import OpKind
from lipcheck.loaders.onnx_loader import load_onnx
from lipcheck.rules import BoundContext, get_rule
from lipcheck.settings import Settings

RNG = np.random.default_rng(0)


def _attention(shape: tuple, mask=None, kv_hidden: int | None = None, **attrs):
    """Q = x Wq, K = x Wk, V = x Wv (so all three depend on x), then Attention."""
    hidden = shape[-1]
    widths = {"wq": hidden, "wk": kv_hidden or hidden, "wv": kv_hidden or hidden}
    inits = [const(n, RNG.standard_normal((hidden, w)) / 3) for n, w in widths.items()]
    nodes = [helper.make_node("MatMul", ["x", w], [w[1]]) for w in ("wq", "wk", "wv")]
    inputs = ["q", "k", "v"]
    if mask is not None:
        inits.append(const("mask", mask, mask.dtype))
        inputs.append("mask")
    nodes.append(helper.make_node("Attention", inputs, ["y"], **attrs))
    return model(nodes, {"x": shape}, ["y"], inits, opset=23)


def _infinite(graph) -> list:
    ctx = BoundContext(graph, Settings())
    return [n for n in graph.nodes if not math.isfinite(get_rule(n.op).bound(n, ctx).value)]


CASES = {
    "4d": lambda: _attention((2, 2, 5, 4)),
    "4d_bool_mask": lambda: _attention((1, 2, 5, 4), mask=np.tril(np.ones((5, 5), bool))),
    "4d_float_mask_scale": lambda: _attention((1, 2, 5, 4), scale=0.3,
                                              mask=RNG.standard_normal((5, 5)).astype(np.float32)),
    "4d_causal": lambda: _attention((1, 1, 6, 4), is_causal=1),
    "3d_heads": lambda: _attention((2, 5, 6), q_num_heads=2, kv_num_heads=2),
    "softcap": lambda: _attention((1, 1, 5, 4), softcap=2.0),
    "3d_grouped_query": lambda: _attention((1, 5, 8), kv_hidden=4, q_num_heads=4,
                                           kv_num_heads=2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_attention_matches_onnxruntime_and_is_unbounded_at_its_products(case: str,
                                                                        tmp_path: Path) -> None:
    graph = check(CASES[case](), tmp_path, atol=1e-5)
    infinite = _infinite(graph)
    assert [n.op for n in infinite] == [OpKind.MATMUL, OpKind.MATMUL]
    assert all(n.source_op == "Attention" for n in infinite)


def test_heads_that_do_not_divide_are_refused_by_name(tmp_path: Path) -> None:
    path = save(_attention((1, 5, 9), kv_hidden=6, q_num_heads=3, kv_num_heads=2), tmp_path)
    with pytest.raises(UnsupportedOpsError, match="Attention"):
        load_onnx(path)
