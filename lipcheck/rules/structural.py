"""Structural ops: reshapes, copies, selections, concatenation, resizing.

Most of them are *selection* operators: every output entry is a copy of one input
entry or a constant. Their linear part is a 0/1 matrix with at most one 1 per row,
so J^T J is diagonal with the number of copies of each input entry on the diagonal
and the operator norm is exactly sqrt(max copies). The multiplicity is measured on
the real geometry by running the op on an index tensor and counting.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from lipcheck.graph import Node, OpKind
from lipcheck.rules.registry import (
    BoundContext,
    Merge,
    NodeBound,
    Rule,
    analytic,
    register,
    unbounded,
)
from lipcheck.rules.resize import resize
from lipcheck.spectral.affine import affine_bound

FAMILY = "structural"
SELECTION_SUMMARY = "sqrt(max copies of one input entry), counted on the real geometry (exact)"

# ONNX TensorProto element types -> torch dtypes
ONNX_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32,
               7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64,
               16: torch.bfloat16}


def axis_index(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def copy_multiplicity(node: Node, ctx: BoundContext) -> int:
    """Largest number of output entries that copy one input entry."""
    from lipcheck.rules.registry import get_rule

    (position,) = ctx.dynamic(node)
    shape = tuple(node.input_shapes[position])
    count = math.prod(shape)
    inputs = [ctx.graph.constants.get(v) if v else None for v in node.inputs]
    inputs[position] = torch.arange(1, count + 1, dtype=torch.float64).reshape(shape)
    probe = dataclasses.replace(node, attrs={**node.attrs, "value": 0.0})  # constants -> 0
    with torch.no_grad():
        # An absent optional input is None; only rules with optional inputs read it.
        outputs = get_rule(node.op).run(probe, inputs)  # type: ignore[arg-type]
    flat = torch.cat([o.reshape(-1) for o in outputs]).round().long()
    if flat.numel() == 0:
        return 0
    return int(torch.bincount(flat, minlength=count + 1)[1:].max())


def selection_bound(node: Node, ctx: BoundContext) -> NodeBound:
    if len(ctx.dynamic(node)) != 1 or ctx.dynamic(node)[0] != 0:
        return unbounded(f"{node.op.value} whose indices or shape depend on the input")
    copies = copy_multiplicity(node, ctx)
    return NodeBound(value=math.sqrt(copies), method="analytic", certified=True,
                     detail=f"selection operator, each input entry copied at most {copies}x")


def _selection(op: OpKind, run) -> None:
    register(Rule(op, FAMILY, run, selection_bound, SELECTION_SUMMARY, affine=True))


def _identity_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [inputs[0]] * max(1, len(node.outputs))


def _flatten_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x = inputs[0]
    axis = axis_index(int(node.attrs.get("axis", 1)), x.dim())
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


def _reshape_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [inputs[0].reshape([int(s) for s in node.attrs["shape"]])]


def _transpose_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x = inputs[0]
    perm = node.attrs.get("perm") or list(reversed(range(x.dim())))
    return [x.permute(*[int(p) for p in perm])]


def _squeeze_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x = inputs[0]
    axes = node.attrs.get("axes")
    if axes is None:
        return [x.reshape([s for s in x.shape if s != 1])]
    drop = {axis_index(int(a), x.dim()) for a in axes}
    return [x.reshape([s for i, s in enumerate(x.shape) if i not in drop])]


def _unsqueeze_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x = inputs[0]
    rank = x.dim() + len(node.attrs["axes"])
    new = {axis_index(int(a), rank) for a in node.attrs["axes"]}
    dims = iter(x.shape)
    return [x.reshape([1 if i in new else next(dims) for i in range(rank)])]


def _slice_indices(dim: int, start: int, end: int, step: int) -> range:
    """ONNX Slice clamping for one axis."""
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return range(min(max(start, 0), dim), min(max(end, 0), dim), step)
    return range(min(max(start, 0), dim - 1), min(max(end, -1), dim - 1), step)


def _slice_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x = inputs[0]
    starts, ends = node.attrs["starts"], node.attrs["ends"]
    axes = node.attrs.get("axes") or list(range(len(starts)))
    steps = node.attrs.get("steps") or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=False):
        axis = axis_index(int(axis), x.dim())
        idx = _slice_indices(x.shape[axis], int(start), int(end), int(step))
        x = x.index_select(axis, torch.tensor(list(idx), dtype=torch.long, device=x.device))
    return [x]


def _gather_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x, idx = inputs[0], inputs[1].long()
    axis = axis_index(int(node.attrs.get("axis", 0)), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1).to(x.device))
    return [out.reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])]


def _expand_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x = inputs[0]
    shape = torch.broadcast_shapes(x.shape, tuple(int(s) for s in node.attrs["shape"]))
    return [torch.broadcast_to(x, shape).contiguous()]


def _tile_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [inputs[0].repeat(*[int(r) for r in node.attrs["repeats"]])]


def _pad_index(dim: int, before: int, after: int, mode: str) -> torch.Tensor:
    """Source index of every output position along one axis; -1 = the constant."""
    pos = torch.arange(-before, dim + after)
    if mode == "constant":
        return torch.where((pos >= 0) & (pos < dim), pos, -1)
    if mode == "edge":
        return pos.clamp(0, dim - 1)
    if mode == "wrap":
        return pos % dim
    if dim == 1:
        return torch.zeros_like(pos)
    period = 2 * (dim - 1)  # reflect
    folded = pos % period
    return torch.where(folded < dim, folded, period - folded)


def _pad_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x = inputs[0]
    pads, rank = [int(p) for p in node.attrs["pads"]], x.dim()
    mode, value = str(node.attrs.get("mode", "constant")), float(node.attrs.get("value", 0.0))
    for axis in range(rank):
        before, after = pads[axis], pads[axis + rank]
        if before == 0 and after == 0:
            continue
        idx = _pad_index(x.shape[axis], before, after, mode).to(x.device)
        filler = torch.full_like(x.narrow(axis, 0, 1), value)
        idx = torch.where(idx < 0, x.shape[axis], idx)
        x = torch.cat([x, filler], dim=axis).index_select(axis, idx)
    return [x]


def _concat_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.cat(inputs, dim=int(node.attrs.get("axis", 0)))]


def _concat_bound(node: Node, ctx: BoundContext) -> NodeBound:
    return analytic(1.0, Merge.RSS, "disjoint output blocks: sqrt(sum L_i^2)")


def _split_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x = inputs[0]
    axis = axis_index(int(node.attrs.get("axis", 0)), x.dim())
    sizes = node.attrs.get("split")
    if sizes is None:
        n = len(node.outputs)
        sizes = [math.ceil(x.shape[axis] / n)] * (n - 1)
        sizes.append(x.shape[axis] - sum(sizes))
    return list(torch.split(x, [int(s) for s in sizes], dim=axis))


def _depth_to_space_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x, bs = inputs[0], int(node.attrs["blocksize"])
    b, c, h, w = x.shape
    if node.attrs.get("mode", "DCR") == "CRD":
        y = x.reshape(b, c // bs**2, bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    else:
        y = x.reshape(b, bs, bs, c // bs**2, h, w).permute(0, 3, 4, 1, 5, 2)
    return [y.reshape(b, c // bs**2, h * bs, w * bs)]


def _space_to_depth_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x, bs = inputs[0], int(node.attrs["blocksize"])
    b, c, h, w = x.shape
    y = x.reshape(b, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
    return [y.reshape(b, c * bs * bs, h // bs, w // bs)]


def _cast_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [inputs[0].to(ONNX_DTYPES.get(int(node.attrs.get("to", 1)), torch.float32))]


def _cast_bound(node: Node, ctx: BoundContext) -> NodeBound:
    if not ONNX_DTYPES.get(int(node.attrs.get("to", 1)), torch.float32).is_floating_point:
        return unbounded("Cast to an integer type is piecewise constant (not continuous)")
    return analytic(1.0, detail="float-to-float cast (identity up to rounding)")


def _resize_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [resize(inputs[0], node.attrs)]


def _resize_bound(node: Node, ctx: BoundContext) -> NodeBound:
    if node.attrs.get("mode", "nearest") == "nearest":
        return selection_bound(node, ctx)
    return affine_bound(node, ctx)


for _op, _run in [(OpKind.IDENTITY, _identity_run), (OpKind.DROPOUT, _identity_run),
                  (OpKind.FLATTEN, _flatten_run), (OpKind.RESHAPE, _reshape_run),
                  (OpKind.TRANSPOSE, _transpose_run), (OpKind.SQUEEZE, _squeeze_run),
                  (OpKind.UNSQUEEZE, _unsqueeze_run), (OpKind.SLICE, _slice_run),
                  (OpKind.GATHER, _gather_run), (OpKind.EXPAND, _expand_run),
                  (OpKind.TILE, _tile_run), (OpKind.PAD, _pad_run), (OpKind.SPLIT, _split_run),
                  (OpKind.DEPTH_TO_SPACE, _depth_to_space_run),
                  (OpKind.SPACE_TO_DEPTH, _space_to_depth_run)]:
    _selection(_op, _run)
register(Rule(OpKind.CONCAT, FAMILY, _concat_run, _concat_bound,
              "1 with sqrt(sum L_i^2) over the inputs (disjoint blocks; constants add 0)"))
register(Rule(OpKind.CAST, FAMILY, _cast_run, _cast_bound, "1 (float to float)"))
register(Rule(OpKind.RESIZE, FAMILY, _resize_run, _resize_bound,
              "nearest: sqrt(max copies) (exact); linear: operator norm of the real map",
              affine=True))
