"""auto_pad and ConvTranspose output_shape resolved to explicit pads (ONNX formulas)."""
from __future__ import annotations

from typing import Any


def _same_pads(total: int, upper: bool) -> tuple[int, int]:
    small, large = total // 2, total - total // 2
    return (small, large) if upper else (large, small)


def resolve_auto_pad(attrs: dict[str, Any], in_shape: tuple[int, ...]) -> dict[str, Any]:
    """Conv and pooling: auto_pad -> pads [b_1..b_d, e_1..e_d]."""
    spatial = in_shape[2:]
    d = len(spatial)
    mode = attrs.get("auto_pad", "NOTSET")
    out = {k: v for k, v in attrs.items() if k != "auto_pad"}
    kernel = list(attrs["kernel_shape"])
    strides = list(attrs.get("strides") or [1] * d)
    dilations = list(attrs.get("dilations") or [1] * d)
    if mode == "VALID":
        out["pads"] = [0] * (2 * d)
    elif mode in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for n, k, s, dil in zip(spatial, kernel, strides, dilations, strict=False):
            total = max(0, (-(-n // s) - 1) * s + (k - 1) * dil + 1 - n)
            begin, end = _same_pads(total, mode == "SAME_UPPER")
            begins.append(begin)
            ends.append(end)
        out["pads"] = begins + ends
    else:
        out["pads"] = list(attrs.get("pads") or [0] * (2 * d))
    return out


def conv_transpose_pads(attrs: dict[str, Any], in_shape: tuple[int, ...]) -> dict[str, Any]:
    """ConvTranspose: output_shape / auto_pad -> pads + output_padding."""
    spatial = in_shape[2:]
    d = len(spatial)
    mode = attrs.get("auto_pad", "NOTSET")
    out = {k: v for k, v in attrs.items() if k not in ("auto_pad", "output_shape")}
    kernel = list(attrs["kernel_shape"])
    strides = list(attrs.get("strides") or [1] * d)
    dilations = list(attrs.get("dilations") or [1] * d)
    out_pad = list(attrs.get("output_padding") or [0] * d)
    target = list(attrs.get("output_shape") or [])[-d:] if attrs.get("output_shape") else None
    if target is None and mode in ("SAME_UPPER", "SAME_LOWER"):
        target = [n * s for n, s in zip(spatial, strides, strict=False)]
    if target is None:
        out["pads"] = [0] * (2 * d) if mode == "VALID" else list(attrs.get("pads") or [0] * (2 * d))
        out["output_padding"] = out_pad
        return out
    begins, ends = [], []
    for a in range(d):
        full = strides[a] * (spatial[a] - 1) + out_pad[a] + (kernel[a] - 1) * dilations[a] + 1
        total = full - target[a]
        if total < 0:
            out_pad[a] -= total
            total = 0
        begin, end = _same_pads(total, mode == "SAME_UPPER")
        begins.append(begin)
        ends.append(end)
    out["pads"], out["output_padding"] = begins + ends, out_pad
    return out
