"""ONNX Resize (nearest and linear), one axis at a time.

Attributes (normalised by the loaders): `sizes` (full-rank output shape), optional
`scales` (full rank; ONNX uses them, not sizes/in, in the coordinate transform),
`mode`, `coordinate_transformation_mode`, `nearest_mode`.
"""
from __future__ import annotations

from typing import Any

import torch


def source_coordinates(n_in: int, n_out: int, scale: float, mode: str) -> torch.Tensor:
    """Position in the input of every output index along one axis (ONNX formulas)."""
    x = torch.arange(n_out, dtype=torch.float64)
    if mode == "align_corners":
        return x * (n_in - 1) / (n_out - 1) if n_out > 1 else torch.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if n_out > 1 else torch.zeros_like(x)
    if mode == "half_pixel_symmetric":
        adjustment = n_out / (scale * n_in)
        offset = n_in / 2 * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    raise ValueError(f"Resize coordinate_transformation_mode {mode!r} is not supported")


def nearest_index(coords: torch.Tensor, n_in: int, rounding: str) -> torch.Tensor:
    if rounding == "round_prefer_ceil":
        idx = torch.floor(coords + 0.5)
    elif rounding == "floor":
        idx = torch.floor(coords)
    elif rounding == "ceil":
        idx = torch.ceil(coords)
    else:  # round_prefer_floor
        idx = torch.ceil(coords - 0.5)
    return idx.long().clamp(0, n_in - 1)


def linear_weights(coords: torch.Tensor, n_in: int) -> torch.Tensor:
    """(n_out, n_in) interpolation matrix; coordinates clamp to the edge like onnxruntime."""
    coords = coords.clamp(0, n_in - 1)
    low = torch.floor(coords).long().clamp(0, n_in - 1)
    high = (low + 1).clamp(max=n_in - 1)
    frac = coords - low
    weights = torch.zeros(len(coords), n_in, dtype=torch.float64)
    rows = torch.arange(len(coords))
    weights.index_put_((rows, low), 1 - frac, accumulate=True)
    weights.index_put_((rows, high), frac, accumulate=True)
    return weights


def _resize_axis(x: torch.Tensor, axis: int, n_out: int, scale: float,
                 attrs: dict[str, Any]) -> torch.Tensor:
    n_in = x.shape[axis]
    coords = source_coordinates(n_in, n_out, scale,
                                str(attrs.get("coordinate_transformation_mode", "half_pixel")))
    mode = str(attrs.get("mode", "nearest"))
    if mode == "nearest":
        idx = nearest_index(coords, n_in, str(attrs.get("nearest_mode", "round_prefer_floor")))
        return x.index_select(axis, idx.to(x.device))
    if mode != "linear":
        raise ValueError(f"Resize mode {mode!r} is not supported")
    weights = linear_weights(coords, n_in).to(dtype=x.dtype, device=x.device)
    return torch.movedim(torch.movedim(x, axis, -1) @ weights.T, -1, axis)


def resize(x: torch.Tensor, attrs: dict[str, Any]) -> torch.Tensor:
    sizes = [int(s) for s in attrs["sizes"]]
    scales = attrs.get("scales")
    for axis, n_out in enumerate(sizes):
        scale = float(scales[axis]) if scales else n_out / x.shape[axis]
        if n_out != x.shape[axis] or scale != 1.0:
            x = _resize_axis(x, axis, n_out, scale, attrs)
    return x
