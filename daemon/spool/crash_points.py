"""Crash points, and the spool's durable writes, each of whose steps is one.

Every filesystem step of the state machine calls :func:`step` with its name
(``record-claimed:temp-write``, ``claim:rename``, ``archive:rename``, ...). When the
environment held ``_ARTD_CRASHPOINT=N`` at import, the process SIGKILLs itself just before
its N-th step (counted from process start, so recovery steps count too); with
``_ARTD_CRASHPOINT_TRACE=FILE`` every step is appended to FILE as ``"<n> <name>"``, the fatal
one included. Neither name starts with ``ARTD_``, so the daemon's settings never see them.
tests/reliability/test_crash_points.py loops N over every step (docs/reliability.md).

The writes themselves are core.durable's; the wrappers here only name their steps
``<prefix>:<step>`` (``temp-open``, ``temp-write``, ``flush``, ``rename``, ``dir-flush``).
"""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

from core import durable


def _crash_point_from_env() -> int | None:
    value = os.environ.get("_ARTD_CRASHPOINT", "")
    return int(value) if value.isdigit() else None


_CRASH_AT = _crash_point_from_env()
_CRASH_TRACE = os.environ.get("_ARTD_CRASHPOINT_TRACE") or None
_ACTIVE = _CRASH_AT is not None or _CRASH_TRACE is not None
_STEPS = itertools.count(1)


def step(name: str) -> None:
    """A filesystem step is about to happen: count it, trace it, die here if told to."""
    if not _ACTIVE:
        return
    number = next(_STEPS)  # atomic under the GIL: pipeline threads share the count
    if _CRASH_TRACE is not None:
        fd = os.open(_CRASH_TRACE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, f"{number} {name}\n".encode())
        finally:
            os.close(fd)
    if number == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)


def hook(prefix: str) -> durable.Hook | None:
    """core.durable's step hook naming each step ``<prefix>:<step>``; None when inert."""
    return (lambda name: step(f"{prefix}:{name}")) if _ACTIVE else None


def write_atomic(
    path: Path, data: bytes, temp: Path, prefix: str, dir_fd: int | None = None
) -> None:
    """core.durable.write_atomic with an explicit temp name and the spool's file mode."""
    durable.write_atomic(path, data, temp=temp, dir_fd=dir_fd, mode=0o644, hook=hook(prefix))


def fsync_dir(path: Path, prefix: str) -> None:
    """Flush a folder's entries (step ``<prefix>:dir-flush``)."""
    durable.fsync_dir(path, hook(prefix))


def fsync_fd(fd: int, prefix: str) -> None:
    """Flush an open folder's entries (step ``<prefix>:dir-flush``)."""
    step(f"{prefix}:dir-flush")
    durable.fsync_fd(fd)


def move_into(source: Path, folder_fd: int, name: str, prefix: str) -> None:
    """Rename ``source`` to ``name`` in an open folder, then flush that folder.

    A symlink at ``source`` moves as itself: rename never follows it."""
    step(f"{prefix}:rename")
    os.rename(source, name, dst_dir_fd=folder_fd)
    fsync_fd(folder_fd, prefix)
