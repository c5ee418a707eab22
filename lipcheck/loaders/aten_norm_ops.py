"""ATen -> IR converters for the normalisations: batch norm (running statistics), layer,
group, instance and RMS norm (statistics of the input; registered in aten_registry.TABLE).

Missing affine parameters become constant ones / zeros so that every IR node has the
ONNX inputs its rule reads (the scale is always present)."""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from lipcheck.graph import OpKind
from lipcheck.loaders.aten_registry import args, converts
from lipcheck.loaders.torch_lowering import Lowering, Unsupported, Value, as_node


def _param(low: Lowering, node: fx.Node, value: Any, shape: list[int], fill: float,
           what: str) -> str:
    """The IR value of an optional weight/bias: the given one, or a constant fill."""
    if value is not None:
        return low.value(value)
    return low.add_const(torch.full(shape, fill), f"{node.name}.{what}")


def _bn_inputs(low: Lowering, node: fx.Node, a: dict[str, Any]) -> list[str]:
    channels = low.shape(a["input"])[1]
    weight, bias = a.get("weight"), a.get("bias")
    scale = low.value(weight) if weight is not None else low.add_const(
        torch.ones(channels), f"{node.name}.weight")
    shift = low.value(bias) if bias is not None else low.add_const(
        torch.zeros(channels), f"{node.name}.bias")
    mean, var = a["running_mean"], a["running_var"]
    if mean is None or var is None:
        raise Unsupported("batch_norm without running statistics")
    names = [scale, shift, low.value(mean), low.value(var)]
    if any(not low.is_const(n) for n in names):
        raise Unsupported("batch_norm with input-dependent parameters")
    return [low.value(a["input"])] + names


@converts("aten.batch_norm.default")
def _batch_norm(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    if a["training"]:
        raise Unsupported("batch_norm in training mode (batch statistics)")
    return low.emit(OpKind.BATCH_NORM, _bn_inputs(low, node, a), {"epsilon": float(a["eps"])})


@converts("aten._native_batch_norm_legit_no_training.default")
def _batch_norm_legit(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    y = low.emit(OpKind.BATCH_NORM, _bn_inputs(low, node, a), {"epsilon": float(a["eps"])})
    return [y, None, None]


def _layer_norm_node(low: Lowering, node: fx.Node) -> str:
    a = args(node)
    shape = list(a["normalized_shape"])
    inputs = [low.value(a["input"]), _param(low, node, a.get("weight"), shape, 1.0, "weight")]
    if a.get("bias") is not None:
        inputs.append(low.value(a["bias"]))
    return low.emit(OpKind.LAYER_NORM, inputs, {"axis": -len(shape), "epsilon": float(a["eps"])})


@converts("aten.layer_norm.default")
def _layer_norm(low: Lowering, node: fx.Node) -> Value:
    return _layer_norm_node(low, node)


@converts("aten.native_layer_norm.default")
def _native_layer_norm(low: Lowering, node: fx.Node) -> Value:
    return [_layer_norm_node(low, node), None, None]


def _group_norm_node(low: Lowering, node: fx.Node, groups: int) -> str:
    a = args(node)
    channels = low.shape(a["input"])[1]
    inputs = [low.value(a["input"]),
              _param(low, node, a.get("weight"), [channels], 1.0, "weight"),
              _param(low, node, a.get("bias"), [channels], 0.0, "bias")]
    return low.emit(OpKind.GROUP_NORM, inputs, {"num_groups": int(groups),
                                                "epsilon": float(a["eps"])})


@converts("aten.group_norm.default")
def _group_norm(low: Lowering, node: fx.Node) -> Value:
    return _group_norm_node(low, node, args(node)["num_groups"])


@converts("aten.native_group_norm.default")
def _native_group_norm(low: Lowering, node: fx.Node) -> Value:
    return [_group_norm_node(low, node, args(node)["group"]), None, None]


@converts("aten.instance_norm.default")
def _instance_norm(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    if not a["use_input_stats"]:  # running statistics: a batch norm
        return low.emit(OpKind.BATCH_NORM, _bn_inputs(low, node, a), {"epsilon": float(a["eps"])})
    channels = low.shape(a["input"])[1]
    inputs = [low.value(a["input"]),
              _param(low, node, a.get("weight"), [channels], 1.0, "weight"),
              _param(low, node, a.get("bias"), [channels], 0.0, "bias")]
    return low.emit(OpKind.INSTANCE_NORM, inputs, {"epsilon": float(a["eps"])})


@converts("aten.rms_norm.default")
def _rms_norm(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    shape = list(a["normalized_shape"])
    eps = a.get("eps")
    if eps is None:
        eps = torch.finfo(as_node(node.args[0]).meta["val"].dtype).eps
    inputs = [low.value(a["input"]), _param(low, node, a.get("weight"), shape, 1.0, "weight")]
    return low.emit(OpKind.RMS_NORM, inputs, {"axis": -len(shape), "epsilon": float(eps)})
