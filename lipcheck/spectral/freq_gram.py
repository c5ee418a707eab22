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

import torch

from lipcheck.spectral.scratch import Scratch

UNIT_ROUNDOFF = 2.0 ** -53
TILE_ROWS = 64           # frequencies per tile when forming blocks
TILE_ENTRIES = 2**18     # frequencies x entries per tile: two 2 MB float64 tiles, in cache


def gamma(n: float, u: float = UNIT_ROUNDOFF) -> float:
    """Higham's gamma_n = n u / (1 - n u), with a factor 4 for complex arithmetic."""
    nu = 4.0 * n * u
    return nu / (1.0 - nu)


@dataclass
class FrequencyGrams:
    """Block g * F + f is the Gram of group g at frequency 2 pi freqs[f] / grid, formed on
    demand (`fetch`) from the half-difference matrices: a few blocks at a time stay in
    cache, and the whole spectrum is never held at once."""

    symmetric: torch.Tensor      # (groups, D, n, n): Gamma_0, Gamma_d + Gamma_d^T
    antisymmetric: torch.Tensor  # (groups, D, n, n): 0, Gamma_d - Gamma_d^T
    cos: torch.Tensor            # (F, D)
    sin: torch.Tensor            # (F, D): -sin(w.delta)
    freqs: torch.Tensor          # (F, d) int64: one frequency of each conjugate pair
    grid: tuple[int, ...]
    error: float                 # bound on the spectral norm of every block's rounding error

    @property
    def count(self) -> int:
        return self.symmetric.shape[0] * self.freqs.shape[0]

    @property
    def n(self) -> int:
        return self.symmetric.shape[-1]

    @property
    def input_bytes(self) -> int:
        """What one fetch reads besides its output (the half-difference matrices)."""
        return 8 * (self.symmetric.numel() + self.antisymmetric.numel())

    def traces(self) -> torch.Tensor:
        """trace G per block (the imaginary part is traceless): no block is formed."""
        diagonal = self.symmetric.diagonal(dim1=-2, dim2=-1).sum(dim=-1)  # (groups, D)
        return (diagonal @ self.cos.T).reshape(-1)

    def fetch(self, index: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
        """The blocks at `index` (k, n, n) complex128 (a view of `scratch` when given),
        computed in tiles of frequencies x entries small enough to stay in cache, each
        written once into the result."""
        n, count, k = self.n, self.freqs.shape[0], index.numel()
        scratch = scratch or Scratch()
        device = self.cos.device
        index = index.to(device)
        out = scratch.take("blocks", (k, n, n), torch.complex128, device)
        rows_per = min(max(k, 1), TILE_ROWS)
        width = min(n * n, max(1024, TILE_ENTRIES // rows_per))
        tiles = (scratch.take("real", (rows_per, width), torch.float64, device),
                 scratch.take("imag", (rows_per, width), torch.float64, device),
                 scratch.take("tile", (rows_per, width), torch.complex128, device))
        flat = out.view(k, n * n)
        for start in range(0, k, rows_per):
            rows = torch.arange(start, min(k, start + rows_per), device=device)
            group, freq = index[rows] // count, index[rows] % count
            for g in torch.unique(group).tolist():
                mine = rows[group == g]
                self._tiles(g, freq[group == g], flat, mine, tiles, width)
        return out

    def _tiles(self, g: int, freq: torch.Tensor, flat: torch.Tensor, rows: torch.Tensor,
               tiles: tuple[torch.Tensor, torch.Tensor, torch.Tensor], width: int) -> None:
        n2, count = self.n * self.n, rows.numel()
        cos, sin = self.cos[freq], self.sin[freq]
        symmetric, antisymmetric = self.symmetric[g].reshape(-1, n2), self.antisymmetric[g].reshape(-1, n2)
        first, last = int(rows[0]), int(rows[-1])
        target = flat[first:last + 1] if last - first + 1 == count else None
        for lo in range(0, n2, width):
            cols = slice(lo, min(n2, lo + width))
            real, imag, tile = (t[:count, :cols.stop - lo] for t in tiles)
            torch.matmul(cos, symmetric[:, cols], out=real)
            torch.matmul(sin, antisymmetric[:, cols], out=imag)
            torch.complex(real, imag, out=tile)
            if target is not None:
                target[:, cols] = tile
            else:
                flat[rows, cols] = tile

    @property
    def blocks(self) -> torch.Tensor:
        return self.fetch(torch.arange(self.count))


def frequency_grams(taps: torch.Tensor, offsets: torch.Tensor, grid: tuple[int, ...],
                    device: torch.device | str = "cpu") -> FrequencyGrams:
    """taps (groups, T, C_out, C_in) float64, offsets (T, d) on a circle of size `grid`;
    blocks on the smaller side n = min(C_out, C_in)."""
    taps = taps.to(device=device, dtype=torch.float64)
    if taps.shape[2] < taps.shape[3]:
        taps = taps.transpose(2, 3)  # the output side is smaller: K K^H has the same norm
    deltas, symmetric, antisymmetric = _half_gammas(taps, offsets)
    freqs = conjugate_representatives(grid)
    cos, sin = _twiddles(freqs, deltas, grid, device)  # (F, D) each
    return FrequencyGrams(symmetric, antisymmetric, cos, sin, freqs, tuple(grid), _formation_error(taps, grid))


def conjugate_representatives(grid: tuple[int, ...]) -> torch.Tensor:
    """The frequencies f of the grid with flat(f) <= flat(-f mod N): one of each pair."""
    axes = torch.meshgrid(*(torch.arange(v, dtype=torch.int64) for v in grid), indexing="ij")
    freqs = torch.stack([a.reshape(-1) for a in axes], dim=1)
    size = torch.tensor(grid, dtype=torch.int64)
    strides = torch.tensor([math.prod(grid[i + 1:]) for i in range(len(grid))], dtype=torch.int64)
    mirror = torch.remainder(-freqs, size) @ strides
    return freqs[freqs @ strides <= mirror]


def _half_gammas(taps: torch.Tensor, offsets: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The differences delta >= 0 (first row 0), and per group the stacked matrices
    Gamma_0, Gamma_d + Gamma_d^T (for cos) and 0, Gamma_d - Gamma_d^T (for sin). Each
    tap-pair product is accumulated in place (no stacked copies of the taps)."""
    g, t, c_out, n = taps.shape
    pairs: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for a, b in itertools.product(range(t), repeat=2):
        delta = tuple(int(v) for v in offsets[a] - offsets[b])
        if delta >= (0,) * len(delta):  # lexicographic: delta > 0 or delta = 0
            pairs.setdefault(delta, []).append((a, b))
    deltas = sorted(pairs)
    symmetric = torch.zeros((g, len(deltas), n, n), dtype=torch.float64, device=taps.device)
    antisymmetric = torch.zeros_like(symmetric)
    gram = torch.empty((g, n, n), dtype=torch.float64, device=taps.device)
    for i, delta in enumerate(deltas):
        gram.zero_()
        for a, b in pairs[delta]:
            torch.baddbmm(gram, taps[:, a].mT, taps[:, b], out=gram)
        if i == 0:
            symmetric[:, 0] = gram
        else:
            torch.add(gram, gram.mT, out=symmetric[:, i])
            torch.sub(gram, gram.mT, out=antisymmetric[:, i])
    return torch.tensor(deltas, dtype=torch.int64).reshape(-1, offsets.shape[1]), symmetric, antisymmetric


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
    absolute = taps.abs().sum(dim=1)  # (g, C_out, n): |K|_1
    scale = float((absolute.square().sum(dim=(1, 2))).max())  # ||B||_F <= ||  |K|_1 ||_F^2
    # the DFT sums <= (2N-1)^d terms; twiddle angles carry < (2 pi d (d + 3) + 2) u error
    d = len(grid)
    dft_terms = math.prod(2 * a - 1 for a in grid) + 8 * d * (d + 3) + 8
    return gamma(t * c_out + dft_terms + 8) * scale
