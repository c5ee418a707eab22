"""The pieces of the FFT certificate (issue 3): the circular embedding, the frequency blocks
formed on demand, the eigenvalue search and the Lanczos estimates.

Truth: a direct (loop) circular correlation on the embedding grid compared with the real
layer on random inputs, dense eigvalsh / SVD for eigenvalues and norms."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from test_spectral_conv import conv_graph, random_cases, true_norm

from lipcheck.rules import BoundContext
from lipcheck.settings import Settings
from lipcheck.spectral.freq_gram import frequency_grams
from lipcheck.spectral.operator import lanczos_estimate, node_operator
from lipcheck.spectral.polyphase import (
    ConvSpec,
    PhaseKernel,
    circular_grid,
    conv_spec,
    phase_kernel,
)
from lipcheck.spectral.top_eig import lanczos_top, max_eig_bound


def _pads(spec: ConvSpec) -> list[int]:
    out: list[int] = []
    for b, e in reversed(list(zip(spec.pads_begin, spec.pads_end, strict=True))):
        out += [b, e]
    return out


def real_layer(spec: ConvSpec, x: torch.Tensor) -> torch.Tensor:
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spec.dims]
    return conv(F.pad(x[None], _pads(spec)), spec.weight.double(), stride=spec.strides,
                dilation=spec.dilations, groups=spec.group)[0]


def phase_input(pk: PhaseKernel, x: torch.Tensor) -> torch.Tensor:
    """The padded input split into phases: (C_in * P, phase grid...), channel c * P + phase."""
    spec, d = pk.spec, pk.spec.dims
    padded = F.pad(x, _pads(spec))
    for axis in range(d):  # pad to whole phases covering the read grid
        stride = spec.strides[axis]
        want = stride * max(pk.grid[axis], -(-padded.shape[1 + axis] // stride))
        padded = F.pad(padded, [0, 0] * (d - 1 - axis) + [0, want - padded.shape[1 + axis]])
    shape = [padded.shape[0]]
    for axis in range(d):
        shape += [padded.shape[1 + axis] // spec.strides[axis], spec.strides[axis]]
    perm = [0] + [2 + 2 * a for a in range(d)] + [1 + 2 * a for a in range(d)]
    return padded.reshape(shape).permute(perm).reshape(-1, *(shape[1 + 2 * a] for a in range(d)))


def circular_layer(pk: PhaseKernel, grid: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    """Embed the read part of each phase at slot q mod N, correlate circularly on the
    N-grid with the phase taps, keep the m output positions: a direct loop."""
    spec = pk.spec
    phases, per_group = math.prod(spec.strides), spec.weight.shape[1] * math.prod(spec.strides)
    inputs = phase_input(pk, x)
    out = []
    for g in range(spec.group):
        channels = inputs[g * per_group:(g + 1) * per_group][pk.channels]
        # unread: zero columns
        channels = channels[(slice(None),) + tuple(slice(0, v) for v in pk.grid)]
        z = torch.zeros(channels.shape[0], *grid, dtype=torch.float64)
        for q in itertools.product(*(range(v) for v in channels.shape[1:])):
            wrapped = tuple(a % b for a, b in zip(q, grid, strict=True))
            z[(slice(None),) + wrapped] += channels[(slice(None),) + q]
        y = torch.zeros(pk.taps.shape[2], *pk.out_size, dtype=torch.float64)
        for i in itertools.product(*(range(m) for m in pk.out_size)):
            y[(slice(None),) + i] = sum(
                pk.taps[g, t] @ z[(slice(None),) + tuple(
                    (a + int(o)) % b for a, o, b in zip(i, pk.offsets[t], grid, strict=True))]
                for t in range(pk.taps.shape[1]))
        out.append(y)
    assert phases >= 1
    return torch.cat(out)


@pytest.mark.parametrize("graph", random_cases(30, seed=11), ids=lambda g: "")
def test_layer_is_a_restriction_of_the_circular_correlation_on_the_smallest_grid(graph) -> None:
    """R C_N E x = A x on random x for the grid `circular_grid` picks (stride, dilation,
    asymmetric padding, groups, transpose, 1d-3d): what makes ||A|| <= max_w ||K(w)||."""
    spec = conv_spec(graph.nodes[0], graph.constants["w"])
    pk = phase_kernel(spec)
    grid = circular_grid(pk)
    assert all(1 <= n <= full for n, full in zip(grid, pk.grid, strict=True))
    x = torch.randn(spec.weight.shape[1] * spec.group, *spec.size, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    assert torch.allclose(real_layer(spec, x), circular_layer(pk, grid, x), atol=1e-10)


def test_smallest_grid_is_smaller_for_same_padding_and_one_less_breaks_it() -> None:
    graph = conv_graph(2, 3, (7, 7), (3, 3), {"pads": [1, 1, 1, 1]})
    spec = conv_spec(graph.nodes[0], graph.constants["w"])
    pk = phase_kernel(spec)
    assert pk.grid == (9, 9) and circular_grid(pk) == (8, 8)  # N = n + pad instead of n + 2 pad
    x = torch.randn(2, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(real_layer(spec, x), circular_layer(pk, (7, 7), x), atol=1e-6)


def _dot_rounding(grams, picked: torch.Tensor) -> torch.Tensor:
    """How far two float64 evaluations of every block entry may differ. Each entry is one
    dot product of length m = 2D (coefficients . stacked column); the batched product and the
    per-group tiles sum it in orders BLAS picks (kernel, CPU, threads), each within
    gamma_m * sum|c_i s_i| of the exact value, gamma_m = m u / (1 - m u), u = eps / 2
    (Higham, Accuracy and Stability, 3.1). So the two differ by at most 2 gamma_m sum|c_i s_i|
    (<= 1.01 m eps sum|c_i s_i| here): bitwise equality is not promised across paths."""
    count = grams.freqs.shape[0]
    group, freq = picked // count, picked % count
    rows = grams.coefficients[freq].abs()[:, None, :]
    magnitude = torch.bmm(rows, grams.stacked[group].abs())[:, 0]
    m = grams.coefficients.shape[1]
    return 1.01 * m * torch.finfo(torch.float64).eps * magnitude


# 16 entries: groups mixed in one batched product; 81: per group
@pytest.mark.parametrize("width", [4, 9])
def test_blocks_formed_on_demand_match_the_whole_spectrum(width: int) -> None:
    gen = torch.Generator().manual_seed(3)
    taps = torch.randn(2, 5, 11, width, generator=gen, dtype=torch.float64)
    offsets = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 2], [2, 1]])
    grams = frequency_grams(taps, offsets, (5, 6))
    whole = grams.blocks
    picked = torch.tensor([7, 0, grams.count - 1, 3, 3])
    fetched = torch.view_as_real(grams.fetch(picked)).reshape(len(picked), -1)
    expected = torch.view_as_real(whole[picked]).reshape(len(picked), -1)
    tolerance = _dot_rounding(grams, picked)
    assert torch.all((fetched - expected).abs() <= tolerance)
    assert not torch.all((fetched - expected.roll(1, 0)).abs() <= tolerance)  # it can fail
    assert torch.allclose(grams.traces(), whole.diagonal(dim1=-2, dim2=-1).real.sum(-1), rtol=1e-12)


def test_lanczos_top_value_is_the_top_eigenvalue() -> None:
    gen = torch.Generator().manual_seed(4)
    for n in (40, 300):
        a = torch.randn(n, n, generator=gen, dtype=torch.complex128)
        g = a.mH @ a
        top = float(torch.linalg.eigvalsh(g)[-1])
        value, _, vector = lanczos_top(g)
        assert top * (1 - 1e-5) <= value <= top * (1 + 1e-5)
        rayleigh = float((vector.conj() @ g @ vector).real / (vector.conj() @ vector).real)
        assert rayleigh >= 0.99 * top


@pytest.mark.parametrize("n, ratio", [(256, 2), (200, 1), (512, 1)])
def test_lanczos_never_runs_above_the_top_eigenvalue(n: int, ratio: int) -> None:
    """Run past convergence (tol 0): with one Gram-Schmidt pass in single precision the
    Ritz value of a 256 x 512 Wishart block went from 11.19 (the truth) to 44.1."""
    gen = torch.Generator().manual_seed(n)
    a = torch.randn(ratio * n, n, generator=gen, dtype=torch.complex128)
    g = a.mH @ a
    top = float(torch.linalg.eigvalsh(g)[-1])
    value, _, _ = lanczos_top(g, steps=96, tol=0.0)
    assert top * (1 - 1e-3) <= value <= top * (1 + 1e-5)


def test_eigenvalue_search_with_single_precision_blocks_is_certified() -> None:
    """Spectra spread over two decades: the low blocks go through the single-precision
    certificate, the top ones through float64; tau is above every eigenvalue, and close."""
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(60, 64, 64, generator=gen, dtype=torch.complex128)
    g = (a.mH @ a) * torch.logspace(-2, 0, 60, dtype=torch.float64)[:, None, None]
    top = torch.linalg.eigvalsh(g)[:, -1]
    result = max_eig_bound(g)
    assert float(top.max()) < result.tau <= float(top.max()) * (1 + 2e-4)
    assert result.worst == int(top.argmax())


@pytest.mark.parametrize("graph", random_cases(12, seed=12), ids=lambda g: "")
def test_lanczos_estimate_is_below_the_norm_and_close(graph) -> None:
    node = graph.nodes[0]
    op = node_operator(node, BoundContext(graph, Settings()))
    truth = true_norm(graph)
    start = torch.randn(op.in_shape, dtype=op.dtype, generator=torch.Generator().manual_seed(0))
    estimate = lanczos_estimate(op, start, 8)
    assert estimate <= truth * (1 + 1e-9)
    assert estimate >= 0.9 * truth


def test_a_lanczos_failure_cannot_inflate_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """If Lanczos reports a Ritz value its own vector does not support, the search uses
    the block's eigvalsh: tau stays within 1e-4 of the top eigenvalue."""
    import lipcheck.spectral.top_eig as top_eig

    real = top_eig.lanczos_top
    monkeypatch.setattr(top_eig, "lanczos_top", lambda m, *a, **k: (4 * real(m)[0],) + real(m)[1:])
    gen = torch.Generator().manual_seed(9)
    a = torch.randn(6, 200, 200, generator=gen, dtype=torch.complex128)
    g = a.mH @ a
    top = float(torch.linalg.eigvalsh(g)[:, -1].max())
    assert top < max_eig_bound(g).tau <= top * (1 + 2e-4)


