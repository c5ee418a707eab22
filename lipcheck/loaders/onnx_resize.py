"""Resize (opsets 10-19) and Upsample converters: scales/sizes -> concrete `sizes`."""
from __future__ import annotations

import math
from typing import Any

import onnx

from lipcheck.graph import OpKind
from lipcheck.loaders.onnx_build import Builder
from lipcheck.loaders.onnx_ops import CONVERTERS, refuse

SUPPORTED_COORDINATES = {"half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
                         "half_pixel_symmetric"}


def _emit(b: Builder, node: onnx.NodeProto, mode: str, scales: list[float] | None,
          sizes: list[int] | None, attrs: dict[str, Any]) -> None:
    in_shape = b.shape(node.input[0])
    if sizes is None:
        if scales is None or len(scales) != len(in_shape):
            raise refuse(b, node, f"scales must give one factor per axis ({len(in_shape)})")
        sizes = [int(math.floor(n * s)) for n, s in zip(in_shape, scales, strict=True)]
    settings = {"mode": mode, "sizes": sizes, "scales": scales,
                "coordinate_transformation_mode": attrs.get("coordinate_transformation_mode",
                                                            "half_pixel"),
                "nearest_mode": attrs.get("nearest_mode", "round_prefer_floor")}
    b.emit(OpKind.RESIZE, [node.input[0]], [node.output[0]], settings, node.op_type)


def _check(b: Builder, node: onnx.NodeProto, mode: str, attrs: dict[str, Any]) -> None:
    if mode not in ("nearest", "linear"):
        raise refuse(b, node, f"mode={mode!r} (nearest and linear are supported)")
    coords = attrs.get("coordinate_transformation_mode", "half_pixel")
    if coords not in SUPPORTED_COORDINATES:
        raise refuse(b, node, f"coordinate_transformation_mode={coords!r}")
    if attrs.get("antialias", 0) or attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise refuse(b, node, "antialias / keep_aspect_ratio_policy are not supported")


def _float_list(t) -> list[float] | None:
    return None if t is None or t.numel() == 0 else [float(v) for v in t.reshape(-1).tolist()]


def _resize(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    mode = attrs.get("mode", "nearest")
    if b.opset < 11:  # Resize-10: X, scales; asymmetric coordinates
        attrs = {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
        _check(b, node, mode, attrs)
        _emit(b, node, mode, _float_list(b.const(node, 1)), None, attrs)
        return
    _check(b, node, mode, attrs)
    scales, sizes = _float_list(b.const(node, 2)), b.ints(node, 3)
    axes = attrs.get("axes")
    if axes is not None:
        rank = len(b.shape(node.input[0]))
        full_scales, full_sizes = [1.0] * rank, list(b.shape(node.input[0]))
        for k, axis in enumerate(axes):
            if scales:
                full_scales[axis % rank] = scales[k]
            if sizes:
                full_sizes[axis % rank] = sizes[k]
        scales, sizes = (full_scales if scales else None), (full_sizes if sizes else None)
    _emit(b, node, mode, None if sizes else scales, sizes or None, attrs)


def _upsample(b: Builder, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    mode = attrs.get("mode", "nearest")
    mode = "linear" if mode == "bilinear" else mode
    scales = attrs.get("scales") if b.opset < 9 else _float_list(b.const(node, 1))
    settings = {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    _check(b, node, mode, settings)
    if scales is None:
        raise refuse(b, node, "Upsample without scales")
    _emit(b, node, mode, [float(s) for s in scales], None, settings)


CONVERTERS["Resize"] = _resize
CONVERTERS["Upsample"] = _upsample
