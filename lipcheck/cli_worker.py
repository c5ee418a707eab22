"""`lipcheck estimate --timeout`: the run in a worker process the CLI ends at the deadline.

The parent (this CLI process) checks paths and options that need no torch, forks, shows the
progress line from the worker's events, and writes what the worker rendered. The worker
imports torch, loads and bounds the model, and renders its outputs to text (stdout and the
--json file), so that the parent never starts a long call it cannot stop: the deadline is
held from the start of the command (torch's import included), inside any native call.
"""
from __future__ import annotations

import io
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, cast

from lipcheck.worker import Send, run_with_deadline

Configure = Callable[[], tuple[Any, Any]]   # () -> (Settings, EstimateOptions), in the worker


def run_in_worker(configure: Configure, model: Path, shapes: Any, render: Callable[[Any], dict],
                  timeout: float, caps: dict[str, float] | None, started: float) -> dict:
    """{"stdout", "json", "code"} from `render(report)` in the worker; RunTimeout at
    started + timeout. `caps` (the phases' budgets) turns the progress line on."""
    clock = None
    display: AbstractContextManager = nullcontext()
    if caps is not None:
        from lipcheck.cli_base import err
        from lipcheck.cli_progress import PhaseClock, phase_progress
        clock = PhaseClock(caps, timeout, now=time.monotonic)
        clock.started = started
        display = phase_progress(err, clock)

    def job(send: Send) -> dict:
        from lipcheck.api import estimate
        settings, options = configure()
        report = estimate(str(model), shapes, settings, options,
                          progress=lambda node: send(("node", node.name)),
                          on_phase=lambda phase, count: send(("phase", phase, count)))
        return render(report)
    return run_with_deadline(job, timeout, None if clock is None else _forward(clock),
                             display, started)


def _forward(clock: Any) -> Callable[[tuple], None]:
    """The worker's events, shown on the progress line."""
    def on_event(event: tuple) -> None:
        if event[0] == "phase":
            clock.enter(event[1], event[2])
        elif event[0] == "node":
            clock.node_done(event[1])
    return on_event


def stdout_console() -> tuple[Any, io.StringIO]:
    """A rich Console that renders into a buffer as it would on this process's stdout
    (terminal or not, colours, width)."""
    from rich.console import Console
    probe = Console(highlight=False)
    buffer = io.StringIO()
    system = cast(Any, probe.color_system)  # the name of the detected system, or None
    return Console(file=buffer, highlight=False, force_terminal=probe.is_terminal,
                   color_system=system, width=probe.width), buffer

