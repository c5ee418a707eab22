"""Ops that only ever compute constants (shape arithmetic, masks, ranges).

They are evaluated with torch at load time and never reach the IR: if one of them
sits on the data path (an input depends on the model input) the loader refuses it.
Shape and Size only need the shape of their input, which is always known. (Where is
in onnx_ops: folded on constants, lowered when only its condition is constant.)
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx
import torch

from lipcheck.loaders.onnx_build import Builder
from lipcheck.loaders.onnx_ops import CONVERTERS, refuse

FoldFn = Callable[[list[torch.Tensor], dict[str, Any]], torch.Tensor]
FOLDERS: dict[str, FoldFn] = {}


def _shape(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    dims = list(b.shape(node.input[0]))
    start, end = attrs.get("start", 0), attrs.get("end", len(dims))
    b.set_constant(node.output[0], torch.tensor(dims[start:end] if end != 0 else [],
                                                dtype=torch.int64))


def _size(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    b.set_constant(node.output[0], torch.tensor(int(b.values[node.input[0]].numel())))


def _folded(fn: FoldFn):
    def convert(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
        if not b.all_constant(node):
            raise refuse(b, node, "this op is only supported on constants (shape arithmetic), "
                                  "but its input depends on the model input")
        args = [b.values[v] if v else None for v in node.input]
        # An absent optional input is None; only folders with optional inputs read it.
        b.set_constant(node.output[0], fn(args, attrs))  # type: ignore[arg-type]
    return convert


def _constant(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    if "value" in attrs:
        value = attrs["value"]
    elif "value_float" in attrs:
        value = torch.tensor(float(attrs["value_float"]))
    elif "value_floats" in attrs:
        value = torch.tensor([float(v) for v in attrs["value_floats"]])
    elif "value_int" in attrs:
        value = torch.tensor(int(attrs["value_int"]))
    elif "value_ints" in attrs:
        value = torch.tensor([int(v) for v in attrs["value_ints"]], dtype=torch.int64)
    else:
        raise refuse(b, node, "only tensor, float(s) and int(s) values are supported")
    b.set_constant(node.output[0], value)


def _constant_of_shape(args: list[torch.Tensor], attrs: dict[str, Any]) -> torch.Tensor:
    value = attrs.get("value", torch.zeros(1))
    return torch.full([int(v) for v in args[0].tolist()], value.reshape(-1)[0].item(),
                      dtype=value.dtype)


def _range(args: list[torch.Tensor], attrs: dict[str, Any]) -> torch.Tensor:
    start, limit, delta = (a.reshape(-1)[0] for a in args)
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=args[0].dtype)


def _nonzero(args: list[torch.Tensor], attrs: dict[str, Any]) -> torch.Tensor:
    return torch.nonzero(args[0]).T.contiguous()


def _reduce_prod(args: list[torch.Tensor], attrs: dict[str, Any]) -> torch.Tensor:
    x = args[0]
    axes = attrs.get("axes") or (args[1].tolist() if len(args) > 1 and args[1] is not None
                                 else list(range(x.dim())))
    out = x
    for axis in sorted((a % x.dim() for a in axes), reverse=True):
        out = out.prod(dim=axis, keepdim=bool(attrs.get("keepdims", 1)))
    return out


def _binary(fn) -> FoldFn:
    return lambda args, attrs: fn(args[0], args[1])


FOLDERS.update({
    "ConstantOfShape": _constant_of_shape, "Range": _range,
    "NonZero": _nonzero, "ReduceProd": _reduce_prod,
    "Equal": _binary(torch.eq), "Less": _binary(torch.lt), "Greater": _binary(torch.gt),
    "LessOrEqual": _binary(torch.le), "GreaterOrEqual": _binary(torch.ge),
    "And": _binary(torch.logical_and), "Or": _binary(torch.logical_or),
    "Xor": _binary(torch.logical_xor), "Mod": _binary(torch.remainder),
    "Not": lambda args, attrs: torch.logical_not(args[0]),
    "Floor": lambda args, attrs: torch.floor(args[0]),
    "Ceil": lambda args, attrs: torch.ceil(args[0]),
    "Round": lambda args, attrs: torch.round(args[0]),
    "Sign": lambda args, attrs: torch.sign(args[0]),
})
for _name, _fn in FOLDERS.items():
    CONVERTERS[_name] = _folded(_fn)
CONVERTERS.update({"Shape": _shape, "Size": _size, "Constant": _constant})