@pytest.mark.parametrize("transpose, attrs", [
    (False, {"pads": [1, 1, 1, 1], "group": 6}),                                   # depthwise
    (False, {"pads": [2, 0, 1, 1], "group": 2, "strides": [2, 1]}),
    (True, {"pads": [1, 1, 0, 0], "group": 3, "strides": [2, 2], "output_padding": [1, 0]}),
])
def test_grouped_conv_on_a_small_grid_is_exact_group_by_group(transpose: bool, attrs: dict) -> None:
    """Block-diagonal over groups: auto forms every group's small operator at once and
    takes its SVD (the circular embedding is ~10 % loose on such grids)."""
    from test_spectral_conv import bound

    graph = conv_graph(6, 6, (6, 5), (3, 3), attrs, transpose=transpose, seed=4)
    truth = true_norm(graph)
    result = bound(graph, exact_max_dim=10)  # the whole operator is "too large" for one SVD
    assert result.method == "exact-svd" and "groups" in result.detail
    assert truth <= result.value <= truth * (1 + 1e-8)
    circular = bound(graph, "fft")
    assert circular.value >= truth


@pytest.mark.parametrize("graph", random_cases(40, seed=13), ids=lambda g: "")
def test_tap_count_matches_the_phase_kernel(graph) -> None:
    from lipcheck.spectral.polyphase import tap_count

    spec = conv_spec(graph.nodes[0], graph.constants["w"])
    pk = phase_kernel(spec)
    assert tap_count(spec) == (0 if pk.empty else pk.taps.shape[1])


def test_tap_count_drops_zero_taps_like_the_phase_kernel() -> None:
    from lipcheck.spectral.polyphase import tap_count

    graph = conv_graph(3, 4, (8, 8), (3, 3), {"pads": [1, 1, 1, 1]})
    weight = torch.zeros_like(graph.constants["w"])
    weight[:, :, 1, 1] = 1.0
    spec = conv_spec(graph.nodes[0], weight)
    assert tap_count(spec) == phase_kernel(spec).taps.shape[1] == 1


def test_when_no_certificate_succeeds_the_search_falls_back_to_the_frobenius_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import lipcheck.spectral.top_eig as top_eig

    monkeypatch.setattr(top_eig, "cholesky_certify",
                        lambda blocks, *a, **k: torch.zeros(blocks.shape[0], dtype=torch.bool))
    gen = torch.Generator().manual_seed(10)
    a = torch.randn(5, 30, 30, generator=gen, dtype=torch.complex128)
    g = a.mH @ a
    fro = float(torch.linalg.matrix_norm(g, "fro").max())
    assert fro <= max_eig_bound(g).tau <= fro * (1 + 1e-9)
