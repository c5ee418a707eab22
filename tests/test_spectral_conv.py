"""Certified per-layer bounds for Conv / ConvTranspose / large dense layers (issue 3).

Truth is the largest singular value of the dense Jacobian (float64) of the node's real
operator (padding, stride, dilation, groups, input size)."""
from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import scipy.linalg.lapack
import torch

from lipcheck.errors import UserError
from lipcheck.graph import Graph, Node, OpKind, ValueInfo
from lipcheck.interpreter import infer_shapes
from lipcheck.rules import BoundContext, get_rule
from lipcheck.settings import Settings
from lipcheck.spectral.block_bounds import certify_dense, cholesky_certify, gram_iteration_bound
from lipcheck.spectral.freq_gram import frequency_grams
from lipcheck.spectral.operator import dense_jacobian, matrix_norm, node_operator
from lipcheck.spectral.polyphase import conv_spec, phase_kernel
from lipcheck.spectral.top_eig import max_eig_bound


def conv_graph(c_in: int, c_out: int, size: tuple[int, ...], kernel: tuple[int, ...], attrs: dict,
               transpose: bool = False, seed: int = 0) -> Graph | None:
    gen = torch.Generator().manual_seed(seed)
    g = int(attrs.get("group", 1))
    shape = (c_in, c_out // g, *kernel) if transpose else (c_out, c_in // g, *kernel)
    node = Node("c", OpKind.CONV_TRANSPOSE if transpose else OpKind.CONV, ["x", "w"], ["y"], attrs)
    try:
        graph = Graph([ValueInfo("x", (1, c_in, *size))], ["y"], [node],
                      {"w": torch.randn(shape, generator=gen)})
        infer_shapes(graph)
    except Exception:  # an impossible geometry (output size <= 0): not a test case
        return None
    return graph if math.prod(graph.nodes[0].output_shapes[0]) > 0 else None


def bound(graph: Graph, method: str = "auto", **extra):
    node = graph.nodes[0]
    settings = Settings(layer_method=method, **extra)
    return get_rule(node.op).bound(node, BoundContext(graph, settings))


def true_norm(graph: Graph) -> float:
    node = graph.nodes[0]
    op = node_operator(node, BoundContext(graph, Settings()))
    return float(torch.linalg.matrix_norm(dense_jacobian(op), 2))


def random_case(rng: random.Random, transpose: bool) -> Graph | None:
    d = rng.choice([1, 2, 2, 3])
    g = rng.choice([1, 1, 2])
    c_in, c_out = g * rng.randint(1, 3), g * rng.randint(1, 3)
    kernel = tuple(rng.randint(1, 4) for _ in range(d))
    size = tuple(rng.randint(3, 10) if d < 3 else rng.randint(2, 5) for _ in range(d))
    strides = [rng.randint(1, 3) for _ in range(d)]
    dilations = [rng.randint(1, 2) for _ in range(d)]
    attrs = {"strides": strides, "dilations": dilations, "group": g,
             "pads": [rng.randint(0, 3) for _ in range(2 * d)]}
    if transpose:
        attrs["output_padding"] = [rng.randint(0, max(s, r) - 1)
                                   for s, r in zip(strides, dilations, strict=True)]
    return conv_graph(c_in, c_out, size, kernel, attrs, transpose, seed=rng.randint(0, 10**6))


def random_cases(count: int, seed: int) -> list[Graph]:
    rng, out = random.Random(seed), []
    while len(out) < count:
        graph = random_case(rng, transpose=len(out) % 3 == 0)
        if graph is not None:
            out.append(graph)
    return out


@pytest.mark.parametrize("graph", random_cases(40, seed=1), ids=lambda g: "")
def test_fft_bound_is_certified_on_random_layers(graph: Graph) -> None:
    """stride 1-3, padding 0-3, dilation 1-2, groups, 1d/2d/3d, transpose: fft >= truth."""
    truth = true_norm(graph)
    result = bound(graph, "fft")
    assert result.certified
    assert result.value >= truth * (1 - 1e-12)
    assert result.estimate is None or result.estimate <= result.value


@pytest.mark.parametrize("graph", random_cases(20, seed=2), ids=lambda g: "")
def test_auto_bound_is_certified_and_tight(graph: Graph) -> None:
    truth = true_norm(graph)
    result = bound(graph)
    assert truth * (1 - 1e-12) <= result.value <= 1.05 * truth + 1e-12


@pytest.mark.parametrize("stride,pad", [(1, 1), (2, 1), (2, 0), (3, 2)])
def test_fft_is_tight_on_a_large_grid(stride: int, pad: int) -> None:
    """Away from tiny grids the circular embedding costs little and the stride nothing."""
    graph = conv_graph(3, 4, (18, 18), (3, 3), {"strides": [stride] * 2, "pads": [pad] * 4})
    truth = true_norm(graph)
    result = bound(graph, "fft")
    assert truth <= result.value <= 1.02 * truth
    assert 0.97 * truth <= result.estimate <= result.value


def test_gram_iteration_method_is_certified_and_close() -> None:
    graph = conv_graph(4, 5, (20, 20), (3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]})
    truth = true_norm(graph)
    result = bound(graph, "gram")
    assert result.method == "fft-gram"
    assert truth <= result.value <= 1.05 * truth


