"""What the float64 certificates of sdp-conv cost, predicted before the optimisation.

A time cap is a promise (issue 12): the multipliers are optimised only while one more
evaluation and the certificate after it still end before the deadline. The certificate's
work is dominated by one complex Cholesky per frequency block (then triangular solves and
a Gram matrix of about the same cost), so its cost is predicted by timing the Cholesky of
a few blocks of its size on this machine, now (under the current load), scaled to all
frequencies and by CERT_FACTOR for the rest of the certificate.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

CERT_FACTOR = 3.0    # certificate / (F Choleskys of D x D): 2.3 measured on a 3-conv CNN
SAMPLE_BLOCKS = 4    # blocks timed for the prediction
FIXED_S = 0.02       # Python overhead of one certificate
SAFETY = 1.5         # reserve / the slowest certificate measured or predicted
EVAL_FACTOR = 3.0    # first evaluation (forward + autograd backward) / one certificate


def cholesky_seconds(freqs: int, dim: int) -> float:
    """Predicted seconds of `freqs` complex128 Choleskys of dim x dim blocks."""
    k = max(1, min(freqs, SAMPLE_BLOCKS))
    blocks = np.broadcast_to(np.eye(dim, dtype=np.complex128) * 2.0, (k, dim, dim)).copy()
    blocks[:, 0, -1] = blocks[:, -1, 0] = 0.5   # not diagonal (no shortcut can apply)
    start = time.perf_counter()
    np.linalg.cholesky(blocks)
    return (time.perf_counter() - start) * freqs / k


def certificate_seconds(freqs: int, dim: int) -> float:
    """Predicted seconds of one float64 certificate attempt over `freqs` blocks of `dim`."""
    return CERT_FACTOR * cholesky_seconds(freqs, dim) + FIXED_S


def reserve(predicted: float, measured: float) -> float:
    """Seconds to keep for the final certificate: SAFETY times what the same certificate
    took, measured in this run (on the start's multipliers) under the current load, or
    its predicted cost before any was measured. The certificate also stops itself at the
    deadline, so a reserve that is still too short costs the final value, not the cap."""
    return SAFETY * (measured if measured > 0 else predicted)


@dataclass
class Budget:
    """When the multiplier search must stop: no evaluation starts unless it and `reserve`
    seconds (the final certificate) end before `deadline`; an evaluation is predicted to
    take `first_eval` seconds until one has been measured."""
    deadline: float = math.inf
    reserve: float = 0.0
    first_eval: float = 0.0

    @classmethod
    def measured(cls, deadline: float, predicted: float, certificate: float) -> Budget:
        """The budget after one certificate took `certificate` seconds (predicted:
        `predicted`) in this run."""
        return cls(deadline, reserve(predicted, certificate),
                   EVAL_FACTOR * (certificate if certificate > 0 else predicted))

    def allows(self, eval_seconds: float | None) -> bool:
        """Whether one more evaluation (the slowest so far took `eval_seconds`; None: none
        measured yet) and the certificate end before the deadline."""
        cost = self.first_eval if eval_seconds is None else eval_seconds
        return may_start(self.deadline, cost, self.reserve)


def over_work(extra: dict, freqs: int, dim: int) -> bool:
    """Whether one evaluation (freqs blocks of dim x dim: about freqs * dim^3 flops) is above
    the count-based limit settings.extra["sdp_conv_max_work"] (`--method auto`'s quick
    gate; none by default): decided by sizes, so reproducible."""
    return freqs * float(dim) ** 3 > float(extra.get("sdp_conv_max_work", math.inf))


def may_start(deadline: float, eval_seconds: float, reserve: float) -> bool:
    """Whether one more evaluation and then the certificate end before the deadline."""
    return time.monotonic() + eval_seconds + reserve <= deadline


def warm_optimiser() -> None:
    """Construct one L-BFGS optimiser: the first construction in a process imports torch's
    compiler stack (seconds), which must happen before the time left is judged, not after."""
    torch.optim.LBFGS([torch.zeros(1, requires_grad=True)])
