"""--layer-budget as a promise: the clock of the layer being bounded, and the cut it records.

The per-layer driver (`estimators.upper.autolip.bound_nodes`) runs each node's rule under
`running(budget)`. The long loops of the certified methods (dense Jacobian columns, Gram
chunks, padded-Gram assembly, Lanczos steps, frequency-block chunks, Gram iteration steps)
call `check(what)` between iterations: once the layer's time is spent it raises
`LayerBudgetSpent`, and the nearest caller with a cheaper certified bound catches it, keeps
that bound and `note_cut`s what it stopped. A single native call (one Cholesky, one
eigvalsh) cannot be interrupted, so before starting one the code asks `fits(flops)`: its
predicted time, from the float64 matmul rate measured once per process (under the current
load) and an efficiency per kind of call, must fit in what is left.

Which method a layer gets is still chosen by the count-based predictions of each module
(reproducible); this clock only decides when to stop one. Outside a `running` block (global
methods, tests of the spectral functions) every check is a no-op.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch

from lipcheck.calibrate import matmul_seconds

CALIBRATION_N = 256
MAX_SLOWDOWN = 8.0
_rate: list[float] = []


class LayerBudgetSpent(Exception):
    """The layer's budget ran out in `what`; the caller keeps a cheaper certified bound."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


_slowdown = [1.0]   # the last layer's wall / CPU time: how much the machine is shared


@dataclass
class LayerClock:
    """`reserve` and every prediction are in seconds of this process's CPU time; they are
    turned into wall-clock seconds by `slowdown()`, the wall / CPU time ratio seen so far in
    this layer (the previous layer's before 50 ms): on a machine shared with other jobs the
    fallback's reserve and a native call's prediction grow with the share lost to them."""

    budget: float
    start: float = field(default_factory=time.perf_counter)
    cpu_start: float = field(default_factory=time.process_time)
    reserve: float = 0.0                 # CPU seconds kept back for the fallback of this attempt
    cuts: list[str] = field(default_factory=list)  # what was stopped, in order

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def slowdown(self) -> float:
        wall = self.elapsed()
        if wall < 0.05:
            return _slowdown[0]
        cpu = max(time.process_time() - self.cpu_start, 1e-3)
        _slowdown[0] = min(MAX_SLOWDOWN, max(1.0, wall / cpu))
        return _slowdown[0]

    def left(self) -> float:
        return self.budget - self.reserve * self.slowdown() - self.elapsed()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise LayerBudgetSpent(what)


_current: ContextVar[LayerClock | None] = ContextVar("layer_clock", default=None)


@contextmanager
def running(budget: float) -> Iterator[LayerClock]:
    """The clock of one layer, active in the block (what `check` and `fits` consult)."""
    clock = LayerClock(budget)
    token = _current.set(clock)
    try:
        yield clock
    finally:
        _current.reset(token)


def current() -> LayerClock | None:
    return _current.get()


def check(what: str) -> None:
    """LayerBudgetSpent when a layer clock is active and its time (less the reserve) is spent."""
    clock = _current.get()
    if clock is not None:
        clock.check(what)


def spent() -> bool:
    clock = _current.get()
    return clock is not None and clock.left() <= 0


def fits(flops: float, efficiency: float = 0.25, overhead: float = 0.0) -> bool:
    """Whether one native call of `flops` float64 operations (plus `overhead` seconds) is
    predicted to end in the time left (always True with no active clock). `efficiency`: its
    speed against a matmul's (a Cholesky of n = 1024-2048 measured 0.4-0.6: a quarter is
    conservative)."""
    clock = _current.get()
    if clock is None:
        return True
    return (predicted_seconds(flops, efficiency) + overhead) * clock.slowdown() <= clock.left()


def has(seconds: float) -> bool:
    """Whether `seconds` more (wall-clock, measured) fit in the active layer's budget (True
    with no clock)."""
    clock = _current.get()
    return clock is None or seconds <= clock.left()


def require(flops: float, what: str, efficiency: float = 0.25, overhead: float = 0.0) -> None:
    """LayerBudgetSpent unless the native call `what` of `flops` operations fits."""
    if not fits(flops, efficiency, overhead):
        raise LayerBudgetSpent(what)


def predicted_seconds(flops: float, efficiency: float = 0.25) -> float:
    """CPU seconds of `flops` matmul-equivalent operations at `efficiency`."""
    return flops / (machine_rate() * efficiency)


@contextmanager
def reserving(seconds: float) -> Iterator[None]:
    """Keep `seconds` of the active layer's budget for the fallback while the block runs."""
    clock = _current.get()
    if clock is None:
        yield
        return
    before = clock.reserve
    clock.reserve = before + max(0.0, seconds)
    try:
        yield
    finally:
        clock.reserve = before


def note_cut(what: str) -> None:
    """Record on the active clock that `what` was stopped by the budget (the bound the
    layer then keeps is its NodeBound's method)."""
    clock = _current.get()
    if clock is not None:
        clock.cuts.append(what)


def warm_up() -> None:
    """Once per process, before the first layer's clock starts: the matmul rate, and the
    lazy first calls that no layer should pay for (torch's first autograd.grad imports sympy:
    1-2 s; the first LAPACK calls load their modules)."""
    if _rate:
        return
    import numpy as np
    import scipy.linalg
    import scipy.linalg.lapack
    x = torch.ones(2, dtype=torch.float64, requires_grad=True)
    torch.autograd.grad(x * 2, x, torch.ones(2, dtype=torch.float64))
    eye = np.eye(2)
    scipy.linalg.eigvalsh(eye, subset_by_index=[1, 1])
    scipy.linalg.lapack.dpotrf(eye)
    scipy.linalg.lapack.zpotrf(eye.astype(np.complex128))
    torch.linalg.cholesky_ex(torch.eye(2, dtype=torch.complex128)[None])
    machine_rate()


def machine_rate() -> float:
    """float64 flops per CPU second of one matmul on this thread, measured once per process."""
    if not _rate:
        _rate.append(2 * CALIBRATION_N ** 3
                     / matmul_seconds(CALIBRATION_N, 5, time.process_time))
    return _rate[0]
