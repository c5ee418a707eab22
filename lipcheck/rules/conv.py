"""Convolutions. Attributes follow ONNX with auto_pad resolved to explicit pads:
strides, dilations, pads = [begin_1..begin_d, end_1..end_d], group, and for the
transpose output_padding. The bound is the operator norm of the real operator."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lipcheck.graph import Node, OpKind
from lipcheck.rules.registry import BoundContext, NodeBound, Rule, register, unbounded
from lipcheck.spectral.affine import affine_bound

FAMILY = "conv"
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def conv_geometry(node: Node, dims: int) -> tuple[list[int], list[int], list[int], int]:
    strides = list(node.attrs.get("strides", [1] * dims))
    dilations = list(node.attrs.get("dilations", [1] * dims))
    pads = list(node.attrs.get("pads", [0] * (2 * dims)))
    return strides, dilations, pads, int(node.attrs.get("group", 1))


def _torch_pad(pads: list[int], dims: int) -> list[int]:
    """ONNX [b1..bd, e1..ed] to torch's F.pad order (last dim first)."""
    out: list[int] = []
    for axis in reversed(range(dims)):
        out += [pads[axis], pads[axis + dims]]
    return out


def _conv_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    dims = w.dim() - 2
    strides, dilations, pads, group = conv_geometry(node, dims)
    if pads[:dims] == pads[dims:]:
        return [_CONV[dims](x, w, b, strides, pads[:dims], dilations, group)]
    x = F.pad(x, _torch_pad(pads, dims))
    return [_CONV[dims](x, w, b, strides, 0, dilations, group)]


def _conv_bound(node: Node, ctx: BoundContext) -> NodeBound:
    if ctx.dynamic(node) != [0]:
        return unbounded(f"{node.op.value} with an input-dependent kernel is bilinear")
    return affine_bound(node, ctx)


register(Rule(OpKind.CONV, FAMILY, _conv_run, _conv_bound,
              "operator norm of the real operator (padding, stride, dilation, groups, input size)",
              affine=True))


def _conv_transpose_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    dims = w.dim() - 2
    strides, dilations, pads, group = conv_geometry(node, dims)
    out_pad = list(node.attrs.get("output_padding", [0] * dims))
    y = _CONV_T[dims](x, w, None, strides, 0, 0, group, dilations)
    y = F.pad(y, _torch_pad([0] * dims + out_pad, dims))
    index = [slice(None), slice(None)] + [
        slice(pads[a], y.shape[2 + a] - pads[a + dims]) for a in range(dims)]
    y = y[tuple(index)]
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * dims)
    return [y]


register(Rule(OpKind.CONV_TRANSPOSE, FAMILY, _conv_transpose_run, _conv_bound,
              "operator norm of the real operator (padding, stride, dilation, groups, output size)",
              affine=True))
