"""Certified operator norm of a Conv / ConvTranspose node, and a warm start for its estimate.

The chain (docs/methods/per-layer.md): stride and dilation -> polyphase, an exact
rewrite as a stride-1 correlation; zero padding and the finite grid -> a restriction of
the circular correlation on an N-grid with N = m + (kernel span - 1) (no wrap-around),
whose norm is max over frequencies of ||K(w)||; each frequency's Gram block is bounded
by a Cholesky certificate ("fft") or by Gram iteration ("fft-gram").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lipcheck.bounds import BoundContext
from lipcheck.graph import Node, OpKind
from lipcheck.spectral import layer_clock
from lipcheck.spectral.block_bounds import gram_iteration_bound
from lipcheck.spectral.cheap_bounds import matrix_cheap_bound, stacked_flops, taps_bound
from lipcheck.spectral.freq_gram import UNIT_ROUNDOFF, FrequencyGrams, frequency_grams
from lipcheck.spectral.operator import (
    DENSE_SECONDS_PER_FLOP,
    FLOAT64_MARGIN,
    LinearOperator,
    NormResult,
    bounded_matrix_norm,
    matrix_norm,
)
from lipcheck.spectral.padded_gram import MAX_DIM, exact_gram_norm, gram_dim, predicted_seconds
from lipcheck.spectral.polyphase import (
    ConvSpec,
    PhaseKernel,
    circular_grid,
    conv_spec,
    phase_kernel,
    tap_count,
)
from lipcheck.spectral.top_eig import lanczos_top, max_eig_bound


@dataclass
class CertifiedNorm(NormResult):
    detail: str = ""
    start: torch.Tensor | None = None  # a warm start on the operator's input (or output) space
    start_on_output: bool = False


def conv_certifier(node: Node, ctx: BoundContext, op: LinearOperator) -> CertifiedNorm | None:
    weight = ctx.const(node, 1)
    if weight is None or weight.dim() < 3:
        return None
    pk = phase_kernel(conv_spec(node, weight))
    if pk.empty:
        return CertifiedNorm(0.0, True, "exact-svd", detail="the output grid is empty")
    # twice the prediction: on a 512-channel 3x3 layer the stacked norms took 0.32 s
    # against 0.075 s x the slowdown predicted (load 8)
    fallback = 2 * layer_clock.predicted_seconds(stacked_flops(pk.taps), 1.0) + 0.1
    try:
        with layer_clock.reserving(min(ctx.settings.layer_budget / 4, fallback)):
            return _certified(node, ctx, pk)
    except layer_clock.LayerBudgetSpent as exc:  # --layer-budget: the taps' bound
        layer_clock.note_cut(exc.what)
        return CertifiedNorm(taps_bound(pk.taps, _tap_norm), True, "tap-sum",
                             detail=f"min(sqrt(T) ||stacked taps||, sum of tap norms) over "
                             f"{pk.taps.shape[1]} taps")


def _tap_norm(matrix: torch.Tensor) -> float:
    """A certified ||matrix||: its SVD when predicted to fit the layer's time, else the
    one-pass bound."""
    if layer_clock.fits(stacked_flops(matrix[None, None]) / 2, 1.0):
        return bounded_matrix_norm(matrix).value
    return matrix_cheap_bound(matrix)


def _certified(node: Node, ctx: BoundContext, pk: PhaseKernel) -> CertifiedNorm:
    if pk.taps.shape[1] == 1:
        value = max(matrix_norm(pk.taps[g, 0]) for g in range(pk.taps.shape[0]))
        return CertifiedNorm(value, True, "exact-svd", detail="a 1x1 kernel after polyphase: ||W||")
    exact = _exact(pk, ctx) if ctx.settings.layer_method == "auto" else None
    if exact is not None:
        return exact
    device = torch.device(ctx.settings.device)
    grams = frequency_grams(pk.taps, pk.offsets, circular_grid(pk), device, ctx.scratch)
    if ctx.settings.layer_method == "gram":
        return _gram_result(grams, pk, node.op == OpKind.CONV_TRANSPOSE)
    top = max_eig_bound(grams, scratch=ctx.scratch)
    value = math.sqrt(top.tau + grams.error) * (1 + 8 * UNIT_ROUNDOFF)
    start = plane_wave(pk, grams, top.worst, top.vector)
    return CertifiedNorm(value, True, "fft", detail=_detail(pk, grams), start=start,
                         start_on_output=node.op == OpKind.CONV_TRANSPOSE)


def _exact(pk: PhaseKernel, ctx: BoundContext) -> CertifiedNorm | None:
    """The exact methods, keeping back the FFT bound's predicted time (at most half the
    budget) so that, cut by --layer-budget, the layer still gets the FFT bound in time."""
    reserve = 3 * fft_seconds(pk) + 0.25  # the prediction's error, and the fallback's own checks
    with layer_clock.reserving(min(ctx.settings.layer_budget / 2, reserve)):
        try:
            return grouped_dense(pk, ctx) or _exact_gram(pk, ctx)
        except layer_clock.LayerBudgetSpent as exc:
            layer_clock.note_cut(exc.what)
            return None


def fft_seconds(pk: PhaseKernel) -> float:
    """Predicted time of the FFT bound: per block one complex Cholesky and its share of the
    block formation (8 T n^2), plus a LAPACK call's overhead."""
    blocks = pk.taps.shape[0] * math.ceil(math.prod(circular_grid(pk)) / 2 + 1)
    n = min(pk.taps.shape[2:])
    flops = blocks * (4 * n ** 3 / 3 + 8 * pk.taps.shape[1] * n * n)
    return layer_clock.predicted_seconds(flops) + blocks * 2e-5


