"""Pooling. Attributes follow ONNX with auto_pad resolved: kernel_shape, strides,
pads [b_1..b_d, e_1..e_d], dilations, ceil_mode, count_include_pad, p.

Windows are formed on an explicitly padded input (the ceil_mode overhang is padding
that never counts), so the bounds below are computed on the exact geometry.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lipcheck.graph import Node, OpKind
from lipcheck.rules.registry import (
    BoundContext,
    NodeBound,
    Rule,
    analytic,
    constant_bound,
    register,
    unbounded,
)
from lipcheck.spectral.affine import affine_bound, register_certifier
from lipcheck.spectral.operator import LinearOperator, NormResult

FAMILY = "pooling"
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class Geometry:
    """Per-axis pooling geometry for a given spatial input size."""

    def __init__(self, node: Node, spatial: tuple[int, ...]) -> None:
        d = len(spatial)
        self.kernel = [int(k) for k in node.attrs["kernel_shape"]]
        self.strides = [int(s) for s in node.attrs.get("strides") or [1] * d]
        self.dilations = [int(s) for s in node.attrs.get("dilations") or [1] * d]
        self.pads = [int(p) for p in node.attrs.get("pads") or [0] * (2 * d)]
        ceil = bool(node.attrs.get("ceil_mode", 0))
        self.extra = [self._overhang(a, n, ceil) for a, n in enumerate(spatial)]

    def _overhang(self, axis: int, n: int, ceil: bool) -> int:
        """Padding added at the end so that ceil_mode windows fit (never counted)."""
        d = len(self.kernel)
        begin, end = self.pads[axis], self.pads[axis + d]
        span = n + begin + end - self.dilations[axis] * (self.kernel[axis] - 1) - 1
        stride = self.strides[axis]
        out = (-(-span // stride) if ceil else span // stride) + 1
        if ceil and (out - 1) * stride >= n + begin:
            out -= 1  # the last window would start in the end padding
        return max(0, (out - 1) * stride + self.dilations[axis] * (self.kernel[axis] - 1) + 1
                   - (n + begin + end))

    def torch_pads(self, with_explicit: bool = True, with_extra: bool = True) -> list[int]:
        d = len(self.kernel)
        out: list[int] = []
        for a in reversed(range(d)):
            explicit = (self.pads[a], self.pads[a + d]) if with_explicit else (0, 0)
            extra = self.extra[a] if with_extra else 0
            out += [explicit[0], explicit[1] + extra]
        return out

    def window_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over every window of an already padded input."""
        c = x.shape[1]
        ones = torch.ones((c, 1, *self.kernel), dtype=x.dtype, device=x.device)
        return _CONV[len(self.kernel)](x, ones, None, self.strides, 0, self.dilations, c)


def _spatial(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape[2:])


def _max_pool_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x = inputs[0]
    g = Geometry(node, _spatial(x))
    xp = F.pad(x, g.torch_pads(), value=-math.inf)
    return [_MAX_POOL[x.dim() - 2](xp, g.kernel, g.strides, 0, g.dilations)]


def _average_divisor(node: Node, g: Geometry, x: torch.Tensor) -> torch.Tensor:
    ones = torch.ones((1, 1, *_spatial(x)), dtype=x.dtype, device=x.device)
    if node.attrs.get("count_include_pad", 0):
        ones = F.pad(F.pad(ones, g.torch_pads(with_extra=False), value=1.0),
                     g.torch_pads(with_explicit=False))
    else:
        ones = F.pad(ones, g.torch_pads())
    return g.window_sum(ones)


def _average_pool_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x = inputs[0]
    g = Geometry(node, _spatial(x))
    return [g.window_sum(F.pad(x, g.torch_pads())) / _average_divisor(node, g, x)]


def _lp_pool_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x, p = inputs[0], float(node.attrs.get("p", 2))
    g = Geometry(node, _spatial(x))
    return [g.window_sum(F.pad(x.abs() ** p, g.torch_pads())) ** (1.0 / p)]


