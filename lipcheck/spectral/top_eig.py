"""A proven bound on the largest eigenvalue over many Hermitian PSD blocks.

`max_eig_bound` certifies the blocks against a running threshold tau in order of
decreasing trace, a chunk at a time (block_bounds.cholesky_certify). tau starts at the
top-eigenvalue estimate of the largest-trace block times 1 + eta; a block that fails is a
"record": its top eigenvalue is estimated (eigvalsh for small blocks, Lanczos checked
against the float64 Rayleigh quotient for large ones), tau is raised, and only the
failing blocks of the chunk are tested again. Blocks proven earlier stay proven (tau only
grows). Blocks whose single-precision margin is small (below SINGLE_FIRST * tau), or that
are predicted to lie well below tau (the largest ratio lambda_max / mean eigenvalue seen so
far, times their mean eigenvalue), are tried in single precision first; a failure there
only sends them to float64. Cost: one Cholesky per block, plus an estimate and a Cholesky
per record. Estimates only choose tau: every bound comes from a certificate.

Blocks come from a `BlockSource`: a tensor, or frequency Grams formed on demand.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import torch

from lipcheck.spectral import layer_clock
from lipcheck.spectral.block_bounds import (
    SINGLE_ROUNDOFF,
    cholesky_certify,
    chunks,
    fro_bound,
    squared_frobenius,
)
from lipcheck.spectral.freq_gram import gamma
from lipcheck.spectral.krylov import RitzSettled, lanczos
from lipcheck.spectral.scratch import Scratch

FETCH_BYTES = 2**28    # blocks formed at a time: up to 256 MB, so that a source's inputs (when
                       # larger than the cache) are read at most about twice per block formed
CERTIFY_BYTES = 2**23  # blocks certified at a time: ~8 MB (two 512 x 512 complex)
SINGLE_FIRST = 0.02    # single precision first on every block whose margin is below 2 % of tau
LANCZOS_FROM = 128     # larger blocks: a top eigenvalue by Lanczos (eigvalsh costs ~4 Choleskys)


class BlockSource(Protocol):
    @property
    def count(self) -> int: ...

    @property
    def n(self) -> int: ...

    @property
    def input_bytes(self) -> int: ...  # what a fetch reads besides its output (fetch size)

    def traces(self) -> torch.Tensor: ...

    def fetch(self, index: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor: ...


@dataclass
class TensorBlocks:
    tensor: torch.Tensor

    @property
    def count(self) -> int:
        return self.tensor.shape[0]

    @property
    def n(self) -> int:
        return self.tensor.shape[-1]

    input_bytes: int = 0

    def traces(self) -> torch.Tensor:
        return self.tensor.diagonal(dim1=-2, dim2=-1).real.sum(dim=-1)

    def fetch(self, index: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
        return self.tensor[index.to(self.tensor.device)]


class EigBound(NamedTuple):
    tau: float                    # every block has lambda_max < tau (proven)
    lower: float                  # the largest top-eigenvalue estimate computed (from below)
    worst: int                    # the block it belongs to
    vector: torch.Tensor | None   # its top eigenvector estimate, when Lanczos computed one


@dataclass
class _Search:
    tau: float
    lower: float
    worst: int
    ratio: float   # largest lambda_max / mean eigenvalue seen
    vector: torch.Tensor | None = None

    def result(self) -> EigBound:
        return EigBound(self.tau, self.lower, self.worst, self.vector)


def max_eig_bound(blocks: torch.Tensor | BlockSource, eta: float = 1e-4,
                  scratch: Scratch | None = None) -> EigBound:
    source = TensorBlocks(blocks) if isinstance(blocks, torch.Tensor) else blocks
    if source.count == 0:
        return EigBound(0.0, 0.0, 0, None)
    traces = source.traces().cpu()
    order = torch.argsort(traces, descending=True)
    scratch = scratch or Scratch()
    fetch_bytes = min(FETCH_BYTES, max(CERTIFY_BYTES, 2 * source.input_bytes))
    state: _Search | None = None
    for part in chunks(source.count, source.n, fetch_bytes):
        layer_clock.check("frequency blocks")
        fetched = source.fetch(order[part], scratch)
        if state is None:  # the largest-trace block sets the first threshold
            first_zero = float(squared_frobenius(fetched[:1]).max()) == 0.0
            if first_zero and float(traces.abs().max()) == 0.0:
                return _all_zero(source)
            value, _, vector = _estimate_top(fetched, torch.arange(1))
            state = _Search(_threshold(value, eta), value, int(order[0]),
                            _ratio(value, float(traces[order[0]]), source.n), vector)
        for sub in chunks(fetched.shape[0], source.n, CERTIFY_BYTES):
            layer_clock.check("frequency blocks")
            index = order[part][sub]
            if not _certify_part(fetched[sub], index, traces[index], state, eta, scratch):
                state.tau = _fro_over(source)  # tau grew 26x without a proof: never seen
                return state.result()
    assert state is not None
    return state.result()


def _certify_part(blocks: torch.Tensor, index: torch.Tensor, traces: torch.Tensor, state: _Search,
                  eta: float, scratch: Scratch) -> bool:
    """Prove every block of the chunk below state.tau, raising it at records."""
    proven = torch.zeros(blocks.shape[0], dtype=torch.bool)
    low = _single_is_enough(traces, state, blocks.shape[-1])
    if bool(low.all()):
        proven = cholesky_certify(blocks, state.tau, True, scratch).cpu()
    elif bool(low.any()):
        chosen = blocks[low.to(blocks.device)]
        proven[low] = cholesky_certify(chosen, state.tau, True, scratch).cpu()
    pending = torch.nonzero(~proven).flatten()
    for attempt in range(10):
        if pending.numel() == 0:
            return True
        subset = blocks if pending.numel() == blocks.shape[0] else blocks[pending.to(blocks.device)]
        pending = pending[~cholesky_certify(subset, state.tau, False, scratch).cpu()]
        if pending.numel() == 0:
            return True
        value, local, vector = _estimate_top(blocks, pending)
        state.ratio = max(state.ratio, _ratio(value, float(traces[local]), blocks.shape[-1]))
        if value > state.lower:
            state.lower, state.worst, state.vector = value, int(index[local]), vector
        state.tau = max(state.tau * (1 + eta * 4 ** attempt), _threshold(value, eta))
    return False


def _single_is_enough(traces: torch.Tensor, state: _Search, n: int) -> torch.Tensor:
    """Blocks worth a single-precision try: its margin (with ||G||_F <= trace G) is below
    SINGLE_FIRST * tau, or the predicted top eigenvalue plus 1.5x the margin is below tau."""
    g = gamma(n + 2, SINGLE_ROUNDOFF)
    tau = state.tau
    rounding = SINGLE_ROUNDOFF * (traces.abs() + 2 * math.sqrt(n) * tau)
    margin = 1.25 * (g * (n * tau - traces).abs() + rounding)
    return (margin < SINGLE_FIRST * tau) | (state.ratio * traces / n + 1.5 * margin < tau)


def _ratio(value: float, trace: float, n: int) -> float:
    return value * n / trace if trace > 0 else float(n)


def _all_zero(source: BlockSource) -> EigBound:
    return EigBound(_fro_over(source), 0.0, 0, None)


def _fro_over(source: BlockSource) -> float:
    """max over blocks of the trivial certificate ||G||_F, a chunk at a time."""
    order = torch.arange(source.count)
    parts = chunks(source.count, source.n, CERTIFY_BYTES)
    return max(fro_bound(source.fetch(order[part])) for part in parts)


def _threshold(value: float, eta: float) -> float:
    return max(value, 0.0) * (1 + eta) + 1e-300


def _estimate_top(blocks: torch.Tensor, among: torch.Tensor
                  ) -> tuple[float, int, torch.Tensor | None]:
    """(largest top-eigenvalue estimate, position, its vector or None) among the blocks
    at positions `among`."""
    if blocks.shape[-1] < LANCZOS_FROM:
        values = top_eigenvalues(blocks[among.to(blocks.device)]).cpu()
        best = int(values.argmax())
        return float(values[best]), int(among[best]), None
    results = [(_checked_lanczos(blocks[int(i)]), int(i)) for i in among]
    (value, vector), position = max(results, key=lambda r: r[0][0])
    return value, position, vector


def _checked_lanczos(block: torch.Tensor) -> tuple[float, torch.Tensor | None]:
    """Lanczos's top Ritz value, checked against the float64 Rayleigh quotient of its
    vector (a value from below): if they disagree the block's eigvalsh is used instead,
    so that a Lanczos failure cannot inflate tau."""
    value, _, vector = lanczos_top(block)
    x = vector.to(block.device, block.dtype)
    rayleigh = float((torch.vdot(x, block @ x) / torch.vdot(x, x)).real)
    if abs(value - rayleigh) <= 1e-4 * abs(value):
        return value, vector
    return float(torch.linalg.eigvalsh(block)[-1]), None


def top_eigenvalues(blocks: torch.Tensor) -> torch.Tensor:
    values = [torch.linalg.eigvalsh(blocks[p])[:, -1]
              for p in chunks(blocks.shape[0], blocks.shape[-1])]
    return torch.cat(values) if values else blocks.new_zeros(0).real


def lanczos_top(matrix: torch.Tensor, steps: int = 48, tol: float = 1e-5
                ) -> tuple[float, float, torch.Tensor]:
    """(Ritz value, residual norm, Ritz vector) for the top eigenvalue of a Hermitian
    matrix: krylov.lanczos from a fixed start, on the CPU with numpy (torch's complex
    matrix-vector product is ~4x slower there), in single precision for n >= LANCZOS_FROM
    (half the memory traffic); stopped when the Ritz value moves by less than tol relative
    over 4 steps (krylov.RitzSettled). An estimate only: the Ritz value is at most
    lambda_max up to rounding."""
    n = matrix.shape[-1]
    work = matrix.detach().cpu().numpy()
    if n >= LANCZOS_FROM and work.dtype in (np.complex128, np.float64):
        work = work.astype(np.complex64 if np.iscomplexobj(work) else np.float32)
    start = np.random.default_rng(0).standard_normal(n).astype(work.dtype)
    run = lanczos(lambda v: work @ v, start, min(n, steps), RitzSettled(tol))
    value, residual, vector = run.top()
    found = torch.from_numpy(vector)
    return value, residual, found.to(torch.complex128 if found.is_complex() else torch.float64)
