"""LipSDP-Neuron (Fazlyab et al. 2019) for a chain y = W_l phi(... phi(W_0 x)): solve for
(rho, Lam) with the barrier method (sdp_barrier) or cvxpy (sdp_solver), then certify in
float64 (sdp_certificate, where Q(rho, Lam) is defined). On an MNIST MLP the SVD reduction
of the end weights shrinks the SDP from 784 to 50 inputs.
"""
from __future__ import annotations

import math
import time

import numpy as np

from lipcheck.estimators.upper.eclipse import fast_start
from lipcheck.estimators.upper.sdp_barrier import solve_barrier
from lipcheck.estimators.upper.sdp_certificate import SdpResult, reduce_ends, verify
from lipcheck.estimators.upper.sdp_solver import pick_solver, require_cvxpy, solve


def _problem(cp, weights, slopes):
    rho = cp.Variable(nonneg=True)
    lams = [cp.Variable(w.shape[0], nonneg=True) for w in weights[:-1]]
    dims = [weights[0].shape[1]] + [w.shape[0] for w in weights[:-1]]
    blocks = [[np.zeros((r, c)) for c in dims] for r in dims]
    blocks[0][0] = rho * np.eye(dims[0])
    for i, ((a, b), lam) in enumerate(zip(slopes, lams, strict=True), start=1):
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
        clocked = solve(problem, solver, seconds)
    except cp.error.SolverError as exc:
        return f"solver {solver} failed: {exc}"
    if rho.value is None:
        return f"solver status {problem.status}"
    note = f"{solver} {problem.status}{' (its wall-clock limit reached)' if clocked else ''}"
    return float(rho.value), [lam.value for lam in lams], note, clocked


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
