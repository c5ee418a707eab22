"""A convolution layer as a stride-1 convolution over polyphase components.

A Conv with stride s, dilation r and zero padding (b, e) on an n-grid reads the padded
input at positions s*i + r*j. Splitting the padded input into its s^d phases
(position p = s*q + t, phase t) turns tap j into an offset a = (r*j) // s on the
phase grid of phase t = (r*j) % s: the layer *is* (not: is bounded by) a stride-1
correlation with C_in * s^d input channels, followed by nothing. Taps and phases that
are zero are dropped (they do not change the norm). ConvTranspose is the adjoint of a
Conv on its output grid (same norm), see `transpose_spec`.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from lipcheck.graph import Node, OpKind


@dataclass(frozen=True)
class ConvSpec:
    """A zero-padded Conv: weight (C_out, C_in/group, k...), on an input grid `size`."""

    weight: torch.Tensor
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    group: int
    size: tuple[int, ...]

    @property
    def dims(self) -> int:
        return self.weight.dim() - 2

    def out_size(self) -> tuple[int, ...]:
        k = self.weight.shape[2:]
        axes = zip(self.size, self.pads_begin, self.pads_end, self.dilations, k, self.strides,
                   strict=True)
        return tuple((n + b + e - r * (kk - 1) - 1) // s + 1 for n, b, e, r, kk, s in axes)


@dataclass
class PhaseKernel:
    """The stride-1 taps: taps[g, t] is the (C_out/g, C_eff) matrix at offsets[t]."""

    taps: torch.Tensor            # (groups, T, C_out_g, C_eff), float64
    offsets: torch.Tensor         # (T, d) int64, offsets on the phase grid
    channels: torch.Tensor        # (C_eff,) kept phase channels, index c * P + phase
    out_size: tuple[int, ...]     # m
    grid: tuple[int, ...]         # m + max offset: every phase position that an output reads
    spec: ConvSpec

    @property
    def empty(self) -> bool:
        return self.taps.numel() == 0 or math.prod(self.out_size) == 0

    def real_range(self, axis: int) -> list[tuple[int, int]]:
        """Per used phase t along `axis`: the phase positions [lo, hi) holding real input
        (padded position s*q + t inside [pad_begin, pad_begin + size)); empty ones dropped."""
        spec = self.spec
        s, b, n = spec.strides[axis], spec.pads_begin[axis], spec.size[axis]
        trailing = math.prod(spec.strides[axis + 1:])
        phases = torch.unique(self.channels % math.prod(spec.strides) // trailing % s).tolist()
        ranges = [(-((t - b) // s), -((t - b - n) // s)) for t in phases]  # ceil((b - t) / s), ...
        return [(lo, hi) for lo, hi in ranges if hi > lo]


def circular_grid(pk: PhaseKernel) -> tuple[int, ...]:
    """The smallest circle N per axis on which the layer is a restriction of a circular
    correlation: real positions [lo, hi) stay put (N >= hi) and every padding position that
    an output reads, i + a <= m + A - 1, lands on a zero slot after wrapping (N >= m + A - lo).
    At most pk.grid (= m + A, where nothing wraps at all)."""
    out = []
    for axis, (_, full) in enumerate(zip(pk.out_size, pk.grid, strict=True)):
        need = [max(hi, full - lo) for lo, hi in pk.real_range(axis)]
        out.append(max(1, min(full, max(need, default=1))))
    return tuple(out)


def conv_spec(node: Node, weight: torch.Tensor) -> ConvSpec:
    """The Conv whose norm equals the node's (Conv itself, ConvTranspose's adjoint)."""
    dims = weight.dim() - 2
    strides = tuple(int(v) for v in node.attrs.get("strides", [1] * dims))
    dilations = tuple(int(v) for v in node.attrs.get("dilations", [1] * dims))
    pads = [int(v) for v in node.attrs.get("pads", [0] * (2 * dims))]
    group = int(node.attrs.get("group", 1))
    if node.op == OpKind.CONV_TRANSPOSE:
        return transpose_spec(node, weight, strides, dilations, pads, group)
    size = tuple(int(v) for v in node.input_shapes[0][2:])
    return ConvSpec(weight, strides, dilations, tuple(pads[:dims]), tuple(pads[dims:]), group, size)


def transpose_spec(node: Node, weight: torch.Tensor, strides: tuple[int, ...],
                   dilations: tuple[int, ...], pads: list[int], group: int) -> ConvSpec:
    """ConvTranspose = crop(pad_end(conv_transpose(x), output_padding)); its adjoint is
    the Conv with the same weight (C_in_T, C_out_T/g, k) on the transpose's output grid,
    padded by pads_begin and pads_end - output_padding (a negative end pad crops input
    entries that no output reads, which leaves the norm unchanged)."""
    dims = weight.dim() - 2
    out_pad = [int(v) for v in node.attrs.get("output_padding", [0] * dims)]
    size = tuple(int(v) for v in node.output_shapes[0][2:])
    ends = [pads[dims + a] - out_pad[a] for a in range(dims)]
    size = tuple(n + min(0, e) for n, e in zip(size, ends, strict=True))
    return ConvSpec(weight, strides, dilations, tuple(pads[:dims]), tuple(max(0, e) for e in ends),
                    group, size)


def phase_kernel(spec: ConvSpec) -> PhaseKernel:
    g, c_in_g = spec.group, spec.weight.shape[1]
    c_out_g, k = spec.weight.shape[0] // g, tuple(spec.weight.shape[2:])
    phases = math.prod(spec.strides)
    spans = tuple((r * (kk - 1)) // s + 1
                  for r, kk, s in zip(spec.dilations, k, spec.strides, strict=True))
    per_tap = spec.weight.detach().reshape(g, c_out_g, c_in_g, -1).permute(0, 3, 1, 2)
    dense = torch.zeros((g, math.prod(spans), c_out_g, c_in_g * phases), dtype=torch.float64)
    for index, j in enumerate(itertools.product(*(range(kk) for kk in k))):
        pos = [r * jj for r, jj in zip(spec.dilations, j, strict=True)]
        phase = _ravel([p % s for p, s in zip(pos, spec.strides, strict=True)], spec.strides)
        offset = _ravel([p // s for p, s in zip(pos, spec.strides, strict=True)], spans)
        target = dense[:, offset] if phases == 1 else dense[:, offset, :, phase::phases]
        target += per_tap[:, index]  # (taps land on distinct offsets when phases == 1)
    return _sparse_taps(dense, spans, spec)


def tap_count(spec: ConvSpec) -> int:
    """How many taps `phase_kernel` keeps, without building it: the distinct offsets
    (r*j) // s of the kernel positions j whose weights are not all zero (0 when the output
    grid is empty)."""
    if min(spec.out_size(), default=1) <= 0:
        return 0
    k = tuple(spec.weight.shape[2:])
    nonzero = (spec.weight.detach() != 0).reshape(-1, math.prod(k)).any(dim=0).tolist()
    taps = enumerate(itertools.product(*(range(kk) for kk in k)))
    offsets = {tuple((r * jj) // s
                     for r, jj, s in zip(spec.dilations, j, spec.strides, strict=True))
               for index, j in taps if nonzero[index]}
    return len(offsets)


def _ravel(index: list[int], shape: tuple[int, ...]) -> int:
    flat = 0
    for i, n in zip(index, shape, strict=True):
        flat = flat * n + i
    return flat


def _sparse_taps(dense: torch.Tensor, spans: tuple[int, ...], spec: ConvSpec) -> PhaseKernel:
    """Keep the non-zero taps and the phase channels that some tap reads."""
    d = spec.dims
    g, t, c_out_g, c_eff = dense.shape
    nonzero = (dense.amax(dim=2) > 0) | (dense.amin(dim=2) < 0)  # (g, T, C_eff), no |dense| copy
    used_taps = nonzero.any(dim=2).any(dim=0)
    used_channels = nonzero.any(dim=1).any(dim=0)
    all_offsets = torch.tensor(list(itertools.product(*(range(a) for a in spans))),
                               dtype=torch.int64).reshape(-1, d)
    taps = dense if bool(used_taps.all()) else dense[:, used_taps]
    if not bool(used_channels.all()):
        taps = taps[..., used_channels]
    offsets = all_offsets[used_taps]
    out = spec.out_size()
    reach = offsets.max(dim=0).values.tolist() if offsets.numel() else [0] * d
    grid = tuple(m + a for m, a in zip(out, reach, strict=True))
    channels = torch.nonzero(used_channels).flatten()
    if min(out, default=1) <= 0:
        taps = taps[:, :0]
    return PhaseKernel(taps, offsets, channels, tuple(max(0, m) for m in out), grid, spec)
