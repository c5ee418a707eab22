"""The Gram matrix of a stride-1 multi-channel correlation at every frequency of a grid.

With taps k_a (C_out x C_in) at offsets a, the circular correlation on an N-grid is
block-diagonal in frequency: K(w) = sum_a k_a e^{i w.a}. Its Gram on the smaller side,
e.g. K(w)^H K(w) = sum_delta Gamma_delta e^{-i w.delta} with Gamma_delta = sum_{a-b=delta}
k_a^T k_b, needs only the differences delta >= 0 (lexicographically; Gamma_{-delta} =
Gamma_delta^T), each one matmul of the stacked taps:
Re G = Gamma_0 + sum_{delta>0} cos(w.delta) (Gamma_delta + Gamma_delta^T),
Im G = -sum_{delta>0} sin(w.delta) (Gamma_delta - Gamma_delta^T): two real matmuls of a
cosine / sine table with the stacked matrices, no per-frequency matmul. Of every conjugate
pair of frequencies {w, -w} only one is formed (G(-w) is the conjugate of G(w): same
eigenvalues).

`frequency_grams` also returns an absolute bound on the rounding error of every block
(spectral norm), from an elementwise bound: every term is at most B_ij =
(|K|_1^T |K|_1)_ij, where |K|_1 = sum_a |k_a|; a Gamma entry is a dot product of at most
T * C_out terms, the DFT a sum of at most prod(2N-1) terms with twiddles accurate to a few
u (argument reduced exactly in integers).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import scipy.linalg.blas
import torch

from lipcheck.spectral import layer_clock
from lipcheck.spectral.scratch import Scratch

UNIT_ROUNDOFF = 2.0 ** -53
TILE_ROWS = 64           # frequencies per tile when forming blocks
TILE_ENTRIES = 2**18     # frequencies x entries per tile (4 MB of complex output)
SMALL_BLOCK = 64         # blocks of at most this many entries: groups mixed in one batched product


def gamma(n: float, u: float = UNIT_ROUNDOFF) -> float:
    """Higham's gamma_n = n u / (1 - n u), with a factor 4 for complex arithmetic."""
    nu = 4.0 * n * u
    return nu / (1.0 - nu)