GROUPED_DENSE_ENTRIES = 2**26  # basis images held at once (float64): 512 MB at most


def grouped_dense(pk: PhaseKernel, ctx: BoundContext) -> CertifiedNorm | None:
    """A grouped conv is block-diagonal over its groups: ||A|| = max_g ||A_g||. When the
    per-group operators are small (a depthwise conv on a 7x7 grid: 49 x 49 each) every one
    is formed at once (one conv of the basis of one group's input, fed to all groups
    together: groups do not interact) and its float64 SVD taken; exact up to the SVD's
    1e-9 margin, where the circular embedding is ~10 % loose."""
    spec = pk.spec
    n_in = spec.weight.shape[1] * math.prod(spec.size)
    n_out = spec.weight.shape[0] // spec.group * math.prod(pk.out_size)
    small, large = sorted((n_in, n_out))
    seconds = spec.group * DENSE_SECONDS_PER_FLOP * small * small * large
    if spec.group == 1 or seconds > ctx.settings.layer_budget or \
            n_in * spec.weight.shape[1] * spec.group * math.prod(spec.size) > GROUPED_DENSE_ENTRIES:
        return None
    layer_clock.require(6 * spec.group * small * small * large, "grouped dense SVD")
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, spec.weight.shape[1], *spec.size)
    images = _apply(spec, basis.repeat(1, spec.group, *([1] * spec.dims)))  # (n_in, C_out, out...)
    per_group = images.reshape(n_in, spec.group, -1).permute(1, 2, 0)     # (groups, n_out, n_in)
    value = float(torch.linalg.matrix_norm(per_group, 2).max()) * (1 + FLOAT64_MARGIN)
    return CertifiedNorm(value, True, "exact-svd",
                         detail=f"{spec.group} groups, a dense {n_out}x{n_in} SVD each")


def _apply(spec: ConvSpec, x: torch.Tensor) -> torch.Tensor:
    """The zero-padded Conv of `spec` (float64) on a batch x (N, C_in, size...)."""
    pads: list[int] = []
    for begin, end in reversed(list(zip(spec.pads_begin, spec.pads_end, strict=True))):
        pads += [begin, end]
    functional = torch.nn.functional
    conv = {1: functional.conv1d, 2: functional.conv2d, 3: functional.conv3d}[spec.dims]
    return conv(torch.nn.functional.pad(x, pads), spec.weight.detach().to(torch.float64),
                stride=spec.strides, dilation=spec.dilations, groups=spec.group)


def _exact_gram(pk: PhaseKernel, ctx: BoundContext) -> CertifiedNorm | None:
    """The zero-padded operator's own Gram with one Cholesky certificate (no circular
    embedding: tight on small grids), when it fits MAX_DIM and Settings.layer_budget."""
    dim = gram_dim(pk)
    if dim > MAX_DIM or predicted_seconds(pk, dim) > ctx.settings.layer_budget:
        return None
    value = exact_gram_norm(pk)
    if value is None:
        return None
    return CertifiedNorm(value, True, "exact-gram",
                         detail=f"input-side Gram of {dim} rows (before dropping padding), "
                         f"{pk.taps.shape[0]} group(s), Cholesky certificate")


