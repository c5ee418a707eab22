"""Run a function in a forked child process that the parent ends at a hard deadline.

This is how `lipcheck estimate --timeout` holds even inside one long native call (a big
SVD, a LAPACK Cholesky), which no signal handler or clock check in the same process can
interrupt: the parent process does no computation, it waits on a pipe and, when the
deadline passes, kills the child (SIGKILL) and raises RunTimeout naming the phase and the
last node the child reported. The child sends its events over the pipe as length-prefixed
pickles: ("phase", name, count), ("node", name), then ("done", result) or ("error", exc).

Fork is POSIX only; `forking_available()` says whether it can be used (the CLI then falls
back to the in-process timer of `limits.time_limit`).
"""
from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from lipcheck.errors import LipcheckError
from lipcheck.limits import RunTimeout, timeout_message

Send = Callable[[tuple], None]
_HEADER = struct.Struct("!Q")


class WorkerError(LipcheckError):
    """An error raised in the child that could not travel as itself (its class could not
    be rebuilt from a pickle): the same message, code and exit code."""

    def __init__(self, message: str, code: str = "error", exit_code: int = 2) -> None:
        super().__init__(message)
        self.code, self.exit_code = code, exit_code


class WorkerCrash(Exception):
    """The child ended without a result (killed from outside, out of memory, a crash)."""


def forking_available() -> bool:
    return hasattr(os, "fork") and sys.platform != "win32"


def run_with_deadline(job: Callable[[Send], Any], seconds: float,
                      on_event: Callable[[tuple], None] | None = None,
                      display: AbstractContextManager | None = None,
                      started: float | None = None) -> Any:
    """job(send) in a forked child; its return value, or its exception re-raised here.
    Events the child passes to `send` reach `on_event` in this process as they come. At
    `seconds` after the call the child is killed and RunTimeout raised: the call returns
    within a few milliseconds of the deadline whatever the child is doing (the deadline is
    `started`, a time.monotonic() value, default now, plus `seconds`). `display` (a
    progress line: it starts a thread) is entered in this process only after the fork, so
    that the child never inherits a lock that thread holds."""
    deadline = (time.monotonic() if started is None else started) + seconds
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        _child(job, write_fd)
    os.close(write_fd)
    stage = _Stage()
    try:
        with os.fdopen(read_fd, "rb", buffering=0) as pipe, display or nullcontext():
            return _wait(pipe, deadline, seconds, pid, stage, on_event)
    finally:
        _end(pid)


class _Stage:
    """Where the child is, from its events (for the timeout message)."""

    def __init__(self) -> None:
        self.phase, self.node = "starting", ""

    def see(self, event: tuple) -> None:
        if event[0] == "phase":
            self.phase, self.node = event[1], ""
        elif event[0] == "node":
            self.node = event[1]

    def describe(self) -> str:
        if self.phase in ("starting", "loading"):
            return "loading the model"
        text = f"in {self.phase}"
        return text + (f", last node bounded: {self.node!r}" if self.node else "")


def _wait(pipe, deadline: float, seconds: float, pid: int, stage: _Stage,
          on_event: Callable[[tuple], None] | None) -> Any:
    buffer = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([pipe], [], [], left)[0]:
            if time.monotonic() >= deadline:
                raise RunTimeout(timeout_message(seconds, stage.describe()))
            continue
        chunk = pipe.read(1 << 16)
        if not chunk:
            raise WorkerCrash(f"the worker process ended without a result ({_status(pid)})")
        buffer += chunk
        for event in _frames(buffer):
            if event[0] == "done":
                return event[1]
            if event[0] == "error":
                raise event[1]
            stage.see(event)
            if on_event is not None:
                on_event(event)


def _frames(buffer: bytearray) -> list[tuple]:
    """The complete frames at the start of `buffer`, removed from it."""
    out = []
    while len(buffer) >= _HEADER.size:
        (size,) = _HEADER.unpack_from(buffer)
        if len(buffer) < _HEADER.size + size:
            break
        out.append(pickle.loads(bytes(buffer[_HEADER.size:_HEADER.size + size])))
        del buffer[:_HEADER.size + size]
    return out


def _child(job: Callable[[Send], Any], write_fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: the parent reports it
    code = 0
    try:
        with os.fdopen(write_fd, "wb") as pipe:
            def send(event: tuple) -> None:
                data = pickle.dumps(event, protocol=pickle.HIGHEST_PROTOCOL)
                pipe.write(_HEADER.pack(len(data)) + data)
                pipe.flush()
            try:
                send(("done", job(send)))
            except BaseException as exc:  # noqa: BLE001 (every failure goes to the parent)
                send(("error", _portable(exc)))
    except BaseException:  # noqa: BLE001 (the pipe is gone: the parent has stopped waiting)
        code = 1
    finally:
        os._exit(code)  # no atexit handlers, no flushing of the parent's buffers twice


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives a pickle round trip, else an equivalent that does; the child's
    traceback is attached as a note (shown with --debug)."""
    note = "in the worker process:\n" + "".join(traceback.format_exception(exc))
    try:
        copy = pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 (a class whose __init__ does not take its args)
        if isinstance(exc, LipcheckError):
            copy = WorkerError(str(exc), exc.code, exc.exit_code)
        else:
            copy = RuntimeError(f"{type(exc).__name__}: {exc}")
    copy.add_note(note)
    return copy


def _status(pid: int) -> str:
    try:
        done, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return "status unknown"
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        hint = " (out of memory?)" if signum == signal.SIGKILL else ""
        return f"killed by signal {signum}{hint}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _end(pid: int) -> None:
    """Kill the child if it still runs, and reap it."""
    try:
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # already reaped (by _status)