def window_counts(node: Node, spatial: tuple[int, ...]) -> torch.Tensor:
    """How many windows contain each input entry (shape (1, 1, *spatial))."""
    g = Geometry(node, spatial)
    x = torch.ones((1, 1, *spatial), dtype=torch.float64, requires_grad=True)
    (counts,) = torch.autograd.grad(g.window_sum(F.pad(x, g.torch_pads())).sum(), x)
    return counts


def _max_pool_bound(node: Node, ctx: BoundContext) -> NodeBound:
    # |max_W x - max_W y| <= max_W |x - y|, so ||out diff||^2 <= sum_i count_i d_i^2.
    copies = int(window_counts(node, tuple(node.input_shapes[0][2:])).max())
    bound = analytic(math.sqrt(copies), detail=f"an input entry lies in at most {copies} windows")
    if copies > 1:
        bound.warnings.append(("overlapping_max_pool",
                               f"overlapping windows: one input can win {copies} windows, "
                               f"bound sqrt({copies}) = {math.sqrt(copies):.4f}"))
    return bound


def _lp_pool_bound(node: Node, ctx: BoundContext) -> NodeBound:
    # Each window is an l_p norm: |y_j - y'_j| <= ||d_W||_p <= k^max(0, 1/p-1/2) ||d_W||_2.
    p = float(node.attrs.get("p", 2))
    if p < 1:
        return unbounded(f"LpPool with p={p:g} < 1 is not a norm")
    copies = int(window_counts(node, tuple(node.input_shapes[0][2:])).max())
    k = math.prod(int(s) for s in node.attrs["kernel_shape"])
    return analytic(math.sqrt(copies) * k ** max(0.0, 1 / p - 0.5),
                    detail=f"l_{p:g} norm per window, {copies} windows per entry at most")


def schur_certifier(node: Node, ctx: BoundContext, op: LinearOperator) -> NormResult | None:
    """sqrt(max row sum * max column sum) of the (non-negative) averaging matrix."""
    spatial = tuple(node.input_shapes[0][2:])
    x = torch.ones((1, 1, *spatial), dtype=torch.float64, requires_grad=True)
    g = Geometry(node, spatial)
    averaged = g.window_sum(F.pad(x, g.torch_pads())) / _average_divisor(node, g, x.detach())
    (columns,) = torch.autograd.grad(averaged.sum(), x)
    rows = float(averaged.detach().max()) if averaged.numel() else 0.0
    cols = float(columns.max()) if columns.numel() else 0.0
    return NormResult(math.sqrt(rows * cols) * (1 + 1e-12), True, "schur-test")


def _average_pool_bound(node: Node, ctx: BoundContext) -> NodeBound:
    return affine_bound(node, ctx)


def _global_average_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x = inputs[0]
    return [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)]


def _global_average_bound(node: Node, ctx: BoundContext) -> NodeBound:
    n = math.prod(node.input_shapes[0][2:])
    return analytic(1 / math.sqrt(n) if n else 0.0, detail=f"mean of {n} entries: 1/sqrt({n})")


def _global_max_run(node: Node, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    x = inputs[0]
    return [x.amax(dim=tuple(range(2, x.dim())), keepdim=True)]


register(Rule(OpKind.MAX_POOL, FAMILY, _max_pool_run, _max_pool_bound,
              "sqrt(max number of windows containing one input entry); 1 without overlap"))
register(Rule(OpKind.AVERAGE_POOL, FAMILY, _average_pool_run, _average_pool_bound,
              "operator norm of the averaging matrix (exact SVD, else Schur test)", affine=True))
register_certifier(OpKind.AVERAGE_POOL, schur_certifier)
register(Rule(OpKind.LP_POOL, FAMILY, _lp_pool_run, _lp_pool_bound,
              "sqrt(max windows per entry) * k^max(0, 1/p - 1/2); unbounded for p < 1"))
register(Rule(OpKind.GLOBAL_AVERAGE_POOL, FAMILY, _global_average_run, _global_average_bound,
              "1/sqrt(H*W...) (exact)", affine=True))
register(Rule(OpKind.GLOBAL_MAX_POOL, FAMILY, _global_max_run,
              constant_bound(1.0, "max over disjoint groups"), "1"))
