"""The progress line of `lipcheck estimate`: which phase runs, for how long, and how much of
its budget is left, e.g. `per-layer bounds 3/8 (/4/Conv) · 1.2s` or
`lower-bound search · 2.1s, 7.9s of 10s left · run 4.0s, 26s left`.

The state (`PhaseClock`) is separate from the rich display so that the text is testable.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import Progress, ProgressColumn, SpinnerColumn, Task
from rich.text import Text


class PhaseClock:
    """What the run is doing now. `caps`: the budget of each phase that has one (seconds);
    `timeout`: the cap on the whole run, or None."""

    def __init__(self, caps: dict[str, float], timeout: float | None,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.caps, self.timeout, self.now = caps, timeout, now
        self.started = self.phase_started = now()
        self.phase, self.done, self.node = "starting", 0, ""
        self.count: int | None = None

    def enter(self, phase: str, count: int | None = None) -> None:
        self.phase, self.count, self.done, self.node = phase, count, 0, ""
        self.phase_started = self.now()

    def node_done(self, name: str) -> None:
        self.done += 1
        self.node = name

    def text(self) -> str:
        now = self.now()
        phase = self.phase
        if self.count is not None:
            phase += f" {self.done}/{self.count}" + (f" ({self.node})" if self.node else "")
        parts = [phase, _phase_time(now - self.phase_started, self.caps.get(self.phase))]
        if self.timeout is not None:
            run = now - self.started
            parts.append(f"run {run:.1f}s, {_secs(max(0.0, self.timeout - run))} left")
        return " · ".join(parts)


def _phase_time(elapsed: float, cap: float | None) -> str:
    if cap is None:
        return f"{elapsed:.1f}s"
    return f"{elapsed:.1f}s, {_secs(max(0.0, cap - elapsed))} of {_secs(cap)} left"


def _secs(value: float) -> str:
    return f"{value:.1f}s" if value < 10 else f"{value:.0f}s"


class _ClockColumn(ProgressColumn):
    """Re-reads the clock at every refresh, so elapsed and left move between events."""

    def __init__(self, clock: PhaseClock) -> None:
        super().__init__()
        self.clock = clock

    def render(self, task: Task) -> Text:
        return Text(self.clock.text())


@contextmanager
def phase_progress(console: Console, clock: PhaseClock) -> Iterator[PhaseClock]:
    """A transient one-line display of `clock` on `console` while the block runs."""
    with Progress(SpinnerColumn(), _ClockColumn(clock), console=console, transient=True) as bar:
        bar.add_task("", total=None)
        yield clock