def test_one_by_one_strided_conv_is_exact() -> None:
    graph = conv_graph(8, 16, (9, 9), (1, 1), {"strides": [2, 2]})
    result = bound(graph)  # auto: the 1x1 path, not the dense Jacobian
    w = graph.constants["w"].reshape(16, 8).double()
    assert result.method == "exact-svd"
    assert result.value == pytest.approx(float(torch.linalg.matrix_norm(w, 2)), rel=1e-8)


def test_conv_transpose_matches_its_conv() -> None:
    """ConvTranspose with pads and output_padding: the certified bound brackets the truth."""
    graph = conv_graph(3, 4, (7, 6), (3, 3), {"strides": [2, 2], "pads": [1, 0, 2, 1],
                                              "output_padding": [1, 0]}, transpose=True)
    truth = true_norm(graph)
    spec = conv_spec(graph.nodes[0], graph.constants["w"])
    assert spec.out_size() == tuple(graph.nodes[0].input_shapes[0][2:])
    assert truth <= bound(graph, "fft").value <= 1.25 * truth


def test_polyphase_keeps_only_read_phases() -> None:
    graph = conv_graph(3, 4, (8, 8), (1, 1), {"strides": [2, 2]})
    pk = phase_kernel(conv_spec(graph.nodes[0], graph.constants["w"]))
    assert pk.taps.shape == (1, 1, 4, 3) and pk.out_size == (4, 4)


def test_frequency_grams_match_a_direct_dft() -> None:
    gen = torch.Generator().manual_seed(3)
    taps = torch.randn(1, 4, 3, 5, generator=gen, dtype=torch.float64)
    offsets = torch.tensor([[0, 0], [0, 1], [1, 0], [2, 1]])
    grams = frequency_grams(taps, offsets, (5, 4))
    index = grams.freqs.tolist().index([2, 1])
    theta = (2 * math.pi * torch.tensor([2.0, 1.0], dtype=torch.float64) / 5.0
             * torch.tensor([1.0, 1.25], dtype=torch.float64))  # frequency (2, 1)
    k = sum(taps[0, a].to(torch.complex128) * torch.exp(1j * (offsets[a].double() @ theta))
            for a in range(4))
    expected = k @ k.mH  # output side (3 < 5), up to conjugation
    got = grams.blocks[index]
    assert torch.allclose(got, expected, atol=1e-12) \
        or torch.allclose(got, expected.conj(), atol=1e-12)
    assert 0 < grams.error < 1e-10


def test_cholesky_certificate_is_sharp_and_never_wrong() -> None:
    """Proves lambda_max < tau just above the top eigenvalue; refuses just below it."""
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(6, 40, 40, generator=gen, dtype=torch.complex128)
    g = a.mH @ a
    top = float(torch.linalg.eigvalsh(g)[:, -1].max())
    assert bool(cholesky_certify(g, top * (1 + 1e-7)).all())
    assert not bool(cholesky_certify(g, top * (1 - 1e-7)).all())
    tau, lower, _, _ = max_eig_bound(g)
    assert lower <= top < tau <= top * 1.01


