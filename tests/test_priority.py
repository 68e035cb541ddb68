"""daemon.priority with real threads and the real scheduler settings."""

from __future__ import annotations

import os
import sys
import threading

from daemon.priority import IO_NICENESS, lower_thread_priority


def test_io_threads_yield_to_the_engine_thread() -> None:
    """The I/O pool's threads lower their own priority, and only their own (Linux)."""
    if sys.platform != "linux":
        lower_thread_priority()  # a no-op elsewhere; must not raise
        return
    base = os.getpriority(os.PRIO_PROCESS, 0)
    seen: list[int] = []

    def worker() -> None:
        lower_thread_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [min(19, base + IO_NICENESS)]
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the main thread is untouched
