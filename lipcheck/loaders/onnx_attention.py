"""ONNX Attention (opset 23) lowered to its definition, as the torch front end lowers
scaled_dot_product_attention: softmax(Q K^T * scale + mask) V with IR MatMul, Mul, Add,
(Tanh for a softcap) and Softmax nodes. Both MatMuls multiply two input-dependent
signals: the global bound is infinite and the report names them.

3-D inputs (batch, sequence, heads x head size) are split into heads and merged back.
Masks must be constants (a boolean mask adds -inf where it is False); grouped-query
attention repeats each key/value head over its group of query heads; past key/value
caches and the extra outputs are refused by name.
"""
from __future__ import annotations

import math
from typing import Any

import onnx
import torch

from lipcheck.graph import OpKind
from lipcheck.loaders.onnx_build import Builder
from lipcheck.loaders.onnx_ops import CONVERTERS, refuse


def _emit(b: Builder, op: OpKind, inputs: list[str], base: str, attrs: dict | None = None,
          output: str | None = None) -> str:
    out = output or b.temp(base)
    b.emit(op, inputs, [out], attrs or {}, "Attention")
    return out


def _constant(b: Builder, base: str, value: torch.Tensor) -> str:
    name = b.temp(base)
    b.set_constant(name, value)
    return name


def _heads(b: Builder, name: str, heads: int) -> str:
    """(B, S, H*E) -> (B, H, S, E)."""
    batch, seq, hidden = b.shape(name)
    split = _emit(b, OpKind.RESHAPE, [name], name, {"shape": [batch, seq, heads, hidden // heads]})
    return _emit(b, OpKind.TRANSPOSE, [split], name, {"perm": [0, 2, 1, 3]})


def _repeat_heads(b: Builder, name: str, repeats: int) -> str:
    """(B, H, S, E) -> (B, H * repeats, S, E), each head repeated in place (np.repeat)."""
    batch, heads, length, size = b.shape(name)
    split = _emit(b, OpKind.RESHAPE, [name], name, {"shape": [batch, heads, 1, length, size]})
    wide = _emit(b, OpKind.EXPAND, [split], name,
                 {"shape": [batch, heads, repeats, length, size]})
    return _emit(b, OpKind.RESHAPE, [wide], name,
                 {"shape": [batch, heads * repeats, length, size]})


def _mask(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any], length: int,
          total: int) -> torch.Tensor | None:
    masks = []
    mask = b.const(node, 3)  # None when the input is absent
    if mask is not None:
        masks.append(mask.float() if mask.dtype != torch.bool
                     else torch.zeros(mask.shape).masked_fill(~mask, -math.inf))
    if attrs.get("is_causal", 0):
        causal = torch.ones(length, total, dtype=torch.bool).tril()
        masks.append(torch.zeros(length, total).masked_fill(~causal, -math.inf))
    if not masks:
        return None
    total_mask = masks[0] if len(masks) == 1 else masks[0] + masks[1]
    if bool(torch.isneginf(total_mask).all(dim=-1).any()):
        raise refuse(b, node, "attention mask with a fully masked query row")
    return total_mask


def _check(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if any(node.input[4:]) or any(node.output[1:]):
        raise refuse(b, node, "past key/value caches and extra outputs are not supported")
    if attrs.get("qk_matmul_output_mode", 0):
        raise refuse(b, node, "qk_matmul_output_mode != 0")


def _attention(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _check(b, node, attrs)
    q, k, v = node.input[:3]
    flat = len(b.shape(q)) == 3
    if flat:
        q = _heads(b, q, int(attrs["q_num_heads"]))
        k, v = (_heads(b, name, int(attrs["kv_num_heads"])) for name in (k, v))
    q_heads, k_heads = b.shape(q)[1], b.shape(k)[1]
    if q_heads != k_heads:
        if q_heads % k_heads or b.shape(v)[1] != k_heads:
            raise refuse(b, node, f"query {b.shape(q)} and key {b.shape(k)} heads differ")
        k, v = (_repeat_heads(b, name, q_heads // k_heads) for name in (k, v))
    key_t = _emit(b, OpKind.TRANSPOSE, [k], k, {"perm": [0, 1, 3, 2]})
    scores = _emit(b, OpKind.MATMUL, [q, key_t], node.output[0] + "/scores")
    scale = float(attrs.get("scale", 1 / math.sqrt(b.shape(q)[-1])))
    scores = _emit(b, OpKind.MUL, [scores, _constant(b, "scale", torch.tensor(scale))], "scaled")
    mask = _mask(b, node, attrs, b.shape(q)[-2], b.shape(k)[-2])
    if mask is not None:
        scores = _emit(b, OpKind.ADD, [scores, _constant(b, "mask", mask)], "masked")
    softcap = float(attrs.get("softcap", 0.0))
    if softcap > 0:
        inside = _emit(b, OpKind.MUL, [scores, _constant(b, "cap", torch.tensor(1 / softcap))],
                       "capped")
        scores = _emit(b, OpKind.MUL, [_emit(b, OpKind.TANH, [inside], "tanh"),
                                       _constant(b, "cap", torch.tensor(softcap))], "capped")
    weights = _emit(b, OpKind.SOFTMAX, [scores], "weights", {"axis": -1})
    if not flat:
        _emit(b, OpKind.MATMUL, [weights, v], "", output=node.output[0])
        return
    out = _emit(b, OpKind.MATMUL, [weights, v], node.output[0] + "/heads")
    merged = _emit(b, OpKind.TRANSPOSE, [out], out, {"perm": [0, 2, 1, 3]})
    batch, seq, heads, size = b.shape(merged)
    _emit(b, OpKind.RESHAPE, [merged], "", {"shape": [batch, seq, heads * size]},
          output=node.output[0])


CONVERTERS["Attention"] = _attention
