"""How fast this thread multiplies, now: the one timed matmul that the cost models of
the lower-bound search (wall clock) and the per-layer clock (CPU time) scale from."""
from __future__ import annotations

import time
from collections.abc import Callable

import torch


def matmul_seconds(n: int, repeats: int, clock: Callable[[], float] = time.perf_counter
                   ) -> float:
    """Seconds, by `clock`, of one n x n float64 matmul (after one untimed warm-up), the
    mean of `repeats`."""
    a = torch.ones(n, n, dtype=torch.float64)
    a @ a
    start = clock()
    for _ in range(repeats):
        a @ a
    return max(clock() - start, 1e-6) / repeats
