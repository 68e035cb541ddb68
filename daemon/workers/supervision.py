"""The child process as the service holds it: what must go when it does, waiting on it within
bounds, and what its death was.

**Bounds.** The service waits on the pipe and the child's process sentinel together, so an
exit or a signal is seen at once; a child whose heartbeat is older than
``heartbeat_timeout_s`` while a batch waits on it (stopped, deadlocked) or whose batch runs past
``batch_timeout_s`` (a hang that still beats) is SIGKILLed; each is a :class:`WorkerDied`,
with its cause. Loading is bounded by ``start_timeout_s`` alone (imports and CUDA set-up may
hold the GIL for seconds); a worker that cannot load (a bad checkpoint, out of memory, no
device) or dies while loading raises :class:`WorkerUnavailable` with the reason and keeps no
process. A dead worker is restarted with its checkpoint on the next call (``health().restarts``).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from daemon.workers.interface import WorkerDied, WorkerUnavailable
from daemon.workers.segments import BEAT, drop

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

POLL_S = 0.1  # how often a wait looks at the heartbeat; replies wake it at once


class Died(Exception):
    def __init__(self, error: WorkerDied) -> None:
        super().__init__(error.cause)
        self.error = error


@dataclass
class Resources:
    """What a worker holds that must go when it does (shared with its finalizer)."""

    process: BaseProcess | None = None
    conn: Connection | None = None
    segments: dict[str, shared_memory.SharedMemory] = field(default_factory=dict)

    def end_process(self, timeout_s: float = 2.0) -> None:
        process, conn = self.process, self.conn
        self.process, self.conn = None, None
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join(timeout_s)
            with contextlib.suppress(ValueError):
                process.close()
        if conn is not None:
            conn.close()

    def release(self) -> None:
        self.end_process()
        for segment in self.segments.values():
            drop(segment)
        self.segments.clear()


def await_reply(
    res: Resources,
    bound_s: float,
    what: str,
    *,
    heartbeat_timeout_s: float | None,
    aborted: Callable[[], bool],
    end: Callable[[], None],
) -> tuple[Any, ...]:
    """The child's next message; Died when it exits, misses its heartbeat (unless
    ``heartbeat_timeout_s`` is None) or runs past ``bound_s``; WorkerUnavailable once
    ``aborted()``. ``end`` ends the process. A reply already in the pipe wins over a death
    after it."""
    conn, process = res.conn, res.process
    assert conn is not None and process is not None
    began = time.monotonic()
    while True:
        ready = wait([conn, process.sentinel], timeout=POLL_S)
        if aborted():
            end()
            raise WorkerUnavailable("the model worker was stopped")
        if conn in ready or conn.poll():
            try:
                return conn.recv()
            except (EOFError, OSError) as exc:
                raise Died(death(res, exc, end)) from exc
        if process.sentinel in ready:
            raise Died(death(res, None, end))
        now = time.monotonic()
        if heartbeat_timeout_s is not None:
            stamp = BEAT.unpack_from(res.segments["beat"].buf, 0)[0]
            age = now - max(stamp, began)
            if age > heartbeat_timeout_s:
                end()
                cause = f"no heartbeat for {age:.1f}s (killed with SIGKILL)"
                raise Died(WorkerDied(cause, kind="heartbeat", signal=signal.SIGKILL))
        if now - began > bound_s:
            end()
            cause = f"{what} ran over {bound_s:g}s (killed with SIGKILL)"
            raise Died(WorkerDied(cause, kind="timeout", signal=signal.SIGKILL))


def death(res: Resources, exc: BaseException | None, end: Callable[[], None]) -> WorkerDied:
    """How the child died (reaped, then ended with ``end``); ``exc``: what the pipe raised."""
    process = res.process
    assert process is not None
    process.join(2.0)
    code = process.exitcode
    end()
    if code is None:
        return WorkerDied(f"lost its pipe ({exc})", kind="exit")
    if code < 0:
        name = signal.Signals(-code).name
        return WorkerDied(f"killed by {name}", kind="signal", signal=-code, exitcode=code)
    return WorkerDied(f"exited with status {code}", kind="exit", exitcode=code)


def exit_cause(process: BaseProcess) -> str:
    code = process.exitcode
    if code is None:
        return "no exit status"
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
