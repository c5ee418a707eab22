"""An upper bound of max ||d + C z||_2 over the box z in [-1, 1]^q (batched).

With M = [d, C] and z_0 = +-1 (the same maximum: the box is symmetric), the square is the
largest z^T M^T M z over the vertices of the box. For any positive weights w,
z^T M^T M z <= lambda_max(M diag(1/w) M^T) * sum_i w_i z_i^2 <= lambda_max(...) * sum(w),
which is the dual of the SDP relaxation (within pi / 2 of the true maximum; Nesterov,
1998). Weights equal to the column norms give sum_i ||M_i|| (the triangle inequality)
or better; then a fixed number of steps w_i = |v^T M_i| with v the top eigenvector (the
minimiser for that v) tighten it. Every step's value is a valid bound: the smallest is
returned, inflated by a relative 1e-9 (float64 eigenvalues) -- reproducible, count-based.
"""
from __future__ import annotations

import torch

STEPS = 8
TINY = 1e-300


def _bound(m: torch.Tensor, w: torch.Tensor):
    """(sqrt(sum(w) lambda_max(M W^-1 M^T)), top eigenvector), batched over leading dims."""
    scaled = m / w.sqrt()[..., None, :]
    if m.shape[-2] <= m.shape[-1]:
        vals, vecs = torch.linalg.eigh(scaled @ scaled.transpose(-1, -2))
        top = vecs[..., -1]
    else:       # the other side: the same nonzero eigenvalues, v = M W^-1/2 u / ||.||
        vals, vecs = torch.linalg.eigh(scaled.transpose(-1, -2) @ scaled)
        top = (scaled @ vecs[..., -1:])[..., 0]
        top = top / torch.linalg.vector_norm(top, dim=-1, keepdim=True).clamp(min=TINY)
    lam = vals[..., -1].clamp(min=0)
    return (lam * w.sum(dim=-1)).sqrt(), top


def sup_norm(d: torch.Tensor, gens: torch.Tensor, steps: int = STEPS) -> torch.Tensor:
    """d (..., n), gens (..., n, q): an upper bound of max_z ||d + gens z|| over the box."""
    m = torch.cat([d[..., None], gens], dim=-1)                     # (..., n, q + 1)
    norms = torch.linalg.vector_norm(m, dim=-2)
    floor = torch.where(norms > 0, 1e-6 * norms, 1.0)   # zero columns: any weight, no term
    w = torch.maximum(norms, floor)
    best, top = _bound(m, w)
    best = torch.minimum(best, norms.sum(dim=-1))
    for _ in range(steps):
        w = torch.maximum((top[..., None, :] @ m)[..., 0, :].abs(), floor)
        value, top = _bound(m, w)
        best = torch.minimum(best, value)
    return best * (1 + 1e-9)