def test_rounding_margin_refuses_a_matrix_at_the_edge() -> None:
    """tau equal to lambda_max exactly (a singular tau I - G) must not be certified."""
    g = torch.diag(torch.tensor([3.0, 1.0, 2.0], dtype=torch.complex128))[None]
    assert not bool(cholesky_certify(g, 3.0)[0])
    assert bool(cholesky_certify(g, 3.0 * (1 + 1e-9))[0])


def test_gram_iteration_is_an_upper_bound_at_every_step() -> None:
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(3, 30, 30, generator=gen, dtype=torch.complex128)
    g = a.mH @ a
    top = torch.linalg.eigvalsh(g)[:, -1]
    previous = None
    for steps in range(0, 7):
        rho = gram_iteration_bound(g, steps)
        assert bool((rho >= top).all())
        if previous is not None:
            assert bool((rho <= previous * (1 + 1e-12)).all())
        previous = rho
    assert bool((previous <= top * 1.01).all())


def test_large_matrix_norm_uses_a_certified_gram() -> None:
    gen = torch.Generator().manual_seed(6)
    m = torch.randn(700, 900, generator=gen, dtype=torch.float64)
    truth = float(torch.linalg.matrix_norm(m, 2))
    assert truth <= matrix_norm(m) <= truth * (1 + 1e-8)


def test_exact_on_a_large_operator_is_a_user_error() -> None:
    graph = conv_graph(8, 8, (20, 20), (3, 3), {"pads": [1, 1, 1, 1]})
    with pytest.raises(UserError, match="exact"):
        bound(graph, "exact", exact_max_dim=100)


def test_power_method_is_labelled_an_estimate() -> None:
    graph = conv_graph(2, 3, (8, 8), (3, 3), {"pads": [1, 1, 1, 1]})
    result = bound(graph, "power")
    assert not result.certified and result.value <= true_norm(graph) * (1 + 1e-6)


def test_auto_falls_back_to_fft_above_the_dense_limit() -> None:
    graph = conv_graph(3, 3, (16, 16), (3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]})
    result = bound(graph, exact_max_dim=10, layer_budget=1e-9)  # no time for the exact Gram either
    assert result.method == "fft" and result.certified and "grid" in result.detail
    assert true_norm(graph) <= result.value


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    graph = conv_graph(8, 8, (16, 16), (3, 3), {"pads": [1, 1, 1, 1]})
    cpu = bound(graph, "fft").value
    gpu = bound(graph, "fft", device="cuda").value
    assert gpu == pytest.approx(cpu, rel=1e-9)


def test_cholesky_margin_refuses_a_gap_below_the_rounding_bound() -> None:
    """tau I - G is positive definite in exact arithmetic when tau exceeds lambda_max by
    1e-15 relative, and a bare Cholesky succeeds; the certificate still refuses, because
    its backward-error margin for n = 400 is larger than that gap."""
    g = torch.diag(torch.full((400,), 3.0, dtype=torch.complex128))
    g[0, 1] = g[1, 0] = 1.0  # eigenvalues 2, 3 (x 397), 4: trace(tau I - G) ~ 400 tau - 1200
    tau = 4.0 * (1 + 2e-15)
    assert int(torch.linalg.cholesky_ex(tau * torch.eye(400, dtype=torch.complex128) - g)[1]) == 0
    assert not bool(cholesky_certify(g[None], tau)[0])
    assert bool(cholesky_certify(g[None], 4.0 * (1 + 1e-10))[0])


