"""ATen -> IR converters for structural and arithmetic ops (registered in aten_registry.TABLE).

Shapes that torch computes (view, flatten, expand, upsample) are read from the FX
node's output metadata, so the IR carries concrete `shape`/`sizes` attributes.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from lipcheck.graph import OpKind
from lipcheck.loaders.aten_registry import args, converts
from lipcheck.loaders.torch_lowering import Lowering, Unsupported, Value, as_int, as_ints, as_node

IDENTITY_OPS = ("aten.clone.default", "aten.contiguous.default", "aten.alias.default",
                "aten.detach.default", "aten.detach_.default", "aten.lift_fresh_copy.default",
                "aten.type_as.default", "aten.view_as.default", "aten.reshape_as.default")


def _first(low: Lowering, node: fx.Node) -> str:
    return low.value(node.args[0])


@converts(*IDENTITY_OPS)
def _identity(low: Lowering, node: fx.Node) -> Value:
    if low.shape(node) != low.shape(node.args[0]):
        return _reshape(low, node)
    return low.emit(OpKind.IDENTITY, [_first(low, node)])


@converts("aten._to_copy.default", "aten.to.dtype", "aten.to.dtype_layout", "aten.to.device")
def _to_copy(low: Lowering, node: fx.Node) -> Value:
    source, target = as_node(node.args[0]).meta["val"].dtype, node.meta["val"].dtype
    if source != target and not (source.is_floating_point and target.is_floating_point):
        raise Unsupported(f"cast from {source} to {target}")
    return low.emit(OpKind.IDENTITY, [_first(low, node)])


@converts("aten.dropout.default", "aten.feature_dropout.default", "aten.alpha_dropout.default",
          "aten.feature_alpha_dropout.default")
def _dropout(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    if a["train"]:
        raise Unsupported("dropout in training mode")
    return low.emit(OpKind.IDENTITY, [low.value(a["input"])])


@converts("aten.native_dropout.default")
def _native_dropout(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    if a["train"]:
        raise Unsupported("dropout in training mode")
    return [low.emit(OpKind.IDENTITY, [low.value(a["input"])]), None]


@converts("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default",
          "aten.flatten.using_ints", "aten.unflatten.int", "aten.view_copy.default")
def _reshape(low: Lowering, node: fx.Node) -> Value:
    return low.emit(OpKind.RESHAPE, [_first(low, node)], {"shape": list(low.shape(node))})


@converts("aten.squeeze.default", "aten.squeeze.dim", "aten.squeeze.dims")
def _squeeze(low: Lowering, node: fx.Node) -> Value:
    shape = low.shape(node.args[0])
    given = node.args[1] if len(node.args) > 1 else list(range(len(shape)))
    dims = as_ints(given) if isinstance(given, (list, tuple)) else [as_int(given)]
    axes = sorted({d % len(shape) for d in dims if shape[d] == 1})
    if not axes:
        return low.emit(OpKind.IDENTITY, [_first(low, node)])
    return low.emit(OpKind.SQUEEZE, [_first(low, node)], {"axes": axes})


@converts("aten.unsqueeze.default")
def _unsqueeze(low: Lowering, node: fx.Node) -> Value:
    rank = len(low.shape(node))
    return low.emit(OpKind.UNSQUEEZE, [_first(low, node)], {"axes": [as_int(node.args[1]) % rank]})


@converts("aten.permute.default")
def _permute(low: Lowering, node: fx.Node) -> Value:
    rank = len(low.shape(node))
    return _transpose_to(low, node, [d % rank for d in as_ints(node.args[1])])


@converts("aten.t.default", "aten.transpose.int")
def _transpose(low: Lowering, node: fx.Node) -> Value:
    rank = len(low.shape(node))
    perm = list(range(rank))
    a, b = (as_int(node.args[1]), as_int(node.args[2])) if len(node.args) > 2 else (0, 1)
    if rank >= 2:
        a, b = a % rank, b % rank
        perm[a], perm[b] = perm[b], perm[a]
    return _transpose_to(low, node, perm)


def _transpose_to(low: Lowering, node: fx.Node, perm: list[int]) -> Value:
    if perm == sorted(perm):
        return low.emit(OpKind.IDENTITY, [_first(low, node)])
    return low.emit(OpKind.TRANSPOSE, [_first(low, node)], {"perm": perm})


@converts("aten.cat.default", "aten.concat.default")
def _cat(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    rank = len(low.shape(node))
    inputs = [low.value(t) for t in a["tensors"] if low.shape(t) != (0,)]
    return low.emit(OpKind.CONCAT, inputs, {"axis": int(a["dim"]) % rank})


@converts("aten.split.Tensor", "aten.split_with_sizes.default", "aten.chunk.default",
          "aten.unsafe_split.Tensor", "aten.tensor_split.sections")
def _split(low: Lowering, node: fx.Node) -> Value:
    rank = len(low.shape(node.args[0]))
    axis = as_int(node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % rank
    sizes = [int(v.shape[axis]) for v in node.meta["val"]]
    return low.emit_many(OpKind.SPLIT, [_first(low, node)], {"axis": axis, "split": sizes},
                         outputs=len(sizes))


@converts("aten.unbind.int")
def _unbind(low: Lowering, node: fx.Node) -> Value:
    rank = len(low.shape(node.args[0]))
    axis = as_int(node.args[1] if len(node.args) > 1 else 0) % rank
    count = low.shape(node.args[0])[axis]
    parts = low.emit_many(OpKind.SPLIT, [_first(low, node)],
                          {"axis": axis, "split": [1] * count}, outputs=count, suffix="/split")
    return [low.emit(OpKind.SQUEEZE, [p], {"axes": [axis]}, suffix=f"/{i}")
            for i, p in enumerate(parts)]


@converts("aten.slice.Tensor")
def _slice(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    shape = low.shape(a["self"])
    axis = int(a["dim"]) % len(shape)
    size = shape[axis]
    start = _clamp_index(a["start"], size, 0)
    end = _clamp_index(a["end"], size, size)
    attrs = {"starts": [start], "ends": [end], "axes": [axis], "steps": [int(a["step"])]}
    return low.emit(OpKind.SLICE, [low.value(a["self"])], attrs)


def _clamp_index(index: Any, size: int, default: int) -> int:
    """A Python-style slice bound (None, negative, past the end) as an index in [0, size]."""
    if index is None:
        return default
    index = int(index)
    return max(0, index + size) if index < 0 else min(index, size)


@converts("aten.select.int")
def _select(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    shape = low.shape(a["self"])
    axis = int(a["dim"]) % len(shape)
    index = low.add_const(torch.tensor(int(a["index"]) % shape[axis]), f"{node.name}.index")
    return low.emit(OpKind.GATHER, [low.value(a["self"]), index], {"axis": axis})


@converts("aten.index_select.default")
def _index_select(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    index = low.tensor(a["index"])
    if index is None:
        raise Unsupported("index_select with input-dependent indices")
    axis = int(a["dim"]) % len(low.shape(a["self"]))
    return low.emit(OpKind.GATHER, [low.value(a["self"]), low.value(a["index"])], {"axis": axis})


@converts("aten.expand.default", "aten.expand_as.default")
def _expand(low: Lowering, node: fx.Node) -> Value:
    return low.emit(OpKind.EXPAND, [_first(low, node)], {"shape": list(low.shape(node))})


@converts("aten.repeat.default")
def _repeat(low: Lowering, node: fx.Node) -> Value:
    x, repeats = _first(low, node), as_ints(node.args[1])
    shape = low.shape(node.args[0])
    if len(repeats) > len(shape):
        padded = [1] * (len(repeats) - len(shape)) + list(shape)
        x = low.emit(OpKind.RESHAPE, [x], {"shape": padded}, suffix="/reshape")
    return low.emit(OpKind.TILE, [x], {"repeats": repeats})


@converts("aten.pixel_shuffle.default")
def _pixel_shuffle(low: Lowering, node: fx.Node) -> Value:
    if len(low.shape(node)) != 4:
        raise Unsupported("pixel_shuffle on a tensor that is not 4-d")
    attrs = {"blocksize": as_int(node.args[1]), "mode": "CRD"}
    return low.emit(OpKind.DEPTH_TO_SPACE, [_first(low, node)], attrs)


# ----- padding and resizing ----------------------------------------------------------
PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge",
             "circular": "wrap"}


def _onnx_pads(torch_pads: list[int], rank: int) -> list[int]:
    """torch's (last-dim-first pairs) to ONNX [begin_0..begin_r-1, end_0..end_r-1]."""
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(torch_pads) // 2):
        axis = rank - 1 - i
        begins[axis], ends[axis] = int(torch_pads[2 * i]), int(torch_pads[2 * i + 1])
    return begins + ends


