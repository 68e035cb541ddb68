"""Hot reload: notice a new checkpoint, validate it beside the serving one, then switch.

The checkpoint path may be a `current` symlink the trainer moves; both the link target and
the file's identity (inode, size, mtime) are watched, so a swap or an in-place copy is seen.
A checkpoint that fails to load, validate or run the probe leaves the old model serving.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import torch
from loguru import logger

from core.checkpoint import CheckpointError
from core.runtime.engine import Engine

Identity = tuple[str, int, int, int]


def identity(path: Path) -> Identity | None:
    """What changes when the served file changes; None when it is missing."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return (real, st.st_ino, st.st_size, st.st_mtime_ns)


def probe(engine: Engine) -> None:
    """Run a textured image through the model; raise when the output is unusable."""
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(1, 3, 64, 64, generator=generator)
    output = engine.infer(pixels)
    if not torch.isfinite(output).all():
        raise CheckpointError(f"{engine.checkpoint.path}: the probe image gave NaN/Inf output")


class ModelWatcher:
    """Polls the checkpoint path and calls ``on_new(engine)`` with a validated engine."""

    def __init__(
        self,
        path: Path,
        make_engine: Callable[[Path], Engine],
        on_new: Callable[[Engine], None],
        on_error: Callable[[str], None],
        interval_s: float,
        current: Identity | None,
    ) -> None:
        self.path = path
        self._make_engine = make_engine
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
            engine = self._make_engine(self.path)
            probe(engine)
        except (CheckpointError, OSError, RuntimeError, ValueError) as exc:
            message = f"new checkpoint {seen[0]} refused, still serving the old model: {exc}"
            logger.error(message)
            self._on_error(message)
            return
        self._on_new(engine)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.check_now()
