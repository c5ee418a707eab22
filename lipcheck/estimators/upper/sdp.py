"""LipSDP-Neuron (Fazlyab et al. 2019) for a chain y = W_l phi(... phi(W_0 x)), with a
float64 check of every certificate before it is called certified.

For hidden layer i (x_i = phi_i(W_{i-1} x_{i-1}), slopes of phi_i in [a_i, b_i]) and
per-neuron multipliers Lam_i = diag(lam_i) >= 0, rho >= ||f||_Lip^2 whenever the
block-tridiagonal matrix Q(rho, Lam) is positive semidefinite:
  Q_00   = rho I + a_1 b_1 W_0^T Lam_1 W_0
  Q_ii   = Lam_i + a_{i+1} b_{i+1} W_i^T Lam_{i+1} W_i     (i < l; last: Lam_l - W_l^T W_l)
  Q_{i-1,i} = -(a_i + b_i)/2 W_{i-1}^T Lam_i
(sum over neurons of lam (dx - a dv)(b dv - dx) >= 0, added to rho|dx_0|^2 - |dy|^2).
The first and last weights are replaced by U S and S V^T of their thin SVDs, which
changes no difference norm and shrinks the SDP (784 -> 50 inputs on an MNIST MLP).

cvxpy (with Clarabel or SCS) is an optional dependency: `pip install lipcheck[sdp]`.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from lipcheck.errors import UserError

VERIFY_MAX_DIM = 4000   # largest Q checked by a dense Cholesky factorisation
CLARABEL_MAX_DIM = 120  # Clarabel's PSD cone is dense in n^2/2: above this, SCS (less memory)


def pick_solver(dim: int) -> str:
    return "CLARABEL" if dim <= CLARABEL_MAX_DIM else "SCS"


def solve(problem, solver: str, seconds: float) -> None:
    """Solve with fixed tolerances and iteration caps (the wall-clock limit is only a safety
    cap); a stopped solve is still checked by `verify`."""
    limit = {"SCS": {"time_limit_secs": max(seconds, 1.0), "max_iters": 200_000,
                     "eps_abs": 1e-8, "eps_rel": 1e-8},
             "CLARABEL": {"time_limit": max(seconds, 1.0), "max_iter": 200}}.get(solver, {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "solution may be inaccurate": verify() decides
        problem.solve(solver=solver, **limit)
EPS = np.finfo(np.float64).eps


@dataclass
class SdpResult:
    value: float
    certified: bool
    detail: str
    seconds: float = 0.0
    cut_by_budget: bool = False  # the wall-clock safety cap stopped the solver


def require_cvxpy():
    try:
        import cvxpy
    except ImportError:
        raise UserError("the SDP bounds need cvxpy with Clarabel or SCS: "
                        "pip install 'lipcheck[sdp]'") from None
    return cvxpy


def reduce_ends(weights: list[np.ndarray]) -> list[np.ndarray]:
    """Exact reduction: W_0 -> U S (rows of W_0 x are all that matter), W_l -> S V^T."""
    w = list(weights)
    u, s, vt = scipy.linalg.svd(w[0], full_matrices=False)
    keep = max(1, int(np.sum(s > s[0] * 1e-13))) if s.size else 0
    w[0] = u[:, :keep] * s[:keep]
    u, s, vt = scipy.linalg.svd(w[-1], full_matrices=False)
    keep = max(1, int(np.sum(s > s[0] * 1e-13))) if s.size else 0
    w[-1] = s[:keep, None] * vt[:keep]
    return w


def assemble(weights: list[np.ndarray], slopes: list[tuple[float, float]], rho: float,
             lams: list[np.ndarray]) -> np.ndarray:
    """Q(rho, Lam) in float64 (see the module docstring)."""
    dims = [weights[0].shape[1]] + [w.shape[0] for w in weights[:-1]]
    offsets = np.concatenate([[0], np.cumsum(dims)])
    q = np.zeros((offsets[-1], offsets[-1]))
    block = lambda i, j: (slice(offsets[i], offsets[i + 1]), slice(offsets[j], offsets[j + 1]))
    q[block(0, 0)] += rho * np.eye(dims[0])
    for i, ((a, b), lam) in enumerate(zip(slopes, lams), start=1):
        w = weights[i - 1]
        q[block(i - 1, i - 1)] += a * b * (w.T * lam) @ w
        q[block(i, i)] += np.diag(lam)
        off = -(a + b) / 2 * (w.T * lam)
        q[block(i - 1, i)] += off
        q[block(i, i - 1)] += off.T
    q[block(len(dims) - 1, len(dims) - 1)] -= weights[-1].T @ weights[-1]
    return q


def _verified_psd(q: np.ndarray) -> bool:
    """Q is PSD (up to the rounding in forming it, 32 n eps ||Q||_F): a floating-point
    Cholesky factorisation of Q - c I succeeds with c above Cholesky's backward error,
    (n + 1) eps / (1 - (n + 1) eps) tr(Q) (Rump, BIT 46, 2006), taken 4x. A Cholesky is
    ~10x cheaper than the smallest eigenvalue, and the check is as strict."""
    n = q.shape[0]
    forming = 32 * n * EPS * float(np.linalg.norm(q, "fro"))
    shift = forming + 4 * (n + 2) * EPS * float(np.abs(np.diag(q)).sum())
    try:
        scipy.linalg.cholesky(q - shift * np.eye(n), lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return False
    return True


def _smallest_rho(base: np.ndarray, n0: int, rho: float) -> float | None:
    """Smallest rho' >= rho (to 1e-9 relative) with base + rho' E verified PSD, or None."""
    shift = np.r_[np.ones(n0), np.zeros(len(base) - n0)]
    ok = lambda r: _verified_psd(base + np.diag(r * shift))
    rho = max(rho, 1e-300)
    if not ok(rho * 1e6 + 1.0):
        return None
    low, high, step = rho, rho * (1 + 1e-12), 1e-9
    while not ok(high):
        low, high, step = high, rho * (1 + step), step * 10
    while high - low > 1e-9 * high:
        mid = 0.5 * (low + high)
        low, high = (low, mid) if ok(mid) else (mid, high)
    return high


def verify(weights: list[np.ndarray], slopes: list[tuple[float, float]], rho: float,
           lams: list[np.ndarray]) -> float | None:
    """A rho' >= rho for which Q(rho', (1 + t) Lam) is verified PSD in float64 (smallest
    Cholesky check, see _verified_psd) at the given multipliers clipped to >= 0, trying
    a few small t (scaling Lam up helps the last block), or None."""
    lams = [np.maximum(np.asarray(l, dtype=np.float64), 0.0) for l in lams]
    if sum(w.shape[1] for w in weights) > VERIFY_MAX_DIM or not math.isfinite(rho):
        return None
    for t in (0.0, 1e-9, 1e-7, 1e-5, 1e-3):
        base = assemble(weights, slopes, 0.0, [(1 + t) * l for l in lams])
        found = _smallest_rho(base, weights[0].shape[1], rho)
        if found is not None:
            return found
    return None


def _problem(cp, weights, slopes):
    rho = cp.Variable(nonneg=True)
    lams = [cp.Variable(w.shape[0], nonneg=True) for w in weights[:-1]]
    dims = [weights[0].shape[1]] + [w.shape[0] for w in weights[:-1]]
    blocks = [[np.zeros((r, c)) for c in dims] for r in dims]
    blocks[0][0] = rho * np.eye(dims[0])
    for i, ((a, b), lam) in enumerate(zip(slopes, lams), start=1):
        w = weights[i - 1]
        if a * b != 0:
            blocks[i - 1][i - 1] = blocks[i - 1][i - 1] + a * b * (w.T @ cp.diag(lam) @ w)
        blocks[i][i] = blocks[i][i] + cp.diag(lam)
        blocks[i - 1][i] = -(a + b) / 2 * (w.T @ cp.diag(lam))
        blocks[i][i - 1] = blocks[i - 1][i].T
    last = len(dims) - 1
    blocks[last][last] = blocks[last][last] - weights[-1].T @ weights[-1]
    q = cp.bmat(blocks)
    return cp.Problem(cp.Minimize(rho), [(q + q.T) / 2 >> 0]), rho, lams


def _barrier(w: list[np.ndarray], slopes: list[tuple[float, float]], deadline: float):
    """(rho, lams, note, cut) from the barrier method started at ECLipsE-Fast, or None where
    ECLipsE-Fast does not apply (a b < 0 or a + b = 0)."""
    from lipcheck.estimators.upper.eclipse import fast_start   # eclipse imports this module
    from lipcheck.estimators.upper.sdp_barrier import solve_barrier
    start = fast_start(w, slopes)
    if start is None:
        return None
    found = solve_barrier(w, slopes, *start, deadline=deadline)
    if found is None:
        return None
    state = ("converged" if found.converged else "stopped by the time budget (safety cap)"
             if found.cut_by_budget else "step cap reached")
    return found.rho, found.lams, f"barrier method {state} after {found.steps} Newton steps", \
        found.cut_by_budget


def _conic(w: list[np.ndarray], slopes: list[tuple[float, float]], solver: str | None,
           seconds: float):
    """(rho, lams, note, cut) from cvxpy, or a failure note (str)."""
    cp = require_cvxpy()
    solver = solver or pick_solver(w[0].shape[1] + sum(x.shape[0] for x in w[:-1]))
    problem, rho, lams = _problem(cp, w, slopes)
    try:
        solve(problem, solver, seconds)
    except cp.error.SolverError as exc:
        return f"solver {solver} failed: {exc}"
    if rho.value is None:
        return f"solver status {problem.status}"
    return float(rho.value), [l.value for l in lams], f"{solver} {problem.status}", False


def lipsdp_neuron(weights: list[np.ndarray], slopes: list[tuple[float, float]],
                  reduce: bool = True, solver: str | None = None,
                  seconds: float = 600.0) -> SdpResult:
    """solver=None: the barrier method where it applies (deterministic), else cvxpy."""
    start = time.monotonic()
    w = reduce_ends(weights) if reduce else list(weights)
    found = _barrier(w, slopes, start + seconds) if solver is None else None
    if found is None:
        found = _conic(w, slopes, solver, seconds)
    if isinstance(found, str):
        return SdpResult(math.inf, False, found, time.monotonic() - start)
    claimed, lams, note, cut = found
    verified = verify(w, slopes, claimed, lams)
    seconds = time.monotonic() - start
    if verified is None:
        return SdpResult(math.sqrt(max(claimed, 0.0)), False,
                         f"{note}: the certificate did not verify in float64", seconds, cut)
    value = math.sqrt(verified) * (1 + 1e-9)  # also covers the SVD reduction's rounding
    return SdpResult(value, True, f"{note}, solver rho {claimed:.9g}, "
                     f"verified rho {verified:.9g} (float64 Cholesky check)", seconds, cut)