@dataclass
class FrequencyGrams:
    """Block g * F + f is the Gram of group g at frequency 2 pi freqs[f] / grid, formed on
    demand (`fetch`) from the half-difference matrices: the whole spectrum is never held at
    once. `stacked[g]` interleaves them so that one real matmul writes complex blocks:
    row d holds Gamma_0 / Gamma_d + Gamma_d^T in the real slots (even columns), row D + d
    holds Gamma_d - Gamma_d^T in the imaginary slots; `coefficients` is [cos | -sin]."""

    stacked: torch.Tensor        # (groups, 2D, 2 n^2)
    coefficients: torch.Tensor   # (F, 2D)
    diagonal_sums: torch.Tensor  # (groups, D): traces of Gamma_0, Gamma_d + Gamma_d^T
    freqs: torch.Tensor          # (F, d) int64: one frequency of each conjugate pair
    grid: tuple[int, ...]
    n: int
    error: float                 # bound on the spectral norm of every block's rounding error

    @property
    def count(self) -> int:
        return self.stacked.shape[0] * self.freqs.shape[0]

    @property
    def input_bytes(self) -> int:
        """What one fetch reads besides its output."""
        return 8 * self.stacked.numel()

    def traces(self) -> torch.Tensor:
        """trace G per block (the imaginary part is traceless): no block is formed."""
        half = self.diagonal_sums.shape[1]
        return (self.diagonal_sums @ self.coefficients[:, :half].T).reshape(-1)

    def fetch(self, index: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
        """The blocks at `index` (k, n, n) complex128 (a view of `scratch` when given),
        written by tiles of frequencies x entries straight into the complex result."""
        n2, count, k = self.n * self.n, self.freqs.shape[0], index.numel()
        scratch = scratch or Scratch()
        device = self.coefficients.device
        index = index.to(device)
        out = scratch.take("blocks", (k, self.n, self.n), torch.complex128, device)
        flat = torch.view_as_real(out).view(k, 2 * n2)
        rows_per = min(max(k, 1), max(TILE_ROWS, TILE_ENTRIES // n2))
        width = min(2 * n2, max(2048, 2 * TILE_ENTRIES // rows_per))
        for start in range(0, k, rows_per):
            stop = min(k, start + rows_per)
            group, freq = index[start:stop] // count, index[start:stop] % count
            groups = torch.unique(group)
            if groups.numel() > 1 and n2 <= SMALL_BLOCK:  # many small groups: one batched product
                rows = self.coefficients[freq][:, None, :]
                flat[start:stop] = torch.bmm(rows, self.stacked[group])[:, 0]
                continue
            for g in groups.tolist():
                mine = group == g
                self._tile_group(g, self.coefficients[freq[mine]], flat, start, stop, mine, width)
        return out

    def _tile_group(self, g: int, coefficients: torch.Tensor, flat: torch.Tensor, start: int,
                    stop: int, mine: torch.Tensor, width: int) -> None:
        """The rows `mine` of flat[start:stop] (all of group g), in column tiles."""
        every = bool(mine.all())
        rows = torch.nonzero(mine).flatten() + start
        for lo in range(0, flat.shape[1], width):
            cols = slice(lo, min(flat.shape[1], lo + width))
            if every:
                torch.mm(coefficients, self.stacked[g, :, cols], out=flat[start:stop, cols])
            else:
                flat[rows, cols] = coefficients @ self.stacked[g, :, cols]

    @property
    def blocks(self) -> torch.Tensor:
        return self.fetch(torch.arange(self.count))


def frequency_grams(taps: torch.Tensor, offsets: torch.Tensor, grid: tuple[int, ...],
                    device: torch.device | str = "cpu",
                    scratch: Scratch | None = None) -> FrequencyGrams:
    """taps (groups, T, C_out, C_in) float64, offsets (T, d) on a circle of size `grid`;
    blocks on the smaller side n = min(C_out, C_in)."""
    taps = taps.to(device=device, dtype=torch.float64)
    if taps.shape[2] < taps.shape[3]:
        taps = taps.transpose(2, 3)  # the output side is smaller: K K^H has the same norm
    g, n = taps.shape[0], taps.shape[3]
    deltas, pairs = _differences(offsets)
    half = len(deltas)
    stacked = (scratch or Scratch()).take("stacked", (g, 2 * half, n, n, 2), torch.float64,
                                          taps.device)
    stacked[:, :half, ..., 1] = 0.0
    stacked[:, half:, ..., 0] = 0.0
    _half_gammas(taps, pairs, stacked)
    diagonal_sums = stacked[:, :half, ..., 0].diagonal(dim1=-2, dim2=-1).sum(dim=-1)
    freqs = conjugate_representatives(grid)
    delta_table = torch.tensor(deltas, dtype=torch.int64).reshape(-1, offsets.shape[1])
    cos, sin = _twiddles(freqs, delta_table, grid, device)  # (F, D) each
    return FrequencyGrams(stacked.reshape(g, 2 * half, 2 * n * n), torch.cat([cos, sin], dim=1),
                          diagonal_sums, freqs, tuple(grid), n, _formation_error(taps, grid))


def conjugate_representatives(grid: tuple[int, ...]) -> torch.Tensor:
    """The frequencies f of the grid with flat(f) <= flat(-f mod N): one of each pair."""
    axes = torch.meshgrid(*(torch.arange(v, dtype=torch.int64) for v in grid), indexing="ij")
    freqs = torch.stack([a.reshape(-1) for a in axes], dim=1)
    size = torch.tensor(grid, dtype=torch.int64)
    strides = torch.tensor([math.prod(grid[i + 1:]) for i in range(len(grid))], dtype=torch.int64)
    mirror = torch.remainder(-freqs, size) @ strides
    return freqs[freqs @ strides <= mirror]


def _differences(offsets: torch.Tensor
                 ) -> tuple[list[tuple[int, ...]], dict[tuple[int, ...], list[tuple[int, int]]]]:
    """The tap differences delta = a - b >= 0 (lexicographically; the first is 0), and the
    tap pairs (a, b) of each."""
    pairs: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for a, b in itertools.product(range(offsets.shape[0]), repeat=2):
        delta = tuple(int(v) for v in offsets[a] - offsets[b])
        if delta >= (0,) * len(delta):
            pairs.setdefault(delta, []).append((a, b))
    return sorted(pairs), pairs


def _half_gammas(taps: torch.Tensor, pairs: dict[tuple[int, ...], list[tuple[int, int]]],
                 stacked: torch.Tensor) -> None:
    """Into stacked (groups, 2D, n, n, 2): row d's real slots get Gamma_0 (d = 0) or
    Gamma_d + Gamma_d^T, row D + d's imaginary slots Gamma_d - Gamma_d^T, with
    Gamma_d = sum_{a-b=d} k_a^T k_b accumulated in place (no stacked copies of the taps)."""
    g, _, _, n = taps.shape
    half = len(pairs)
    gram, part = (torch.empty((g, n, n), dtype=torch.float64, device=taps.device) for _ in range(2))
    for i, delta in enumerate(sorted(pairs)):
        layer_clock.check("tap-pair products")
        if i == 0 and taps.device.type == "cpu":
            _diagonal_gram(taps, gram)
        else:
            gram.zero_()
            for a, b in pairs[delta]:
                torch.baddbmm(gram, taps[:, a].mT, taps[:, b], out=gram)
        if i == 0:
            stacked[:, 0, ..., 0] = gram
            stacked[:, half, ..., 1] = 0.0
        else:  # via a contiguous temporary: a strided sum with a transposed input is slow
            stacked[:, i, ..., 0] = torch.add(gram, gram.mT, out=part)
            stacked[:, half + i, ..., 1] = torch.sub(gram, gram.mT, out=part)


def _diagonal_gram(taps: torch.Tensor, out: torch.Tensor) -> None:
    """Gamma_0 = sum_a k_a^T k_a per group by one symmetric rank-k update (BLAS syrk: half
    the flops of the products), then mirrored. Taps that are a transposed view (the output
    side) are gathered as [k_1^T ... k_T^T] (contiguous rows) instead of copied strided."""
    t, c, n = taps.shape[1:]
    for g in range(taps.shape[0]):
        if taps[g].stride(-1) == 1:
            rows = taps[g].reshape(t * c, n).numpy()                  # W = [k_1; ...; k_T]
            upper = scipy.linalg.blas.dsyrk(1.0, rows.T)              # W^T W
        else:
            columns = taps[g].transpose(1, 2).permute(1, 0, 2).reshape(n, t * c).numpy()
            upper = scipy.linalg.blas.dsyrk(1.0, columns.T, trans=1)  # [k_a^T] [k_a^T]^T
        full = torch.from_numpy(upper)
        out[g] = full.triu() + full.triu(1).mT


def _twiddles(freqs: torch.Tensor, deltas: torch.Tensor, grid: tuple[int, ...],
              device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and -sin of w.delta (rows: frequencies, columns: deltas). Each axis's phase
    f*delta is reduced mod N exactly in integers; the fractions are summed in float64
    (angle error a few u)."""
    turns = torch.zeros(freqs.shape[0], deltas.shape[0], dtype=torch.float64)
    for axis, size in enumerate(grid):
        product = torch.remainder(freqs[:, axis, None] * deltas[None, :, axis], size)
        turns += product.to(torch.float64) / size
    angle = turns * (2 * math.pi)
    return angle.cos().to(device), (-angle.sin()).to(device)


def _formation_error(taps: torch.Tensor, grid: tuple[int, ...]) -> float:
    g, t, c_out, n = taps.shape
    absolute = taps.abs().sum(dim=1)  # (g, C_out, n): |K|_1 (the same for a transposed view)
    scale = float((absolute.square().sum(dim=(1, 2))).max())  # ||B||_F <= ||  |K|_1 ||_F^2
    # the DFT sums <= (2N-1)^d terms; twiddle angles carry < (2 pi d (d + 3) + 2) u error
    d = len(grid)
    dft_terms = math.prod(2 * a - 1 for a in grid) + 8 * d * (d + 3) + 8
    return gamma(t * c_out + dft_terms + 8) * scale
