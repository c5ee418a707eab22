"""ONNX op -> IR converters: one small function per op type, opset handled inside.

Each converter reads the ONNX node (attributes already decoded into a dict) and
emits IR nodes through the Builder, moving constant inputs that are settings
(axes, pads, shapes, sizes...) into attributes as graph.py describes.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import onnx
import torch

from lipcheck.errors import UnsupportedOpsError
from lipcheck.graph import OpKind
from lipcheck.loaders.onnx_build import Builder
from lipcheck.loaders.onnx_padding import conv_transpose_pads, resolve_auto_pad

Converter = Callable[[Builder, onnx.NodeProto, dict[str, Any]], None]
CONVERTERS: dict[str, Converter] = {}
LEGACY_ATTRS = {"consumed_inputs", "is_test", "spatial", "broadcast", "axis_w"}


def refuse(b: Builder, node: onnx.NodeProto, detail: str) -> UnsupportedOpsError:
    return UnsupportedOpsError({node.op_type: [b.onnx_name]}, detail)


def plain(op: OpKind, keep_outputs: int = 1) -> Converter:
    def convert(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
        clean = {k: v for k, v in attrs.items() if k not in LEGACY_ATTRS}
        b.emit(op, list(node.input), list(node.output)[:keep_outputs], clean, node.op_type)
    return convert


for _name in ["Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid",
              "Tanh", "Softplus", "Softsign", "Gelu", "Erf", "HardSwish", "Mish", "Abs", "Neg",
              "Identity", "Exp", "Log", "Sqrt", "Reciprocal", "Sum", "Mean", "Max", "Min", "Pow",
              "Concat", "Transpose", "DepthToSpace", "SpaceToDepth", "Gather", "Flatten", "LRN",
              "InstanceNormalization", "LayerNormalization", "RMSNormalization", "Gemm", "MatMul",
              "GlobalAveragePool", "GlobalMaxPool", "ReduceMax", "ReduceMin", "ReduceL2",
              "ReduceMean"]:
    CONVERTERS[_name] = plain(OpKind(_name))


def _reduce(op: OpKind, axes_input_from: int) -> Converter:
    def convert(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
        if b.opset >= axes_input_from:
            attrs = {**attrs, "axes": b.ints(node, 1)}
        b.emit(op, [node.input[0]], [node.output[0]], attrs, node.op_type)
    return convert


for _name in ["ReduceMax", "ReduceMin", "ReduceL2", "ReduceMean"]:
    CONVERTERS[_name] = _reduce(OpKind(_name), 18)
CONVERTERS["ReduceSum"] = _reduce(OpKind.REDUCE_SUM, 13)


def _binary(op: OpKind) -> Converter:
    """Add/Sub/Mul/Div; opset < 7 'broadcast' with 'axis' aligns B at that axis."""
    def convert(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
        inputs = list(node.input)
        if attrs.get("broadcast") and "axis" in attrs:
            rank_a, other = len(b.shape(inputs[0])), b.values[inputs[1]]
            axis = attrs["axis"] % rank_a
            name = b.temp(inputs[1])
            aligned = other.reshape(tuple(other.shape) + (1,) * (rank_a - axis - other.dim()))
            if b.is_constant(inputs[1]):
                b.set_constant(name, aligned)
            else:
                b.emit(OpKind.RESHAPE, [inputs[1]], [name], {"shape": list(aligned.shape)},
                       node.op_type)
            inputs[1] = name
        b.emit(op, inputs, [node.output[0]], {}, node.op_type)
    return convert


for _op in [OpKind.ADD, OpKind.SUB, OpKind.MUL, OpKind.DIV]:
    CONVERTERS[_op.value] = _binary(_op)


def _dropout(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    training = b.const(node, 2) if b.opset >= 12 else None
    if training is not None and bool(training.reshape(-1)[0]):
        raise refuse(b, node, "training_mode=True (inference only)")
    b.emit(OpKind.DROPOUT, [node.input[0]], [node.output[0]], {}, node.op_type)
    if len(node.output) > 1 and node.output[1]:
        b.set_constant(node.output[1], torch.ones(b.shape(node.output[0]), dtype=torch.bool))


def _batch_norm(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if attrs.get("training_mode", 0):
        raise refuse(b, node, "training_mode=1 (inference only)")
    b.emit(OpKind.BATCH_NORM, list(node.input[:5]), [node.output[0]],
           {"epsilon": attrs.get("epsilon", 1e-5)}, node.op_type)


def _group_norm(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """GroupNormalization-18 takes scale and bias per group, -21 per channel: the IR
    takes them per channel (a per-group value repeated over the group's channels)."""
    x, channels, groups = node.input[0], b.shape(node.input[0])[1], int(attrs["num_groups"])
    inputs = [x]
    for position in (1, 2):
        value = b.values[node.input[position]]
        if value.numel() != channels:
            if not b.is_constant(node.input[position]) or value.numel() != groups:
                raise refuse(b, node, f"scale/bias of {value.numel()} entries for {channels} "
                                      f"channels in {groups} groups")
            name = b.temp(node.input[position])
            b.set_constant(name, value.reshape(-1).repeat_interleave(channels // groups))
            inputs.append(name)
        else:
            inputs.append(node.input[position])
    b.emit(OpKind.GROUP_NORM, inputs, [node.output[0]],
           {"num_groups": groups, "epsilon": float(attrs.get("epsilon", 1e-5))}, node.op_type)


def _where(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """Where with a constant condition: a * m + b * (1 - m), constant branches folded into
    one constant added at the end (so a -inf fill stays exact)."""
    mask = b.needed_const(node, 0).bool()
    if b.all_constant(node):
        b.set_constant(node.output[0], torch.where(mask, b.values[node.input[1]],
                                                   b.values[node.input[2]]))
        return
    parts, fixed = [], torch.zeros(())
    for position, keep in ((1, mask), (2, ~mask)):
        name = node.input[position]
        if b.is_constant(name):
            fixed = fixed + torch.where(keep, b.values[name].float(), 0.0)
            continue
        factor, out = b.temp(name), b.temp(name)
        b.set_constant(factor, keep.float())
        b.emit(OpKind.MUL, [name, factor], [out], {}, node.op_type)
        parts.append(out)
    current = parts[0]
    if len(parts) == 2:
        current = b.temp(node.output[0])
        b.emit(OpKind.ADD, parts, [current], {}, node.op_type)
    if bool((fixed != 0).any()):
        fill, total = b.temp(node.output[0]), b.temp(node.output[0])
        b.set_constant(fill, fixed)
        b.emit(OpKind.ADD, [current, fill], [total], {}, node.op_type)
        current = total
    shape = torch.broadcast_shapes(*(b.shape(v) for v in node.input[:3]))
    op = OpKind.IDENTITY if b.shape(current) == tuple(shape) else OpKind.EXPAND
    b.emit(op, [current], [node.output[0]], {"shape": list(shape)} if op == OpKind.EXPAND else {},
           node.op_type)


def _clip(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if b.opset >= 11:
        lo, hi = b.const(node, 1), b.const(node, 2)
        attrs = {"min": None if lo is None else float(lo), "max": None if hi is None else float(hi)}
    clean = {k: float(attrs[k]) for k in ("min", "max") if attrs.get(k) is not None}
    b.emit(OpKind.CLIP, [node.input[0]], [node.output[0]], clean, node.op_type)


def _softmax(op: OpKind) -> Converter:
    def convert(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
        x, rank = node.input[0], len(b.shape(node.input[0]))
        if b.opset >= 13:
            b.emit(op, [x], [node.output[0]], {"axis": attrs.get("axis", -1)}, node.op_type)
            return
        axis = attrs.get("axis", 1) % max(rank, 1)
        if axis == rank - 1:  # coercion to 2-D changes nothing
            b.emit(op, [x], [node.output[0]], {"axis": -1}, node.op_type)
            return
        flat, soft = b.temp(x), b.temp(x)
        b.emit(OpKind.FLATTEN, [x], [flat], {"axis": axis}, node.op_type)
        b.emit(op, [flat], [soft], {"axis": -1}, node.op_type)
        b.emit(OpKind.RESHAPE, [soft], [node.output[0]], {"shape": list(b.shape(x))},
               node.op_type)
    return convert


CONVERTERS["Softmax"] = _softmax(OpKind.SOFTMAX)
CONVERTERS["LogSoftmax"] = _softmax(OpKind.LOG_SOFTMAX)


def _conv(op: OpKind) -> Converter:
    def convert(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
        w = b.values[node.input[1]]
        in_shape = b.shape(node.input[0])
        attrs = {**attrs, "kernel_shape": attrs.get("kernel_shape") or list(w.shape[2:])}
        if op == OpKind.CONV_TRANSPOSE:
            attrs = conv_transpose_pads(attrs, in_shape)
        else:
            attrs = resolve_auto_pad(attrs, in_shape)
        b.emit(op, list(node.input), [node.output[0]], attrs, node.op_type)
    return convert


CONVERTERS["Conv"] = _conv(OpKind.CONV)
CONVERTERS["ConvTranspose"] = _conv(OpKind.CONV_TRANSPOSE)


def _pool(op: OpKind) -> Converter:
    def convert(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
        attrs = resolve_auto_pad({k: v for k, v in attrs.items() if k != "storage_order"},
                                 b.shape(node.input[0]))
        b.emit(op, [node.input[0]], [node.output[0]], attrs, node.op_type)
        if len(node.output) > 1 and node.output[1]:
            raise refuse(b, node, "the Indices output is not supported")
    return convert


CONVERTERS["MaxPool"] = _pool(OpKind.MAX_POOL)
CONVERTERS["AveragePool"] = _pool(OpKind.AVERAGE_POOL)
CONVERTERS["LpPool"] = _pool(OpKind.LP_POOL)


def _axes_op(op: OpKind) -> Converter:
    def convert(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
        axes = b.ints(node, 1) if b.opset >= 13 else attrs.get("axes")
        b.emit(op, [node.input[0]], [node.output[0]], {"axes": axes}, node.op_type)
    return convert


CONVERTERS["Squeeze"] = _axes_op(OpKind.SQUEEZE)
CONVERTERS["Unsqueeze"] = _axes_op(OpKind.UNSQUEEZE)


def _slice(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if b.opset >= 10:
        attrs = {"starts": b.ints(node, 1), "ends": b.ints(node, 2),
                 "axes": b.ints(node, 3), "steps": b.ints(node, 4)}
    b.emit(OpKind.SLICE, [node.input[0]], [node.output[0]], attrs, node.op_type)


def _pad(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    rank = len(b.shape(node.input[0]))
    mode = attrs.get("mode", "constant")
    if b.opset < 11:
        pads, value = list(attrs["pads"]), float(attrs.get("value", 0.0))
    else:
        pads, fill = b.needed_ints(node, 1), b.const(node, 2)
        value = 0.0 if fill is None or fill.numel() == 0 else float(fill.reshape(-1)[0])
        axes = b.ints(node, 3)
        if axes is not None:
            full = [0] * (2 * rank)
            for k, axis in enumerate(axes):
                full[axis % rank], full[axis % rank + rank] = pads[k], pads[k + len(axes)]
            pads = full
    b.emit(OpKind.PAD, [node.input[0]], [node.output[0]],
           {"pads": pads, "mode": mode, "value": value}, node.op_type)


def _split(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    split = b.ints(node, 1) if b.opset >= 13 else attrs.get("split")
    b.emit(OpKind.SPLIT, [node.input[0]], list(node.output),
           {"axis": attrs.get("axis", 0), "split": split}, node.op_type)


def _reshape(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    in_shape = b.shape(node.input[0])
    if b.opset < 5:
        shape = list(attrs["shape"])
    else:
        shape = b.needed_ints(node, 1)
    if not attrs.get("allowzero", 0):
        shape = [in_shape[i] if s == 0 else s for i, s in enumerate(shape)]
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        shape[shape.index(-1)] = math.prod(in_shape) // known if known else 0
    b.emit(OpKind.RESHAPE, [node.input[0]], [node.output[0]], {"shape": shape}, node.op_type)


def _setting_input(op: OpKind, attr: str) -> Converter:
    def convert(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
        b.emit(op, [node.input[0]], [node.output[0]], {attr: b.ints(node, 1)}, node.op_type)
    return convert


CONVERTERS.update({"Slice": _slice, "Pad": _pad, "Split": _split, "Reshape": _reshape,
                   "Expand": _setting_input(OpKind.EXPAND, "shape"),
                   "Tile": _setting_input(OpKind.TILE, "repeats"),
                   "Dropout": _dropout, "BatchNormalization": _batch_norm, "Clip": _clip,
                   "GroupNormalization": _group_norm, "Where": _where})


def _cast(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    from lipcheck.rules.structural import ONNX_DTYPES

    target = ONNX_DTYPES.get(int(attrs.get("to", 1)))
    if target is None:
        raise refuse(b, node, f"cast to ONNX type {attrs.get('to')}")
    if not b.is_constant(node.input[0]) and not target.is_floating_point:
        raise refuse(b, node, "cast of an input-dependent value to an integer type")
    b.emit(OpKind.CAST, [node.input[0]], [node.output[0]], {"to": int(attrs.get("to", 1))},
           node.op_type)


def _cast_like(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """CastLike-15: Cast to the element type of the second input."""
    from lipcheck.rules.structural import ONNX_DTYPES

    codes = {dtype: code for code, dtype in ONNX_DTYPES.items()}
    target = b.values[node.input[1]].dtype
    if target not in codes:
        raise refuse(b, node, f"cast like a {target} value")
    _cast(b, node, {"to": codes[target]})


CONVERTERS["Cast"] = _cast
CONVERTERS["CastLike"] = _cast_like


def _prelu(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    """PRelu-6 and older take a per-channel slope of shape (C,): align it on axis 1."""
    x, slope = node.input[0], node.input[1]
    rank, s = len(b.shape(x)), b.values[slope]
    if b.opset < 7 and s.dim() == 1 and rank > 2 and b.is_constant(slope):
        aligned = b.temp(slope)
        b.set_constant(aligned, s.reshape((-1,) + (1,) * (rank - 2)))
        slope = aligned
    b.emit(OpKind.PRELU, [x, slope], [node.output[0]], {}, node.op_type)


CONVERTERS["PRelu"] = _prelu
