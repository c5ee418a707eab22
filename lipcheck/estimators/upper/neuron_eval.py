"""rho(T) of LipSDP-Neuron with per-neuron multipliers on a two-conv chain (torch, autograd).

LipSDP-Neuron for y = W3 s(W2 s(W1 x)), slopes in [0, b], multipliers T1, T2 > 0:
  Q = [[rho I, -(b/2) W1^T T1, 0], [., T1, -(b/2) W2^T T2], [0, ., T2 - W3^T W3]] >= 0.
T1 is diagonal: eliminating it (q = b^2 / 4) leaves, on (x, h2),
  [[rho I - P, C], [C^T, D]],  P = q W1^T T1 W1,  C = -q G^T T2 (G = W2 W1),
  D = Ds - W3^T W3,  Ds = T2 - q T2 M T2,  M = W2 T1^{-1} W2^T (block tridiagonal, slabs),
so rho(T) = lambda_max(P + C D^{-1} C^T) where D is positive definite. With the rank-n_out
term written as a border ([[Ds, W3^T], [W3, I]]), one block-tridiagonal Cholesky of Ds,
Z = L^{-1} [C^T, W3^T] and the small head give it:
  rho(T) = lambda_max(P + Z1^T Z1 + Z1^T Z2 (I - Z2^T Z2)^{-1} Z2^T Z1).
(Lanczos on H(T) = P + C D^{-1} C^T instead of forming Z was measured: no faster, its
matrix-vector products read G and the factors from memory each time.)
"""
from __future__ import annotations

import numpy as np
import scipy.sparse
import torch

from lipcheck.estimators.upper.neuron_conv import NeuronChain


def _pairs(w: scipy.sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a CSR matrix W: (row j, flat index a * n + b, W[j, a] W[j, b]) over all pairs of
    entries of each row, so that W^T diag(t) W = sum over pairs of t_j * product."""
    n = w.shape[1]
    counts = np.diff(w.indptr)
    rows, flat, prod = [], [], []
    for width in np.unique(counts):
        which = np.nonzero(counts == width)[0]
        if width == 0:
            continue
        base = w.indptr[which][:, None] + np.arange(width)[None, :]
        cols, vals = w.indices[base], w.data[base]
        rows.append(np.repeat(which, width * width))
        flat.append((cols[:, :, None] * n + cols[:, None, :]).ravel())
        prod.append((vals[:, :, None] * vals[:, None, :]).ravel())
    return np.concatenate(rows), np.concatenate(flat), np.concatenate(prod)


def _coo(a, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A scipy sparse matrix's (2, nnz) indices and values as torch tensors."""
    coo = a.tocoo()
    idx = np.stack([coo.row, coo.col]).astype(np.int64)
    return torch.from_numpy(idx), torch.from_numpy(coo.data.astype(np.float64)).to(dtype)


class NeuronProblem:
    """The fixed data of rho(T) for one chain, as torch tensors of `dtype`."""

    def __init__(self, chain: NeuronChain, dtype: torch.dtype = torch.float64):
        self.chain, self.dtype = chain, dtype
        self.q = chain.slope ** 2 / 4
        n0, d1, d2 = chain.dims
        rows, flat, prod = _pairs(chain.w1)
        self.p_rows, self.p_flat = torch.from_numpy(rows), torch.from_numpy(flat)
        self.p_prod = torch.from_numpy(prod).to(dtype)
        self.g = torch.from_numpy((chain.w2 @ chain.w1).toarray()).to(dtype)   # (d2, n0)
        self.close_t = torch.from_numpy(np.ascontiguousarray(chain.close.T)).to(dtype)
        self.a = [torch.from_numpy(chain.w2[lo:hi, r0:r1].toarray()).to(dtype)
                  for (lo, hi), (r0, r1) in zip(chain.slabs, chain.reads, strict=True)]
        self.sparse = [_coo(chain.w2[lo:hi, r0:r1], dtype)
                       for (lo, hi), (r0, r1) in zip(chain.slabs, chain.reads, strict=True)]

    def head_p(self, t1: torch.Tensor) -> torch.Tensor:
        n0 = self.chain.dims[0]
        flat = torch.zeros(n0 * n0, dtype=self.dtype)
        flat = flat.index_add(0, self.p_flat, t1[self.p_rows] * self.p_prod)
        return self.q * flat.reshape(n0, n0)

    def m_blocks(self, s: torch.Tensor) -> tuple[list, list]:
        """Diagonal blocks M_qq and sub-diagonal blocks M_{q,q-1} of W2 diag(s) W2^T."""
        diag, low = [], []
        reads = self.chain.reads
        for k, a in enumerate(self.a):
            r0, r1 = reads[k]
            idx, vals = self.sparse[k]
            scaled = torch.sparse_coo_tensor(idx, vals * s[r0:r1][idx[1]], a.shape,
                                             check_invariants=False)
            diag.append(torch.sparse.mm(scaled, a.T))    # (A diag(s) A^T), A sparse
            if k:
                p0, p1 = reads[k - 1]
                ov = p1 - r0
                low.append((a[:, :ov] * s[r0:p1]) @ self.a[k - 1][:, -ov:].T if ov > 0
                           else torch.zeros(a.shape[0], self.a[k - 1].shape[0],
                                            dtype=self.dtype))
        return diag, low

    def spectrum(self, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor | None:
        """The eigenvalues of P + C D^{-1} C^T (rho(T) is the last), or None where D (or
        the border's I - Z2^T Z2) is not positive definite."""
        q, n0 = self.q, self.chain.dims[0]
        t1, t2 = t1.to(self.dtype), t2.to(self.dtype)
        diag, low = self.m_blocks(1.0 / t1)
        edge = torch.cat([-q * t2[:, None] * self.g, self.close_t], dim=1)
        gram = torch.zeros(edge.shape[1], edge.shape[1], dtype=self.dtype)
        prev_l = prev_z = edge
        for k, (lo, hi) in enumerate(self.chain.slabs):
            tk = t2[lo:hi]
            block = torch.diag(tk) - q * tk[:, None] * diag[k] * tk[None, :]
            rhs = edge[lo:hi]
            if k:
                plo, phi = self.chain.slabs[k - 1]
                sub = -q * tk[:, None] * low[k - 1] * t2[plo:phi][None, :]
                b = torch.linalg.solve_triangular(prev_l, sub.T, upper=False).T
                block = block - b @ b.T
                rhs = rhs - b @ prev_z
            chol, info = torch.linalg.cholesky_ex(block)
            if int(info) != 0:
                return None
            z = torch.linalg.solve_triangular(chol, rhs, upper=False)
            gram = gram + z.T @ z
            prev_l, prev_z = chol, z
        z11, z12, z22 = gram[:n0, :n0], gram[:n0, n0:], gram[n0:, n0:]
        small = torch.eye(z22.shape[0], dtype=self.dtype) - z22
        chol, info = torch.linalg.cholesky_ex(small)
        if int(info) != 0:
            return None
        y = torch.linalg.solve_triangular(chol, z12.T, upper=False)
        total = self.head_p(t1) + z11 + y.T @ y
        if not bool(torch.isfinite(total.detach()).all()):
            return None
        try:
            return torch.linalg.eigvalsh((total + total.T) / 2)
        except torch.linalg.LinAlgError:   # eigh did not converge (float32, ill-conditioned)
            return None