def _emit_pad(low: Lowering, node: fx.Node, pads: list[int], mode: str, value: float) -> Value:
    rank = len(low.shape(node.args[0]))
    attrs = {"pads": _onnx_pads(pads, rank), "mode": mode, "value": float(value)}
    return low.emit(OpKind.PAD, [_first(low, node)], attrs)


@converts("aten.pad.default")
def _pad(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    if a["mode"] not in PAD_MODES:
        raise Unsupported(f"pad mode {a['mode']!r}")
    return _emit_pad(low, node, list(a["pad"]), PAD_MODES[a["mode"]], a.get("value") or 0.0)


@converts("aten.constant_pad_nd.default")
def _constant_pad(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    return _emit_pad(low, node, list(a["pad"]), "constant", a["value"])


def _fixed_mode_pad(mode: str) -> Any:
    def convert(low: Lowering, node: fx.Node) -> Value:
        return _emit_pad(low, node, as_ints(node.args[1]), mode, 0.0)
    return convert


for _d in (1, 2, 3):
    converts(f"aten.reflection_pad{_d}d.default")(_fixed_mode_pad("reflect"))
    converts(f"aten.replication_pad{_d}d.default")(_fixed_mode_pad("edge"))
converts("aten._pad_circular.default")(_fixed_mode_pad("wrap"))


def _resize(low: Lowering, node: fx.Node, mode: str, transform: str) -> Value:
    attrs = {"mode": mode, "sizes": list(low.shape(node)),
             "coordinate_transformation_mode": transform, "nearest_mode": "floor"}
    return low.emit(OpKind.RESIZE, [_first(low, node)], attrs)


@converts("aten.upsample_nearest1d.vec", "aten.upsample_nearest2d.vec",
          "aten.upsample_nearest3d.vec", "aten.upsample_nearest1d.default",
          "aten.upsample_nearest2d.default", "aten.upsample_nearest3d.default")
def _upsample_nearest(low: Lowering, node: fx.Node) -> Value:
    return _resize(low, node, "nearest", "asymmetric")


@converts("aten.upsample_bilinear2d.vec", "aten.upsample_linear1d.vec",
          "aten.upsample_bilinear2d.default", "aten.upsample_linear1d.default")
def _upsample_linear(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    if not a["align_corners"] and _uneven_scale(low, node):
        raise Unsupported("linear upsampling by a non-integer factor")
    transform = "align_corners" if a["align_corners"] else "pytorch_half_pixel"
    return _resize(low, node, "linear", transform)


def _uneven_scale(low: Lowering, node: fx.Node) -> bool:
    src, dst = low.shape(node.args[0])[2:], low.shape(node)[2:]
    return any(d % s for s, d in zip(src, dst, strict=True))


# ----- arithmetic ----------------------------------------------------------------------
def _scaled(low: Lowering, node: fx.Node, other: Any, alpha: Any) -> str:
    """`alpha * other` as an IR value (folded when other is a constant)."""
    if alpha is None or float(alpha) == 1.0:
        return low.value(other)
    constant = low.tensor(other)
    if constant is not None:
        return low.add_const(constant * float(alpha), f"{node.name}.scaled")
    scale = low.add_const(torch.tensor(float(alpha)), f"{node.name}.alpha")
    return low.emit(OpKind.MUL, [low.value(other), scale], suffix="/alpha")


def _binary(op: OpKind) -> Any:
    def convert(low: Lowering, node: fx.Node) -> Value:
        a = args(node)
        rounding = a.get("rounding_mode")
        if rounding is not None:
            raise Unsupported(f"division with rounding_mode={rounding!r}")
        other = _scaled(low, node, a["other"], a.get("alpha"))
        return low.emit(op, [low.value(a["self"]), other])
    return convert


for _op, _name in ((OpKind.ADD, "add"), (OpKind.SUB, "sub"), (OpKind.MUL, "mul"),
                   (OpKind.DIV, "div")):
    converts(f"aten.{_name}.Tensor", f"aten.{_name}.Scalar", f"aten.{_name}_.Tensor",
             f"aten.{_name}_.Scalar")(_binary(_op))
converts("aten.div.Tensor_mode")(_binary(OpKind.DIV))
converts("aten.maximum.default")(_binary(OpKind.MAX))
converts("aten.minimum.default")(_binary(OpKind.MIN))


@converts("aten.rsub.Scalar", "aten.rsub.Tensor")
def _rsub(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    scaled = _scaled(low, node, a["self"], a.get("alpha"))
    return low.emit(OpKind.SUB, [low.value(a["other"]), scaled])


@converts("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor")
def _pow(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    return low.emit(OpKind.POW, [low.value(a["self"]), low.value(a["exponent"])])


@converts("aten.square.default")
def _square(low: Lowering, node: fx.Node) -> Value:
    return low.emit(OpKind.POW, [_first(low, node), low.value(2.0)])
