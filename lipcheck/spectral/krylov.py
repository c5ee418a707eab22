"""One Lanczos routine for the top of a Hermitian spectrum, over a matrix-vector product.

`lanczos(matvec, start, max_steps, stop)` runs at most `max_steps` steps of Lanczos on
the Hermitian operator `matvec` (1-d numpy arrays of `start`'s dtype in and out) from
`start`, with full reorthogonalisation: classical Gram-Schmidt against the whole basis,
twice ("twice is enough", Kahan; once is not enough in single precision after
convergence, where it lets Ritz values run above lambda_max). `stop` is the stopping
rule: called after every step with the run so far, True ends it (`RitzSettled`: the
Ritz value stopped moving; `ResidualBelow`: its residual is small; None: run every step).
A run also ends at a breakdown: a non-finite alpha (dropped), or beta <= 1e-30 |alpha|
(an invariant subspace was found).

Results are estimates from below (a Ritz value is at most lambda_max up to rounding);
callers that certify prove their bound some other way. Front ends: `top_eig.lanczos_top`
(a matrix), `operator.lanczos_estimate` (A^T A of an autograd operator),
`dense_gram.top_eigenvalue` (a float64 Gram, dense or a padded conv's, run on a float32
copy).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg


@dataclass
class Krylov:
    """A finished run: the tridiagonal (alphas, betas[:-1]), the residual norm betas[-1],
    and the Lanczos vectors (the first `steps` rows of `basis`)."""

    alphas: list[float]
    betas: list[float]
    basis: np.ndarray

    @property
    def steps(self) -> int:
        return len(self.alphas)

    def top(self) -> tuple[float, float, np.ndarray]:
        """(Ritz value, residual norm, Ritz vector in the basis' dtype) of the top
        eigenvalue; (nan, inf, start) when no step finished."""
        if not self.alphas:
            return math.nan, math.inf, self.basis[0]
        value, residual, coords = top_ritz(self.alphas, self.betas)
        return value, residual, coords.astype(self.basis.dtype) @ self.basis[:self.steps]


Stop = Callable[[Krylov], bool]


def lanczos(matvec: Callable[[np.ndarray], np.ndarray], start: np.ndarray, max_steps: int,
            stop: Stop | None = None) -> Krylov:
    """Lanczos on a Hermitian operator from `start` (normalised here; it fixes the dtype)."""
    basis = np.zeros((max_steps + 1, start.size), dtype=start.dtype)
    basis[0] = start.reshape(-1) / np.linalg.norm(start)
    run = Krylov([], [], basis)
    for j in range(max_steps):
        w = matvec(basis[j])
        alpha = float(np.vdot(basis[j], w).real)
        if not math.isfinite(alpha):
            break
        run.alphas.append(alpha)
        for _ in range(2):  # full reorthogonalisation, twice
            w = w - (basis[:j + 1].conj() @ w) @ basis[:j + 1]
        run.betas.append(float(np.linalg.norm(w)))
        if not run.betas[-1] > 1e-30 * max(abs(alpha), 1e-300):
            break
        if j + 1 == max_steps or (stop is not None and stop(run)):
            break
        basis[j + 1] = w / run.betas[-1]
    return run


class RitzSettled:
    """Stopping rule: every `every` steps from step `first` on, stop when the top Ritz value
    moved by at most `tol` relative since the last look, when its residual is below
    1e-3 * tol of it, or when beta is below 1e-13 of it (converged to rounding)."""

    def __init__(self, tol: float, first: int = 8, every: int = 4) -> None:
        self.tol, self.first, self.every = tol, first, every
        self.previous = -math.inf

    def __call__(self, run: Krylov) -> bool:
        k = run.steps
        if k < self.first or k % self.every:
            return False
        value, residual, _ = top_ritz(run.alphas, run.betas)
        scale = abs(value)
        done = (value - self.previous <= self.tol * scale or run.betas[-1] <= 1e-13 * scale
                or residual <= 1e-3 * self.tol * scale)
        self.previous = value
        return done


class ResidualBelow:
    """Stopping rule: every `every` steps from step `first` on, stop when the top Ritz pair's
    residual ||H x - theta x|| is at most `rel` times theta: the Rayleigh quotient of x is
    then within about (rel theta)^2 / gap of lambda_max."""

    def __init__(self, rel: float, first: int = 8, every: int = 4) -> None:
        self.rel, self.first, self.every = rel, first, every

    def __call__(self, run: Krylov) -> bool:
        if run.steps < self.first or run.steps % self.every:
            return False
        value, residual, _ = top_ritz(run.alphas, run.betas)
        return residual <= self.rel * abs(value)


def top_ritz(alphas: list[float], betas: list[float]) -> tuple[float, float, np.ndarray]:
    """The top eigenpair of the Lanczos tridiagonal (alphas, betas[:-1]): (Ritz value,
    residual norm |beta_k s_k|, coordinates of the Ritz vector in the Lanczos basis)."""
    k = len(alphas)
    if k == 1:
        return alphas[0], abs(betas[0]), np.ones(1)
    values, vectors = scipy.linalg.eigh_tridiagonal(np.array(alphas), np.array(betas[:k - 1]),
                                                    select="i", select_range=(k - 1, k - 1))
    return float(values[-1]), abs(betas[-1] * float(vectors[-1, -1])), vectors[:, -1]
