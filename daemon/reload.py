"""Hot reload: notice a new checkpoint, validate it beside the serving one, then switch.

The checkpoint path may be a `current` symlink the trainer moves; both the link target and
the file's identity (inode, size, mtime) are watched, so a swap or an in-place copy is seen.
The model worker loads the new file beside the serving one and checks it with its probe
(daemon.workers.child.probe); a checkpoint that fails to load, validate or run the probe
leaves the old model serving.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from daemon.workers.interface import WorkerUnavailable

if TYPE_CHECKING:
    from daemon.workers import ModelInfo

Identity = tuple[str, int, int, int]


def identity(path: Path) -> Identity | None:
    """What changes when the served file changes; None when it is missing."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return (real, st.st_ino, st.st_size, st.st_mtime_ns)


class ModelWatcher:
    """Polls the checkpoint path; on a change calls ``switch(path)``, which loads and probes
    the new file beside the serving one and switches to it (a model worker's ``start``:
    daemon.model_cache.ModelCache.reload), raising WorkerUnavailable, the old model serving
    on, when it is refused. ``on_new(info)`` hears of a switch, ``on_error(message)`` of a
    refusal."""

    def __init__(
        self,
        path: Path,
        switch: Callable[[Path], ModelInfo],
        on_new: Callable[[ModelInfo], None],
        on_error: Callable[[str], None],
        interval_s: float,
        current: Identity | None,
    ) -> None:
        self.path = path
        self._switch = switch
        self._on_new = on_new
        self._on_error = on_error
        self._interval = interval_s
        self._seen = current
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="artd-reload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def check_now(self) -> None:
        seen = identity(self.path)
        if seen is None or seen == self._seen:
            return
        self._seen = seen
        try:
            info = self._switch(self.path)
        except WorkerUnavailable as exc:
            message = f"new checkpoint {seen[0]} refused, still serving the old model: {exc}"
            if not exc.refused:
                message = f"new checkpoint {seen[0]} not loaded: {exc}"
            logger.error(message)
            self._on_error(message)
            return
        self._on_new(info)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.check_now()
