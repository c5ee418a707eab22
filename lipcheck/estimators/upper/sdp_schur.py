"""LipSDP-Neuron for MLPs too large for the barrier method: descent on the multipliers.

For multipliers Lam_i > 0 the smallest rho with Q(rho, Lam) >= 0 (Q: see
sdp_certificate) has a closed form by block elimination from the last block, with
p_i = a_i b_i and m_i = (a_i + b_i) / 2:
  S_L = Lam_L - W_L^T W_L,
  S_i = Lam_i + p_{i+1} W_i^T Lam_{i+1} W_i - m_{i+1}^2 W_i^T Lam_{i+1} S_{i+1}^-1 Lam_{i+1} W_i,
  rho(Lam) = lambda_max(m_1^2 W_0^T Lam_1 S_1^-1 Lam_1 W_0 - p_1 W_0^T Lam_1 W_0),
valid while every S_i is positive definite (one Cholesky each). ECLipsE-Fast is this
rho at Lam_i = lam_i I. Here rho(Lam) is minimised over log Lam by Adam for a fixed
number of steps (a count: the value is reproducible) from ECLipsE-Fast's multipliers;
its gradient is exact where lambda_max is simple (y^T M y with y the top eigenvector).
A step that leaves the feasible set (a Cholesky fails) is undone and the step size
halved. The best iterate's (rho, Lam) is then certified exactly like the barrier's: the
float64 Cholesky check of the full Q (sdp_certificate.verify), so the descent itself
needs no rounding analysis. Each step costs a few dense products of the layer sizes
(O(sum n_i^3)) instead of the barrier's O(n^2 m) Newton systems: on a 784-500-500-10
MLP (Q of size 1500) a step took 0.07-0.1 s here (load 5-7), a barrier Newton step ~8 s.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from lipcheck.estimators.upper.eclipse import fast_start
from lipcheck.estimators.upper.sdp_certificate import SdpResult, reduce_ends, verify

STEPS = 150          # Adam steps (a count: decides the value)
LR = 0.05            # Adam step on log Lam
HALVINGS = 20        # infeasible steps tolerated (each halves the step size)


@dataclass
class Descent:
    rho: float
    lams: list[np.ndarray]
    steps: int
    cut_by_budget: bool
    null_size: float = 1.0    # |x|^2 of Q's null vector at the best point (|x_0| = 1)


class _Problem:
    """rho(Lam) of the module docstring and its gradient in log Lam (float64)."""

    def __init__(self, weights: list[np.ndarray], slopes: list[tuple[float, float]]) -> None:
        self.w = weights
        self.p = [a * b for a, b in slopes]
        self.m2 = [((a + b) / 2) ** 2 for a, b in slopes]
        self.last = weights[-1].T @ weights[-1]

    def value(self, lams: list[np.ndarray]) -> tuple[float, list[np.ndarray], float] | None:
        """(rho(Lam), d rho / d log Lam, |x|^2 for Q's null vector x at rho(Lam) scaled to
        |x_0| = 1), or None where an S_i is not positive definite."""
        chols = [None] * len(lams)
        s = np.diag(lams[-1]) - self.last
        for i in range(len(lams) - 1, -1, -1):
            try:
                chols[i] = scipy.linalg.cholesky(s, lower=True, check_finite=False)
            except np.linalg.LinAlgError:
                return None
            lw = lams[i][:, None] * self.w[i]                          # Lam_{i+1} W_i
            b = scipy.linalg.solve_triangular(chols[i], lw, lower=True, check_finite=False)
            if i > 0:
                s = np.diag(lams[i - 1]) - self.m2[i] * (b.T @ b)
                if self.p[i]:
                    s += self.p[i] * (self.w[i].T @ lw)
        m = self.m2[0] * (b.T @ b)
        if self.p[0]:
            m -= self.p[0] * (self.w[0].T @ (lams[0][:, None] * self.w[0]))
        n = len(m)
        top, vec = scipy.linalg.eigh(m, subset_by_index=[n - 1, n - 1], check_finite=False)
        return (float(top[0]), *self._gradient(lams, chols, vec[:, 0]))

    def _gradient(self, lams, chols, y: np.ndarray) -> tuple[list[np.ndarray], float]:
        """The sensitivity of rho to S_k is rank one, c_k z_k z_k^T, so the chain rule runs
        down the layers with one solve each (docs/methods/seqlip-sdp.md). Q's null vector
        is x_k = m_1 ... m_k z_k (block elimination from the back)."""
        grads, coef, z_prev, scale, size = [], 1.0, y, 1.0, 1.0
        for k, lam in enumerate(lams):
            g = self.w[k] @ z_prev                                   # W_k z_{k-1}
            z = scipy.linalg.cho_solve((chols[k], True), lam * g, check_finite=False)
            direct = self.p[k] * g * g - 2 * self.m2[k] * g * z      # through Lam in S_{k-1}
            grad = (-direct if k == 0 else coef * direct)
            coef = -self.m2[k] if k == 0 else coef * self.m2[k]
            grads.append(lam * (grad + coef * z * z))                # d / d log lam
            scale *= self.m2[k]
            size += scale * float(z @ z)
            z_prev = z
        return grads, size


def descend(weights: list[np.ndarray], slopes: list[tuple[float, float]],
            lams: list[np.ndarray], steps: int = STEPS, deadline: float = math.inf,
            reserve: float = 0.0, first_step: float = 0.0) -> Descent | None:
    """Adam on log Lam from `lams`; the best (rho, Lam) seen (None if `lams` is not
    feasible). No step starts that, predicted to take as long as the slowest so far
    (the first: `first_step`), would end later than the check (`reserve`, predicted with
    `first_step`, rescaled by the measured steps) before `deadline` (a safety cap:
    `cut_by_budget` says it stopped early)."""
    problem = _Problem(weights, slopes)
    logs = [np.log(lam) for lam in lams]
    moments = [(np.zeros_like(t), np.zeros_like(t)) for t in logs]
    lr, halvings, slowest, evaluated, cut = LR, 0, 0.0, 0, False
    best: tuple[float, list[np.ndarray], float] | None = None
    while True:
        began = time.monotonic()
        # before a step was timed: the predictions; then the slowest step, and the check
        # rescaled by how much faster or slower than predicted the steps ran
        step = slowest if slowest > 0 else first_step
        check = reserve * (slowest / first_step if slowest > 0 and first_step > 0 else 1.0)
        if best is not None and began + step + check > deadline:   # the start: always
            cut = True
            break
        found = problem.value([np.exp(t) for t in logs])
        if found is None or not math.isfinite(found[0]):
            if best is None or halvings >= HALVINGS:
                break
            halvings, lr = halvings + 1, lr / 2            # undo the step, shorter steps
            logs = [np.log(lam) for lam in best[1]]
        else:
            evaluated += 1
            if best is None or found[0] < best[0]:
                best = (found[0], [np.exp(t) for t in logs], found[2])
            if evaluated > steps:
                break
            _adam(logs, found[1], moments, lr, evaluated)
        slowest = max(slowest, time.monotonic() - began)
    if best is None:
        return None
    return Descent(best[0], best[1], evaluated - 1, cut, best[2])   # steps: points after the start


def _adam(logs, grads, moments, lr: float, k: int, b1: float = 0.9, b2: float = 0.999) -> None:
    for t, g, (m, v) in zip(logs, grads, moments, strict=True):
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        t -= lr * (m / (1 - b1 ** k)) / (np.sqrt(v / (1 - b2 ** k)) + 1e-12)


def _claim(weights: list[np.ndarray], slopes: list[tuple[float, float]], found: Descent) -> float:
    """rho raised by what the float64 check will ask (so that its first Cholesky passes
    instead of a search of ten or more): the check shifts Q by c (verified_psd) and
    lambda_min(Q(rho + d)) grows like d |x_0|^2 / |x|^2 (x: Q's null vector), so
    d = 4 c |x|^2. c is estimated from bounds on ||Q||_F and tr|Q|; a wrong estimate
    only costs time or a 1e-6-size looseness, never soundness (the check decides)."""
    n0 = weights[0].shape[1]
    n = n0 + sum(len(lam) for lam in found.lams)
    frob, trace = found.rho * math.sqrt(n0), found.rho * n0
    for (a, b), w, lam in zip(slopes, weights, found.lams, strict=False):
        rows = np.einsum("ij,ij->i", w, w)                  # |w_i|^2 of each neuron's row
        frob += float(np.linalg.norm(lam)) + abs(a + b) * math.sqrt(float(lam * lam @ rows)) \
            + abs(a * b) * float(lam @ rows)
        trace += float(lam.sum()) + abs(a * b) * float(lam @ rows)
    last = weights[-1].T @ weights[-1]
    frob += float(np.linalg.norm(last))
    trace += float(np.trace(last))
    eps = np.finfo(np.float64).eps
    shift = 32 * n * eps * frob + 4 * (n + 2) * eps * trace
    return found.rho + 4 * shift * found.null_size


def verify_seconds(weights: list[np.ndarray], rate: float) -> float:
    """Predicted seconds of the float64 check: two Choleskys of the full Q (see _claim)
    and forming Q, taken as three."""
    n = weights[0].shape[1] + sum(w.shape[0] for w in weights[:-1])
    return 3 * (n ** 3 / 3) / rate + 0.05


def step_seconds(weights: list[np.ndarray], rate: float) -> float:
    """Predicted seconds of one step (twice its multiply-adds: Cholesky, triangular
    solve and Gram product per hidden layer, the top eigenpair of the input block)."""
    work = sum(w.shape[0] ** 3 / 3 + w.shape[0] ** 2 * w.shape[1] + w.shape[1] ** 2 * w.shape[0]
               for w in weights[:-1]) + 2 * weights[0].shape[1] ** 3
    return 2 * work / rate


def lipsdp_descent(weights: list[np.ndarray], slopes: list[tuple[float, float]],
                   steps: int = STEPS, seconds: float = 600.0) -> SdpResult:
    """LipSDP-Neuron by descent on the multipliers, certified in float64. Needs slopes
    with a b >= 0 and a + b != 0 (ECLipsE-Fast's start)."""
    from lipcheck.estimators.lower.cost import machine_rate
    start = time.monotonic()
    w = reduce_ends(weights)
    first = fast_start(w, slopes)
    if first is None:
        return SdpResult(math.inf, False, "LipSDP descent needs slopes with a*b >= 0, a+b != 0")
    rate = machine_rate()
    cap = (start + seconds, verify_seconds(w, rate), step_seconds(w, rate))
    # ECLipsE-Fast's multipliers (fast_start doubles them: strictly feasible for the barrier)
    found = descend(w, slopes, [lam / 2 for lam in first[1]], steps, *cap)
    if found is None:
        found = descend(w, slopes, first[1], steps, *cap)
    if found is None:
        return SdpResult(math.inf, False, "LipSDP descent: ECLipsE-Fast's start is not feasible",
                         time.monotonic() - start)
    note = (f"LipSDP-Neuron by Adam on the multipliers ({found.steps} of {steps} steps"
            + (", stopped by the time budget" if found.cut_by_budget else "") + ")")
    verified = verify(w, slopes, _claim(w, slopes, found), found.lams)
    seconds = time.monotonic() - start
    if verified is None:
        return SdpResult(math.sqrt(max(found.rho, 0.0)), False,
                         f"{note}: the certificate did not verify in float64", seconds,
                         found.cut_by_budget)
    return SdpResult(math.sqrt(verified) * (1 + 1e-9), True,
                     f"{note}, rho {found.rho:.9g}, verified rho {verified:.9g} "
                     "(float64 Cholesky check)", seconds, found.cut_by_budget)
