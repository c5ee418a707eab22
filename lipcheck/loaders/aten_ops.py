"""ATen -> IR converters for the affine ops and activations.

Each converter reads the FX node's arguments by schema name (`args`) and emits IR
nodes through the `Lowering`; `@converts` registers it in `aten_registry.TABLE`, for
both the pre-dispatch ops torch.export produces (linear, conv2d, ...) and the core
ATen ones after `run_decompositions()` (addmm, convolution, ...). Normalisation,
pooling, structural/arithmetic and attention ops are in their own `aten_*` files.
"""
from __future__ import annotations

from typing import Any

import torch.fx as fx

from lipcheck.graph import OpKind
from lipcheck.loaders.aten_registry import TABLE, args, converts, ints  # noqa: F401 (TABLE)
from lipcheck.loaders.torch_lowering import Converter, Lowering, Unsupported, Value, as_int


def same_pads(kernel: list[int], dilations: list[int]) -> list[int]:
    """torch's padding='same': the extra odd pixel goes at the end."""
    total = [d * (k - 1) for k, d in zip(kernel, dilations, strict=True)]
    return [t // 2 for t in total] + [t - t // 2 for t in total]


# ----- affine ----------------------------------------------------------------------
@converts("aten.linear.default")
def _linear(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    x, weight = low.value(a["input"]), low.tensor(a["weight"])
    bias = a.get("bias")
    if weight is None:
        raise Unsupported("linear with an input-dependent weight")
    inputs = [x, low.value(a["weight"])] + ([low.value(bias)] if bias is not None else [])
    if len(low.shape(a["input"])) == 2:
        return low.emit(OpKind.GEMM, inputs, {"transB": 1})
    y = low.emit(OpKind.MATMUL, [x, low.add_const(weight.T.contiguous(), f"{node.name}.weight_t")],
                 suffix="/matmul" if bias is not None else "")
    return low.emit(OpKind.ADD, [y, low.value(bias)], suffix="/bias") if bias is not None else y


@converts("aten.addmm.default")
def _addmm(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    attrs = {"alpha": float(a["alpha"]), "beta": float(a["beta"])}
    inputs = [low.value(a["mat1"]), low.value(a["mat2"]), low.value(a["self"])]
    return low.emit(OpKind.GEMM, inputs, attrs)


@converts("aten.mm.default", "aten.matmul.default", "aten.bmm.default")
def _matmul(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    return low.emit(OpKind.MATMUL, [low.value(a["self"]), low.value(a[_second(a)])])


def _second(a: dict[str, Any]) -> str:
    return "mat2" if "mat2" in a else "other"


def _conv_attrs(a: dict[str, Any], kernel: list[int]) -> dict[str, Any]:
    dims = len(kernel)
    strides, dilations = ints(a["stride"], dims), ints(a["dilation"], dims)
    padding = a["padding"]
    if padding == "same":
        pads = same_pads(kernel, dilations)
    elif padding == "valid":
        pads = [0] * (2 * dims)
    else:
        pads = ints(padding, dims) * 2
    return {"strides": strides, "dilations": dilations, "pads": pads,
            "kernel_shape": kernel, "group": int(a.get("groups", 1))}


def _conv_inputs(low: Lowering, a: dict[str, Any]) -> list[str]:
    if low.tensor(a["weight"]) is None:
        raise Unsupported("convolution with an input-dependent kernel")
    inputs = [low.value(a["input"]), low.value(a["weight"])]
    return inputs + ([low.value(a["bias"])] if a.get("bias") is not None else [])


@converts("aten.conv1d.default", "aten.conv2d.default", "aten.conv3d.default",
          "aten.conv1d.padding", "aten.conv2d.padding", "aten.conv3d.padding")
def _conv(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    kernel = list(low.shape(a["weight"])[2:])
    return low.emit(OpKind.CONV, _conv_inputs(low, a), _conv_attrs(a, kernel))


@converts("aten.conv_transpose1d.default", "aten.conv_transpose2d.input",
          "aten.conv_transpose3d.input")
def _conv_transpose(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    kernel = list(low.shape(a["weight"])[2:])
    attrs = _conv_attrs(a, kernel)
    attrs["output_padding"] = ints(a["output_padding"], len(kernel))
    return low.emit(OpKind.CONV_TRANSPOSE, _conv_inputs(low, a), attrs)


@converts("aten.convolution.default", "aten._convolution.default")
def _convolution(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    kernel = list(low.shape(a["weight"])[2:])
    attrs = _conv_attrs(a, kernel)
    if not a["transposed"]:
        return low.emit(OpKind.CONV, _conv_inputs(low, a), attrs)
    attrs["output_padding"] = ints(a["output_padding"], len(kernel))
    return low.emit(OpKind.CONV_TRANSPOSE, _conv_inputs(low, a), attrs)


# ----- activations -----------------------------------------------------------------
def _unary(op: OpKind, **fixed: Any) -> Converter:
    def convert(low: Lowering, node: fx.Node) -> Value:
        return low.emit(op, [low.value(node.args[0])], dict(fixed))
    return convert


for _names, _op, _fixed in [
        (("aten.relu.default", "aten.relu_.default"), OpKind.RELU, {}),
        (("aten.sigmoid.default", "aten.sigmoid_.default"), OpKind.SIGMOID, {}),
        (("aten.tanh.default", "aten.tanh_.default"), OpKind.TANH, {}),
        (("aten.silu.default", "aten.silu_.default"), OpKind.SILU, {}),
        (("aten.mish.default", "aten.mish_.default"), OpKind.MISH, {}),
        (("aten.hardswish.default", "aten.hardswish_.default"), OpKind.HARD_SWISH, {}),
        (("aten.hardsigmoid.default", "aten.hardsigmoid_.default"), OpKind.HARD_SIGMOID,
         {"alpha": 1 / 6, "beta": 0.5}),
        (("aten.relu6.default", "aten.relu6_.default"), OpKind.CLIP, {"min": 0.0, "max": 6.0}),
        (("aten.abs.default",), OpKind.ABS, {}),
        (("aten.neg.default",), OpKind.NEG, {}),
        (("aten.erf.default",), OpKind.ERF, {}),
        (("aten.exp.default",), OpKind.EXP, {}),
        (("aten.log.default",), OpKind.LOG, {}),
        (("aten.sqrt.default",), OpKind.SQRT, {}),
        (("aten.reciprocal.default",), OpKind.RECIPROCAL, {})]:
    converts(*_names)(_unary(_op, **_fixed))


@converts("aten.rsqrt.default")
def _rsqrt(low: Lowering, node: fx.Node) -> Value:
    root = low.emit(OpKind.SQRT, [low.value(node.args[0])], suffix="/sqrt")
    return low.emit(OpKind.RECIPROCAL, [root])


@converts("aten.leaky_relu.default", "aten.leaky_relu_.default")
def _leaky_relu(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    attrs = {"alpha": float(a["negative_slope"])}
    return low.emit(OpKind.LEAKY_RELU, [low.value(a["self"])], attrs)


@converts("aten.gelu.default", "aten.gelu_.default")
def _gelu(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    return low.emit(OpKind.GELU, [low.value(a["self"])], {"approximate": str(a["approximate"])})


@converts("aten.elu.default", "aten.elu_.default")
def _elu(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    if float(a["scale"]) != 1.0 or float(a["input_scale"]) != 1.0:
        raise Unsupported(f"elu with scale={a['scale']}, input_scale={a['input_scale']}")
    return low.emit(OpKind.ELU, [low.value(a["self"])], {"alpha": float(a["alpha"])})


@converts("aten.selu.default", "aten.selu_.default")
def _selu(low: Lowering, node: fx.Node) -> Value:
    return low.emit(OpKind.SELU, [low.value(node.args[0])])


@converts("aten.celu.default", "aten.celu_.default")
def _celu(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    return low.emit(OpKind.CELU, [low.value(a["self"])], {"alpha": float(a["alpha"])})


@converts("aten.softplus.default")
def _softplus(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    attrs = {"beta": float(a["beta"]), "threshold": float(a["threshold"])}
    return low.emit(OpKind.SOFTPLUS, [low.value(a["self"])], attrs)


@converts("aten.hardtanh.default", "aten.hardtanh_.default")
def _hardtanh(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    attrs = {"min": float(a["min_val"]), "max": float(a["max_val"])}
    return low.emit(OpKind.CLIP, [low.value(a["self"])], attrs)


@converts("aten.clamp.default", "aten.clamp_.default", "aten.clamp.Tensor",
          "aten.clamp_min.default", "aten.clamp_max.default")
def _clamp(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    attrs = {}
    for key, attr in (("min", "min"), ("max", "max")):
        bound = a.get(key)
        if isinstance(bound, fx.Node):
            tensor = low.tensor(bound)
            if tensor is None or tensor.numel() != 1:
                raise Unsupported(f"clamp with a tensor {key}")
            bound = float(tensor)
        if bound is not None:
            attrs[attr] = float(bound)
    return low.emit(OpKind.CLIP, [low.value(a["self"])], attrs)


@converts("aten.prelu.default", "aten._prelu_kernel.default")
def _prelu(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    slope = low.tensor(a["weight"])
    if slope is None:
        raise Unsupported("prelu with an input-dependent slope")
    rank = len(low.shape(a["self"]))
    if slope.numel() > 1 and rank > 1 and slope.dim() == 1:
        slope = slope.reshape((-1,) + (1,) * (rank - 2))
    slope_name = low.add_const(slope, f"{node.name}.slope")
    return low.emit(OpKind.PRELU, [low.value(a["self"]), slope_name])


def _softmax(op: OpKind) -> Converter:
    def convert(low: Lowering, node: fx.Node) -> Value:
        return low.emit(op, [low.value(node.args[0])], {"axis": as_int(node.args[1])})
    return convert


converts("aten.softmax.int", "aten._softmax.default")(_softmax(OpKind.SOFTMAX))
converts("aten.log_softmax.int", "aten._log_softmax.default")(_softmax(OpKind.LOG_SOFTMAX))

