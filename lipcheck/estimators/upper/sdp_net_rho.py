"""rho(Lam) of sdp-net's LMI and its adjoint gradient: the evaluation its search minimises.

For the layered ReLU form f(x) = W_L s(... s(W_1 x) ...) with per-unit slopes [a, b]
(P = a b, M = (a + b) / 2) and multipliers Lam, rho(Lam) is the smallest rho with
Q(rho, Lam) >= 0: block elimination from the last layer, S_L = Lam_L - W_L^T W_L,
S_{i-1} = Lam_{i-1} - t_i with t_i = W_i^T (Lam M) S_i^-1 (Lam M) W_i - W_i^T (Lam P) W_i,
and rho the largest eigenvalue of t_0 (each S_i positive definite, else infeasible). The
search minimises rho or its smoothing mu log sum exp(lambda_j / mu) over t_0's
eigenvalues; both gradients are the recursion's adjoint (`Rho.gradient`), one triangular
solve a layer with a column per eigenvector kept. Float64 by torch, dsyrk for the Gram
products. The search, its phases and the certificate are in sdp_net.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg.blas
import torch

CARRY_START = 10.0     # identity units start at 10x their layer's multiplier
KEPT_WEIGHT = 1e-12    # eigenvectors with a smaller softmax weight leave the gradient


def evaluation_work(weights: list[np.ndarray],
                    slopes: list[tuple[np.ndarray, np.ndarray]] | None = None) -> float:
    """Multiply-adds of one rho(Lam) with its gradient: per hidden layer the forward's
    Cholesky, triangular solve, Gram product (dsyrk: half a matmul) and the product over
    the units with P = a b != 0 (all of them without `slopes`), and the adjoint's solve
    with a column per eigenvector of t_0 (the smoothing keeps up to all of them; its
    products W_i V, ~3 % of an evaluation on digits_resnet, are left out)."""
    work, k = 0.0, weights[0].shape[1]
    for i, w in enumerate(weights[:-1]):
        n, m = w.shape
        carried = n if slopes is None else int(np.count_nonzero(slopes[i][0] * slopes[i][1]))
        work += n ** 3 / 3 + n * n * m + m * m * n / 2 + m * m * carried + 2 * n * n * k
    return work


class Rho:
    """rho(Lam) of the module docstring in torch float64, differentiable: the gradient is
    the adjoint of the recursion (`RhoFunction`), not autograd's."""

    def __init__(self, weights: list[np.ndarray], slopes: list[tuple[np.ndarray, np.ndarray]]):
        self.w = [torch.from_numpy(w) for w in weights]
        self.p = [torch.from_numpy(a * b) for a, b in slopes]
        self.m = [torch.from_numpy((a + b) / 2) for a, b in slopes]
        self.last = self.w[-1].T @ self.w[-1]
        self.top = math.nan      # rho(Lam) at the last evaluation, smoothed or not
        self.rows = [torch.nonzero(p).ravel() for p in self.p]   # units with P != 0

    def __call__(self, lams: list[torch.Tensor], mu: float = 0.0) -> torch.Tensor:
        """rho(Lam) for mu = 0, else its smoothing mu log sum exp(lambda_j / mu) over t's
        eigenvalues (>= rho, within mu log(dim)); `top` is then rho(Lam) itself."""
        return RhoFunction.apply(self, mu, *lams)

    def forward(self, lams: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last block's matrix t (rho = its largest eigenvalue) and each layer's
        Cholesky factor of S_i, by the recursion from the last layer."""
        s = torch.diag(lams[-1]) - self.last
        chols: list[torch.Tensor] = [torch.empty(0)] * len(lams)
        for i in range(len(lams) - 1, -1, -1):
            chol, info = torch.linalg.cholesky_ex(s)
            if int(info) != 0:
                raise np.linalg.LinAlgError("not positive definite")
            chols[i] = chol
            t = self._subtracted(i, lams[i], chol)
            if i > 0:
                s = torch.diag(lams[i - 1]) - t
        return t, chols

    def gradient(self, lams: list[torch.Tensor], chols: list[torch.Tensor],
                 v: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
        """d f / d Lam for f with d f / d t_0 = V diag(g) V^T (rho: V = the top eigenvector,
        g = 1; its smoothing: every eigenvector, g = the softmax weights). With U = (Lam
        M)_i W_i V and Y = S_i^-1 U, tr(g V^T t_i V) = sum_k g_k (u_k^T y_k - sum Lam P
        (W_i v_k)^2) and S_i = diag(Lam_i) - t_{i+1}, so layer i's gradient is sum_k g_k
        (2 M (W_i v_k) y_k - P (W_i v_k)^2 - y_k^2) and the adjoint on t_{i+1} is Y diag(g)
        Y^T: one solve a layer (a column per kept eigenvector), the factors the forward's."""
        grads = []
        for i, chol in enumerate(chols):
            wv = self.w[i] @ v
            y = torch.cholesky_solve((lams[i] * self.m[i])[:, None] * wv, chol)
            grads.append(((2 * self.m[i][:, None] * wv - y) * y
                          - self.p[i][:, None] * wv * wv) @ g)
            v = y
        return grads

    def start(self) -> list[torch.Tensor]:
        """ECLipsE-Fast-like: from the last layer, each layer's multipliers twice the
        largest eigenvalue of what its Schur complement subtracts (so it stays positive
        definite), identity units `CARRY_START` times more (they enforce an equality)."""
        lams: list[torch.Tensor] = [torch.empty(0)] * len(self.p)
        t = self.last
        for i in range(len(self.p) - 1, -1, -1):
            top = max(float(torch.linalg.eigvalsh(t)[-1]), 1e-6)
            lams[i] = 2 * top * torch.where(self.p[i] > 0, CARRY_START, 1.0).double()
            if i == 0:
                break
            t = self._subtracted(i, lams[i], torch.linalg.cholesky(torch.diag(lams[i]) - t))
        return lams

    def _subtracted(self, i: int, lam: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
        """t_i = W_i^T (Lam M)_i S_i^-1 (Lam M)_i W_i - W_i^T (Lam P)_i W_i (`chol` is S_i's
        factor): what S_{i-1} = diag(Lam_{i-1}) - t_i subtracts, or rho's matrix at i = 0.
        The first Gram product by BLAS dsyrk (half a matmul), the second over the units
        with P != 0 only (identity units; on input sets also always-active ReLUs)."""
        lw = (lam * self.m[i])[:, None] * self.w[i]
        b = torch.linalg.solve_triangular(chol, lw, upper=False)
        t = _gram(b)
        rows = self.rows[i]
        if len(rows):
            w = self.w[i][rows]
            t -= w.T @ ((lam[rows] * self.p[i][rows])[:, None] * w)
        return t


def _gram(b: torch.Tensor) -> torch.Tensor:
    """b^T b (float64) by dsyrk: the upper triangle, mirrored (a matmul where autograd
    follows b: the tests' reference gradient)."""
    if b.requires_grad:
        return b.T @ b
    upper = torch.from_numpy(scipy.linalg.blas.dsyrk(1.0, b.numpy(), trans=1)).triu()
    return upper + upper.triu(1).T    # b from a triangular solve is column-major: no copy


class RhoFunction(torch.autograd.Function):
    """rho(Lam), or its smoothing, with the adjoint gradient of Rho.gradient: about one
    forward's cost (autograd through the Choleskys took 2.5 forwards more on
    digits_resnet). Sets rho.top, rho(Lam) itself."""

    @staticmethod
    def forward(ctx, rho: Rho, mu: float, *lams: torch.Tensor) -> torch.Tensor:
        t, chols = rho.forward(list(lams))
        values, vectors = torch.linalg.eigh(t)
        top = values[-1]
        rho.top = float(top)
        if mu > 0:
            shifted = (values - top) / mu
            weights = torch.softmax(shifted, 0)
            kept = weights > KEPT_WEIGHT
            value = top + mu * torch.logsumexp(shifted, 0)
            ctx.vectors, ctx.weights = vectors[:, kept], weights[kept]
        else:
            value, ctx.vectors, ctx.weights = top, vectors[:, -1:], torch.ones(1, dtype=t.dtype)
        ctx.rho, ctx.chols = rho, chols
        ctx.save_for_backward(*lams)
        return value

    @staticmethod
    def backward(ctx, out: torch.Tensor) -> tuple:
        grads = ctx.rho.gradient(list(ctx.saved_tensors), ctx.chols, ctx.vectors, ctx.weights)
        return (None, None, *[out * g for g in grads])
