"""Resource limits on untrusted models: file size, node count, and a wall-clock timeout.

Loaders call `check_file_size` before reading a file and `check_node_count` before
converting its nodes, so a huge or hostile file is refused with one line before it can
exhaust memory. `time_limit` bounds a whole run (load, layer bounds, global methods,
lower bound) in this process: see `time_limit` for how it stops a run and what it cannot
interrupt (one long native call); `lipcheck.worker` holds the deadline even there.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lipcheck.errors import LipcheckError, ModelLoadError, UserError

MAX_MODEL_BYTES = 2 * 1024**3   # 2 GiB: the protobuf limit of a single ONNX file
MAX_NODES = 100_000


class RunTimeout(LipcheckError):
    """The run took longer than --timeout (exit code 2, like every user-caused stop)."""

    code = "timeout"


def check_file_size(path: Path, limit: int | None = None) -> int:
    """The file's size in bytes; ModelLoadError when it is above the limit
    (default: MAX_MODEL_BYTES, read at call time)."""
    limit = MAX_MODEL_BYTES if limit is None else limit
    size = path.stat().st_size
    if size > limit:
        raise ModelLoadError(f"{path}: {size} bytes, more than the limit of {limit} bytes "
                             f"({limit / 1024**3:g} GiB)")
    return size


def check_node_count(count: int, where: str, limit: int | None = None) -> None:
    """ModelLoadError when a graph has more nodes than the limit (default: MAX_NODES)."""
    limit = MAX_NODES if limit is None else limit
    if count > limit:
        raise ModelLoadError(f"{where}: {count} nodes, more than the limit of {limit}")


def check_timeout(seconds: float | None) -> float | None:
    """Validate a --timeout value (None or a positive finite number of seconds)."""
    if seconds is None:
        return None
    if not (math.isfinite(seconds) and seconds > 0):
        raise UserError(f"--timeout {seconds!r}: give a positive number of seconds")
    return float(seconds)


class Deadline:
    """A point in time; `check(what)` raises RunTimeout once it has passed."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.end = None if seconds is None else time.monotonic() + seconds

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end

    def check(self, what: str) -> None:
        if self.expired():
            raise RunTimeout(timeout_message(self.seconds, what))


def timeout_message(seconds: float | None, what: str) -> str:
    return f"stopped by --timeout {seconds:g} s ({what})"


def _alarm_usable() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def time_limit(seconds: float | None, what: Callable[[], str] = lambda: "running"
               ) -> Iterator[Deadline]:
    """Raise RunTimeout in the body once `seconds` have passed.

    On the main thread of a POSIX process a SIGALRM timer interrupts the body at the
    next Python bytecode, wherever it is (loading, a layer, the lower-bound search). A
    single long native call (one big SVD) finishes before the signal is seen (the CLI runs
    the estimate in `lipcheck.worker`, killed at the deadline, for that). Elsewhere
    (Windows, worker threads) the yielded Deadline must be checked by the caller, which
    `lipcheck.api.estimate` does after every node. The previous SIGALRM handler and timer
    are restored on exit.
    """
    deadline = Deadline(seconds)
    if seconds is None or not _alarm_usable():
        yield deadline
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise RunTimeout(timeout_message(seconds, what()))

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield deadline
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
