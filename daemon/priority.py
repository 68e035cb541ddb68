"""Lower priority for the threads and processes that feed the engine.

The engine thread is the critical path of both ``artd process`` and the daemon; the
decode/encode work around it only has to keep up. Left at equal priority it takes the
engine's core: in ``artd process`` on photos Engine.run cost 16-17 ms per image inside a run
against about 5 ms alone. With the I/O threads at nice +10, 300 small files took 2.48 against
3.53 s and 200 photos 3.05 against 3.33 s (medians of 4 alternating pairs).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

IO_NICENESS = 10


def lower_thread_priority(niceness: int = IO_NICENESS) -> None:
    """Make the calling thread yield the CPU to the rest of the process (Linux: threads have
    their own nice value; elsewhere the call would renice a whole process, so it is skipped)."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            tid = threading.get_native_id()
            # Relative to what the thread has (a unit's Nice= stays the floor), at most 19.
            os.setpriority(
                os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness)
            )
