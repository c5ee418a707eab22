"""ATen -> IR converters for transformer pieces (registered in aten_registry.TABLE):
scaled_dot_product_attention, baddbmm, embedding lookups, where / masked_fill with
constant masks.

Attention is lowered to its definition, softmax(q k^T * scale + mask) v, as IR MatMul,
Mul, Add and Softmax nodes named after the attention call (".../scores", ".../output").
Both MatMuls multiply two input-dependent signals, so the global bound is infinite
and the report names those nodes: dot-product attention is not globally Lipschitz
(Kim et al., ICML 2021). Masks are constants; a boolean mask adds -inf where it is
False. Grouped-query attention repeats each key/value head over its group of query heads.

An embedding whose ids are a model input is a lookup, not a function of a continuous
input: its output becomes the graph input (the analysis starts after the lookup) and
the loader says so in a warning.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx as fx

from lipcheck.graph import OpKind, ValueInfo
from lipcheck.loaders.aten_registry import args, converts
from lipcheck.loaders.torch_lowering import Lowering, Unsupported, Value


def _constant_mask(low: Lowering, arg: Any, what: str) -> torch.Tensor:
    mask = low.tensor(arg)
    if mask is None:
        raise Unsupported(f"{what} with an input-dependent mask")
    return mask


def _additive(mask: torch.Tensor) -> torch.Tensor:
    """A boolean attention mask (True = attend) as the float mask torch adds."""
    if mask.dtype != torch.bool:
        return mask.float()
    return torch.zeros(mask.shape).masked_fill(~mask, -math.inf)


def _causal(length: int, source: int) -> torch.Tensor:
    return torch.ones(length, source, dtype=torch.bool).tril()


@converts("aten.scaled_dot_product_attention.default")
def _sdpa(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    if float(a.get("dropout_p", 0.0)) != 0.0:
        raise Unsupported("attention dropout (dropout_p > 0)")
    q_shape, k_shape = low.shape(a["query"]), low.shape(a["key"])
    key, value = low.value(a["key"]), low.value(a["value"])
    if q_shape[:-2] != k_shape[:-2]:
        repeats = _group_size(q_shape, k_shape)
        key = _repeat_heads(low, key, k_shape, repeats, "key")
        value = _repeat_heads(low, value, low.shape(a["value"]), repeats, "value")
    rank = len(k_shape)
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    key_t = low.emit(OpKind.TRANSPOSE, [key], {"perm": perm}, suffix="/key_t")
    scores = low.emit(OpKind.MATMUL, [low.value(a["query"]), key_t], suffix="/scores")
    scale = a.get("scale")
    scale = 1 / math.sqrt(q_shape[-1]) if scale is None else float(scale)
    scores = low.emit(OpKind.MUL, [scores, low.add_const(torch.tensor(scale), "scale")],
                      suffix="/scale")
    mask = _attention_mask(low, a, q_shape[-2], k_shape[-2])
    if mask is not None:
        scores = low.emit(OpKind.ADD, [scores, low.add_const(mask, f"{node.name}.mask")],
                          suffix="/mask")
    weights = low.emit(OpKind.SOFTMAX, [scores], {"axis": -1}, suffix="/softmax")
    return low.emit(OpKind.MATMUL, [weights, value], suffix="/output")


def _group_size(q_shape: tuple[int, ...], k_shape: tuple[int, ...]) -> int:
    """Query heads per key head in grouped-query attention (enable_gqa)."""
    if len(q_shape) < 3 or q_shape[:-3] != k_shape[:-3] or q_shape[-3] % k_shape[-3]:
        raise Unsupported(f"attention with query {q_shape} and key {k_shape}")
    return q_shape[-3] // k_shape[-3]


def _repeat_heads(low: Lowering, name: str, shape: tuple[int, ...], repeats: int,
                  what: str) -> str:
    """(..., H, S, E) -> (..., H * repeats, S, E), each head repeated in place
    (torch's repeat_interleave, ONNX's np.repeat)."""
    lead, (heads, length, size) = list(shape[:-3]), shape[-3:]
    split = low.emit(OpKind.RESHAPE, [name], {"shape": lead + [heads, 1, length, size]},
                     suffix=f"/{what}_heads")
    wide = low.emit(OpKind.EXPAND, [split], {"shape": lead + [heads, repeats, length, size]},
                    suffix=f"/{what}_repeat")
    return low.emit(OpKind.RESHAPE, [wide], {"shape": lead + [heads * repeats, length, size]},
                    suffix=f"/{what}_grouped")


def _attention_mask(low: Lowering, a: dict[str, Any], length: int,
                    source: int) -> torch.Tensor | None:
    masks = []
    if a.get("attn_mask") is not None:
        masks.append(_additive(_constant_mask(low, a["attn_mask"], "attention")))
    if a.get("is_causal"):
        masks.append(_additive(_causal(length, source)))
    if not masks:
        return None
    total = masks[0] if len(masks) == 1 else masks[0] + masks[1]
    if bool(torch.isneginf(total).all(dim=-1).any()):
        raise Unsupported("attention mask with a fully masked query row")
    return total


@converts("aten.baddbmm.default", "aten.addbmm.default")
def _baddbmm(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    if str(node.target) == "aten.addbmm.default":
        raise Unsupported("addbmm (a sum over the batch)")
    product = low.emit(OpKind.MATMUL, [low.value(a["batch1"]), low.value(a["batch2"])],
                       suffix="/matmul")
    alpha, beta = float(a["alpha"]), float(a["beta"])
    if alpha != 1.0:
        product = low.emit(OpKind.MUL, [product, low.add_const(torch.tensor(alpha), "alpha")],
                           suffix="/alpha")
    if beta == 0.0:
        return low.emit(OpKind.IDENTITY, [product])
    base = low.value(a["self"])
    if beta != 1.0:
        base = low.emit(OpKind.MUL, [base, low.add_const(torch.tensor(beta), "beta")],
                        suffix="/beta")
    return low.emit(OpKind.ADD, [product, base])


# ----- where / masked_fill with constant masks -------------------------------------------
def _select(low: Lowering, node: fx.Node, condition: Any, chosen: Any, other: Any) -> Value:
    """where(condition, chosen, other) = chosen * m + other * (1 - m) for a constant mask m;
    constant branches are folded into one constant added at the end (so -inf stays exact)."""
    mask = _constant_mask(low, condition, "where").bool()
    parts: list[str] = []
    shapes, fixed = [], torch.zeros(())
    for branch, keep in ((chosen, mask), (other, ~mask)):
        tensor = branch if not isinstance(branch, fx.Node) else low.tensor(branch)
        if tensor is None:
            factor = low.add_const(keep.float(), f"{node.name}.mask")
            parts.append(low.emit(OpKind.MUL, [low.value(branch), factor],
                                  suffix=f"/branch{len(parts)}"))
            shapes.append(torch.broadcast_shapes(low.shape(branch), keep.shape))
        else:
            fixed = fixed + torch.where(keep, torch.as_tensor(tensor, dtype=torch.float32), 0.0)
    out = parts[0] if len(parts) == 1 else low.emit(OpKind.ADD, parts, suffix="/merge")
    if bool((fixed != 0).any()):
        out = low.emit(OpKind.ADD, [out, low.add_const(fixed, f"{node.name}.fill")],
                       suffix="/fill")
        shapes.append(fixed.shape)
    shape = low.shape(node)
    if tuple(torch.broadcast_shapes(*shapes)) != shape:
        return low.emit(OpKind.EXPAND, [out], {"shape": list(shape)})
    return out


@converts("aten.where.self", "aten.where.ScalarOther", "aten.where.ScalarSelf",
          "aten.where.Scalar")
def _where(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    return _select(low, node, a["condition"], a["self"], a["other"])


@converts("aten.masked_fill.Scalar", "aten.masked_fill.Tensor", "aten.masked_fill_.Scalar",
          "aten.masked_fill_.Tensor")
def _masked_fill(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    value = a["value"]
    if isinstance(value, fx.Node):
        value = low.tensor(value)
        if value is None:
            raise Unsupported("masked_fill with an input-dependent fill value")
    return _select(low, node, a["mask"], value, a["self"])


# ----- embedding lookups --------------------------------------------------------------
@converts("aten.embedding.default")
def _embedding(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    weight, ids = low.tensor(a["weight"]), a["indices"]
    if weight is None:
        raise Unsupported("embedding with an input-dependent table")
    if not isinstance(ids, fx.Node) or ids.op != "placeholder":
        raise Unsupported("embedding of computed ids (only ids given as a model input)")
    position = next((i for i, v in enumerate(low.inputs) if v.name == ids.name), None)
    if position is None:
        raise Unsupported(f"ids {ids.name!r} feed more than one lookup")
    low.inputs[position] = ValueInfo(node.name, low.shape(node), weight.dtype)
    low.lookups[node.name] = (ids.name, weight)
    low.warnings.append((
        "embedding_input",
        f"input {ids.name!r} holds token ids, which are not a continuous input: the analysis "
        f"starts after the embedding lookup {node.name!r} (its output {low.shape(node)} is the "
        "input the bounds are about)"))
    return node.name
