"""ATen -> IR converters for pooling and reductions (registered in aten_registry.TABLE)."""
from __future__ import annotations

from typing import Any

import torch.fx as fx

from lipcheck.graph import OpKind
from lipcheck.loaders.aten_registry import args, converts, ints
from lipcheck.loaders.torch_lowering import Lowering, Unsupported, Value


def _pool_attrs(a: dict[str, Any], dims: int) -> dict[str, Any]:
    kernel = ints(a["kernel_size"], dims)
    stride = a.get("stride") or kernel
    return {"kernel_shape": kernel, "strides": ints(stride, dims),
            "pads": ints(a.get("padding", 0), dims) * 2,
            "ceil_mode": int(bool(a.get("ceil_mode", False)))}


def _dims(low: Lowering, a: dict[str, Any]) -> int:
    return len(low.shape(a["self"])) - 2


@converts("aten.max_pool1d.default", "aten.max_pool2d.default", "aten.max_pool3d.default")
def _max_pool(low: Lowering, node: fx.Node) -> str:
    a = args(node)
    attrs = _pool_attrs(a, _dims(low, a))
    attrs["dilations"] = ints(a.get("dilation", 1), _dims(low, a))
    return low.emit(OpKind.MAX_POOL, [low.value(a["self"])], attrs)


@converts("aten.max_pool2d_with_indices.default", "aten.max_pool3d_with_indices.default")
def _max_pool_indices(low: Lowering, node: fx.Node) -> Value:
    return [_max_pool(low, node), None]


@converts("aten.avg_pool1d.default", "aten.avg_pool2d.default", "aten.avg_pool3d.default")
def _avg_pool(low: Lowering, node: fx.Node) -> Value:
    a = args(node)
    if a.get("divisor_override") is not None:
        raise Unsupported(f"avg_pool with divisor_override={a['divisor_override']}")
    attrs = _pool_attrs(a, _dims(low, a))
    attrs["count_include_pad"] = int(bool(a.get("count_include_pad", True)))
    return low.emit(OpKind.AVERAGE_POOL, [low.value(a["self"])], attrs)


def _adaptive_kernel(low: Lowering, a: dict[str, Any]) -> list[int] | None:
    """The kernel of an adaptive pool that is a plain pool, or None for a global one."""
    spatial = list(low.shape(a["self"])[2:])
    out = ints(a["output_size"], len(spatial))
    if all(o == 1 for o in out):
        return None
    if len(out) != len(spatial):  # shape[2:] assumes a batch axis
        raise Unsupported(f"adaptive pool to {out} on an input without a batch axis")
    if any(o is None or s % o for s, o in zip(spatial, out, strict=True)):
        raise Unsupported(f"adaptive pool from {spatial} to {out} (uneven windows)")
    return [s // o for s, o in zip(spatial, out, strict=True)]


def _adaptive(low: Lowering, node: fx.Node, global_op: OpKind, window_op: OpKind):
    """An adaptive pool as its global form (output 1) or an even-window pool."""
    a = args(node)
    kernel = _adaptive_kernel(low, a)
    x = low.value(a["self"])
    if kernel is None:
        return low.emit(global_op, [x])
    attrs = {"kernel_shape": kernel, "strides": kernel, "pads": [0] * (2 * len(kernel))}
    return low.emit(window_op, [x], attrs)


@converts("aten.adaptive_avg_pool1d.default", "aten.adaptive_avg_pool2d.default",
          "aten.adaptive_avg_pool3d.default", "aten._adaptive_avg_pool2d.default",
          "aten._adaptive_avg_pool3d.default")
def _adaptive_avg(low: Lowering, node: fx.Node) -> Value:
    return _adaptive(low, node, OpKind.GLOBAL_AVERAGE_POOL, OpKind.AVERAGE_POOL)


@converts("aten.adaptive_max_pool1d.default", "aten.adaptive_max_pool2d.default",
          "aten.adaptive_max_pool3d.default")
def _adaptive_max(low: Lowering, node: fx.Node) -> Value:
    return [_adaptive(low, node, OpKind.GLOBAL_MAX_POOL, OpKind.MAX_POOL), None]


# ----- reductions --------------------------------------------------------------------
def _axes(low: Lowering, x: fx.Node, dim: Any) -> list[int]:
    rank = len(low.shape(x))
    if dim is None or (isinstance(dim, (list, tuple)) and not dim):
        return list(range(rank))
    dims = dim if isinstance(dim, (list, tuple)) else [dim]
    return sorted(int(d) % rank for d in dims)


def _reduce(op: OpKind) -> Any:
    def convert(low: Lowering, node: fx.Node) -> Value:
        a = args(node)
        axes = _axes(low, a["self"], a.get("dim"))
        attrs = {"axes": axes, "keepdims": int(bool(a.get("keepdim", False)))}
        return low.emit(op, [low.value(a["self"])], attrs)
    return convert


converts("aten.mean.dim", "aten.mean.default")(_reduce(OpKind.REDUCE_MEAN))
converts("aten.sum.dim_IntList", "aten.sum.default")(_reduce(OpKind.REDUCE_SUM))
converts("aten.amax.default", "aten.max.default")(_reduce(OpKind.REDUCE_MAX))
converts("aten.amin.default", "aten.min.default")(_reduce(OpKind.REDUCE_MIN))


@converts("aten.max.dim")
def _max_dim(low: Lowering, node: fx.Node) -> Value:
    return [_reduce(OpKind.REDUCE_MAX)(low, node), None]


@converts("aten.min.dim")
def _min_dim(low: Lowering, node: fx.Node) -> Value:
    return [_reduce(OpKind.REDUCE_MIN)(low, node), None]