def near_singular_cases(count: int, relative_gap: float, seed: int, hermitian: bool = True
                        ) -> list[tuple[np.ndarray, float]]:
    """2x2 symmetric / Hermitian G and tau just at or below lambda_max(G) (tau I - G not
    positive definite in exact rational arithmetic on the stored floats), for which a bare
    LAPACK Cholesky of the rounded tau I - G (single precision when relative_gap > 0)
    still succeeds."""
    from fractions import Fraction

    rng, out = np.random.default_rng(seed), []
    single = relative_gap > 0
    while len(out) < count:
        a, c, br, bi = rng.standard_normal(4)
        bi = bi if hermitian else 0.0
        g = (np.array([[a, br + 1j * bi], [br - 1j * bi, c]]) if hermitian
             else np.array([[a, br], [br, c]]))
        top = (a + c) / 2 + math.hypot((a - c) / 2, math.hypot(br, bi))
        tau = top * (1 - relative_gap * rng.random())
        ta, tc = Fraction(tau) - Fraction(a), Fraction(tau) - Fraction(c)
        if ta > 0 and ta * tc - Fraction(br) ** 2 - Fraction(bi) ** 2 > 0:
            continue  # positive definite after all: not a trap
        bare = tau * np.eye(2) - g
        lapack = scipy.linalg.lapack
        factor = {(True, True): lapack.cpotrf, (True, False): lapack.spotrf,
                  (False, True): lapack.zpotrf, (False, False): lapack.dpotrf}
        rounded = bare.astype(np.complex64 if hermitian else np.float32) if single else bare
        if factor[single, hermitian](rounded, lower=1)[1] == 0:
            out.append((g, tau))
    return out


@pytest.mark.parametrize("kind", ["float64", "single", "dense"])
def test_certificate_never_accepts_a_matrix_that_is_not_positive_definite(kind: str) -> None:
    """Traps: tau I - G is not positive definite (exact arithmetic) yet a bare Cholesky in
    the working precision succeeds; the certificate (batched float64 or single precision,
    dense LAPACK) must refuse every one. Without the margin it would accept them all."""
    cases = near_singular_cases(40, 1e-7 if kind == "single" else 0.0, seed=3,
                                hermitian=kind != "dense")
    for g, tau in cases:
        if kind == "dense":
            assert not certify_dense(g.copy(), tau)
        else:
            assert not bool(cholesky_certify(torch.from_numpy(g)[None], tau, kind == "single")[0])


def test_single_precision_certificate_proves_blocks_well_below_tau() -> None:
    gen = torch.Generator().manual_seed(8)
    a = torch.randn(20, 64, 64, generator=gen, dtype=torch.complex128)
    g = a.mH @ a
    top = torch.linalg.eigvalsh(g)[:, -1]
    assert bool(cholesky_certify(g, float(top.max()) * 1.01, low_precision=True).all())
    proven = cholesky_certify(g, float(top.max()) * (1 + 1e-6), low_precision=True)
    assert not bool(proven[int(top.argmax())])
    assert bool(cholesky_certify(g, float(top.max()) * (1 + 1e-6))[int(top.argmax())])


def test_max_eig_bound_finds_a_block_that_trace_ranking_misses() -> None:
    """The block with the largest eigenvalue has the smallest trace: it is outside the
    sampled blocks, fails the first Cholesky, and tau must be raised to cover it."""
    flat = torch.eye(30, dtype=torch.complex128).repeat(40, 1, 1)  # lambda 1, trace 30
    spike = torch.zeros(30, 30, dtype=torch.complex128)
    spike[0, 0] = 2.0  # lambda 2, trace 2
    blocks = torch.cat([flat, spike[None]])
    tau, lower, worst, _ = max_eig_bound(blocks)
    assert worst == 40 and lower == pytest.approx(2.0)
    assert 2.0 < tau <= 2.0 * 1.01