def is_pointwise(node: Node, ctx: BoundContext) -> bool:
    """A single tap after polyphase (1x1, or strided so that one tap is read): exact cheaply."""
    weight = ctx.const(node, 1)
    if node.op not in (OpKind.CONV, OpKind.CONV_TRANSPOSE) or weight is None or weight.dim() < 3:
        return False
    return tap_count(conv_spec(node, weight)) <= 1


def _gram_result(grams: FrequencyGrams, pk: PhaseKernel, transpose: bool,
                 steps: int = 6) -> CertifiedNorm:
    n = grams.n  # forming every block, then at least one step: complex n^3 products
    layer_clock.require(grams.count * (8 * grams.stacked.shape[1] * n * n + 8 * n ** 3),
                        "Gram iteration (its blocks and a first step)", efficiency=0.5)
    rho = gram_iteration_bound(grams.blocks, steps)
    value = math.sqrt(float(rho.max()) + grams.error) * (1 + 8 * UNIT_ROUNDOFF)
    start = plane_wave(pk, grams, int(rho.argmax()), None)
    return CertifiedNorm(value, True, "fft-gram",
                         detail=_detail(pk, grams) + f", {steps} Gram steps",
                         start=start, start_on_output=transpose)


def _detail(pk: PhaseKernel, grams: FrequencyGrams) -> str:
    grid = "x".join(str(n) for n in grams.grid)
    return (f"grid {grid}, {grams.count} blocks of {min(pk.taps.shape[2:])}, "
            f"{pk.taps.shape[1]} taps, {pk.taps.shape[3]} phase channels")


def plane_wave(pk: PhaseKernel, grams: FrequencyGrams, index: int,
               vec: torch.Tensor | None) -> torch.Tensor:
    """The input (on the Conv's input grid) of the top singular vector at one frequency
    (`vec`, the block's top eigenvector, computed here when None)."""
    groups, taps, c_out, c_eff = pk.taps.shape
    count = grams.freqs.shape[0]
    grid = torch.tensor(grams.grid, dtype=torch.float64)
    theta = 2 * math.pi * grams.freqs[index % count].to(torch.float64) / grid
    if vec is None:
        vec = lanczos_top(grams.fetch(torch.tensor([index]))[0])[2]
    vec = vec.cpu().to(torch.complex128)
    phase = torch.exp(1j * (pk.offsets.to(torch.float64) @ theta))  # e^{i theta.a}
    if c_out < c_eff:  # the block is on the output side: its input is K(w)^H v
        k = pk.taps[index // count]  # (T, C_out, C_eff), real: no complex copy of the taps
        parts = torch.stack([vec.real, vec.imag], dim=1)  # (C_out, 2)
        zero = torch.zeros((), dtype=torch.complex128)
        vec = sum((phase[t] * torch.view_as_complex((k[t].mT @ parts).contiguous())
                   for t in range(k.shape[0])), zero)
        theta = -theta
    return _spread(pk, vec, theta, index // count)


def _spread(pk: PhaseKernel, vec: torch.Tensor, theta: torch.Tensor, group: int) -> torch.Tensor:
    """x[c, p] = Re(v[c, phase(p)] e^{i theta.q(p)}) on the input grid, zero elsewhere."""
    spec = pk.spec
    c_in_g, phases = spec.weight.shape[1], math.prod(spec.strides)
    full = torch.zeros(c_in_g * phases, dtype=torch.complex128)
    full[pk.channels] = vec
    full = full.reshape(c_in_g, *spec.strides)
    axes = [torch.arange(n) + b for n, b in zip(spec.size, spec.pads_begin, strict=True)]
    grids = torch.meshgrid(*axes, indexing="ij")
    phase_index = tuple(p % s for p, s in zip(grids, spec.strides, strict=True))
    wave = torch.exp(1j * sum(t * (p // s)
                              for t, p, s in zip(theta, grids, spec.strides, strict=True)))
    x = torch.zeros((spec.weight.shape[1] * spec.group, *spec.size), dtype=torch.float64)
    index: tuple[slice | torch.Tensor, ...] = (slice(None), *phase_index)  # x[:, *i]: 3.11+
    x[group * c_in_g:(group + 1) * c_in_g] = (full[index] * wave).real
    return x