@pytest.mark.parametrize("dims, c_out, c_in", [(1, 4, 6), (3, 4, 6), (3, 12, 9)])
def test_every_frequency_block_matches_a_direct_dft(dims: int, c_out: int, c_in: int) -> None:
    """Every block (half-difference Gammas + real DFT) equals K(w) K(w)^H computed directly
    at its frequency, up to conjugation; one frequency of each conjugate pair, all covered
    (4 x 4 blocks: groups formed together; 9 x 9: group by group)."""
    gen = torch.Generator().manual_seed(7)
    taps = torch.randn(2, 3, c_out, c_in, generator=gen, dtype=torch.float64)
    offsets = torch.tensor([[0] * dims, [1] + [0] * (dims - 1), [2] + [1] * (dims - 1)])
    grid = (6,) if dims == 1 else (4, 3, 5)
    grams = frequency_grams(taps, offsets, grid)
    size = torch.tensor(grid)
    kept = {tuple(f) for f in grams.freqs.tolist()}
    assert all((f in kept) != (tuple(torch.remainder(-torch.tensor(f), size).tolist()) in kept)
               or torch.equal(torch.remainder(-torch.tensor(f), size), torch.tensor(f))
               for f in itertools.product(*(range(v) for v in grid)))  # one of each pair
    count = grams.freqs.shape[0]
    for index in range(grams.blocks.shape[0]):
        group, freq = divmod(index, count)
        theta = 2 * math.pi * grams.freqs[freq].double() / size.double()
        k = sum(taps[group, a].to(torch.complex128) * torch.exp(1j * (offsets[a].double() @ theta))
                for a in range(3))
        # the smaller side
        got, expected = grams.blocks[index], (k @ k.mH if c_out < c_in else k.mH @ k)
        assert torch.allclose(got, expected, atol=1e-11) \
            or torch.allclose(got, expected.conj(), atol=1e-11)
    assert grams.blocks.shape[0] == 2 * count


def test_auto_takes_the_dense_svd_when_the_time_budget_allows() -> None:
    """6 channels on 14x14: above the always-dense size; the time model (~0.5 s) decides."""
    graph = conv_graph(6, 6, (14, 14), (3, 3), {"pads": [1, 1, 1, 1]})
    truth = true_norm(graph)
    tight = bound(graph, layer_budget=60.0)
    quick = bound(graph, layer_budget=0.01)
    assert tight.method == "exact-svd" and quick.method == "fft"
    assert truth <= tight.value <= truth * (1 + 1e-6) and truth <= quick.value


@pytest.mark.parametrize("graph", random_cases(16, seed=11), ids=lambda g: "")
def test_exact_gram_is_certified_and_tight_on_random_layers(graph: Graph) -> None:
    """auto with the dense SVD ruled out: the zero-padded operator's own Gram (stride,
    dilation, padding, groups, 1d/2d/3d, transpose) is within 1e-5 of the truth, above it."""
    truth = true_norm(graph)
    result = bound(graph, exact_max_dim=1)
    assert result.certified and result.method in ("exact-gram", "exact-svd")
    assert truth <= result.value <= truth * (1 + 1e-5) + 1e-12


def test_exact_gram_is_tight_where_the_circular_embedding_is_loose() -> None:
    """16 channels at 4x4, pad 1: the circular embedding (6x6 grid) is loose by > 2 %;
    the exact Gram is not. Without the time for it, auto keeps the frequency bound."""
    graph = conv_graph(16, 16, (4, 4), (3, 3), {"pads": [1, 1, 1, 1]})
    truth = true_norm(graph)
    exact = bound(graph, exact_max_dim=1)
    loose = bound(graph, exact_max_dim=1, layer_budget=1e-9)
    assert exact.method == "exact-gram" and loose.method == "fft"
    assert truth <= exact.value <= truth * (1 + 1e-5)
    assert loose.value > 1.02 * truth


def test_dense_certificate_refuses_a_gap_below_the_rounding_bound() -> None:
    """As for the batched certificate: a gap of 2e-15 relative passes a bare Cholesky but
    is below the backward-error margin for n = 400."""
    g = np.diag(np.full(400, 3.0))
    g[0, 1] = g[1, 0] = 1.0
    tau = 4.0 * (1 + 2e-15)
    assert scipy.linalg.lapack.dpotrf(tau * np.eye(400) - g)[1] == 0
    assert not certify_dense(g.copy(), tau)
    assert certify_dense(g.copy(), 4.0 * (1 + 1e-10))
    gen = np.random.default_rng(3)
    a = gen.standard_normal((60, 60))
    top = float(np.linalg.eigvalsh(a @ a.T)[-1])
    assert certify_dense(a @ a.T, top * (1 + 1e-7)) and not certify_dense(a @ a.T, top * (1 - 1e-7))
