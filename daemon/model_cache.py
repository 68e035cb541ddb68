"""The loaded models: one model worker per checkpoint in use, least recently used out first.

The daemon's own checkpoint and the checkpoints presets name each get a worker of their own
(daemon.workers: by default a :class:`~daemon.workers.LocalModelWorker`, one supervised
process), started on first use. The workers are kept while the sum of their loaded weights
fits ``model_memory_mb`` (one always stays, whatever the budget); the one used longest ago is
stopped first, its process and memory gone with it. A preset's checkpoint is re-checked
every ``reload_seconds`` when it is used: a changed file is loaded in the running worker,
which switches to it only when it loads and passes the probe, so a bad checkpoint leaves the
old one serving. The daemon's own checkpoint is watched by daemon.reload's watcher instead,
which calls :meth:`ModelCache.reload`. A worker that cannot start is not kept: its reason is
kept in :attr:`ModelCache.failed` (and shown on /healthz) until a start succeeds.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from daemon.reload import Identity, identity
from daemon.workers import EngineOptions, ModelInfo, ModelWorker, WorkerUnavailable


@dataclass
class _Loaded:
    worker: ModelWorker
    info: ModelInfo
    seen: Identity | None
    checked_at: float


class ModelCache:
    """Model workers by checkpoint path, at most ``budget_bytes`` of weights (but always one).

    ``make_worker(checkpoint)`` makes a worker not yet started. :meth:`get` is called by the
    thread that runs batches, :meth:`reload` by the checkpoint watcher; the rest by anyone."""

    def __init__(
        self,
        make_worker: Callable[[str], ModelWorker],
        options: EngineOptions,
        budget_bytes: int,
        reload_seconds: float,
        *,
        watched: Path | None = None,
    ) -> None:
        self._make_worker = make_worker
        self.options = options
        self.budget_bytes = budget_bytes
        self._reload_s = reload_seconds
        self._watched = str(watched) if watched is not None else None  # reload.py's
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self._starting = threading.Lock()  # one worker start at a time (get, reload)
        self.errors: dict[str, str] = {}  # refused reloads, by checkpoint
        self.failed: dict[str, str] = {}  # workers that could not start, by checkpoint
        self.evictions = 0
        self._stopped = False

    def get(self, path: Path | str) -> tuple[ModelWorker, ModelInfo]:
        """The worker for ``path`` and the model it serves, started if needed; raises
        WorkerUnavailable when it cannot start."""
        key = str(path)
        with self._lock:
            entry = self._loaded.get(key)
            if entry is not None:
                self._loaded.move_to_end(key)
                due = time.monotonic() - entry.checked_at >= self._reload_s
                if not due or key == self._watched:
                    return entry.worker, entry.worker.model or entry.info
        if entry is not None:
            return entry.worker, self._maybe_reload(key, entry)
        return self._start(key)

    def _start(self, key: str) -> tuple[ModelWorker, ModelInfo]:
        with self._starting:
            with self._lock:
                entry = self._loaded.get(key)  # started by the watcher meanwhile
            if entry is not None:
                return entry.worker, entry.worker.model or entry.info
            if self._stopped:
                raise WorkerUnavailable("the model workers are stopping")
            worker = self._make_worker(key)
            seen = identity(Path(key))
            try:
                info = worker.start(Path(key), self.options)
            except WorkerUnavailable as exc:
                worker.stop()
                self.failed[key] = exc.reason
                raise
            self.failed.pop(key, None)
            logger.info("model loaded for {}: {}", key, info.version)
            with self._lock:
                self._loaded[key] = _Loaded(worker, info, seen, time.monotonic())
                gone = self._evict(keep=key)
        for old in gone:
            old.worker.stop()
        return worker, info

    def _maybe_reload(self, key: str, entry: _Loaded) -> ModelInfo:
        entry.checked_at = time.monotonic()
        seen = identity(Path(key))
        if seen is None or seen == entry.seen:
            return entry.worker.model or entry.info
        entry.seen = seen
        try:
            info = entry.worker.start(Path(key), self.options)
        except WorkerUnavailable as exc:
            message = f"new checkpoint {seen[0]} refused, still serving the old model: {exc}"
            if not exc.refused:
                message = f"new checkpoint {seen[0]} not loaded: {exc}"
            logger.error(message)
            self.errors[key] = message
            return entry.worker.model or entry.info
        logger.info("model switched for {}: {} -> {}", key, entry.info.version, info.version)
        self.errors.pop(key, None)
        entry.info = info
        return info

    def reload(self, path: Path | str) -> ModelInfo:
        """The watched checkpoint changed: its worker loads it and switches (raises
        WorkerUnavailable, the old model serving on, when it is refused); a worker not
        running (unloaded, or it never came up) is started with it."""
        key = str(path)
        with self._lock:
            entry = self._loaded.get(key)
        if entry is None:
            return self._start(key)[1]
        seen = identity(Path(key))
        with self._starting:
            info = entry.worker.start(Path(key), self.options)
        entry.info, entry.seen = info, seen
        self.errors.pop(key, None)
        return info

    def _evict(self, keep: str) -> list[_Loaded]:
        """The workers to stop (lock held): oldest first, while over the budget."""
        gone = []
        while sum(e.info.weights_bytes for e in self._loaded.values()) > self.budget_bytes:
            oldest = next(iter(self._loaded))
            if oldest == keep:
                break  # one model always stays, whatever the budget
            entry = self._loaded.pop(oldest)
            self.evictions += 1
            gone.append(entry)
            logger.info("model {} unloaded (memory budget)", entry.info.version)
        return gone

    def model(self, path: Path | str) -> ModelInfo | None:
        """The model served for ``path`` now, if its worker is loaded."""
        with self._lock:
            entry = self._loaded.get(str(path))
        return None if entry is None else entry.worker.model or entry.info

    def loaded(self) -> list[dict[str, str]]:
        """Every loaded model, most recently used last (for /healthz and /metrics)."""
        with self._lock:
            entries = list(self._loaded.items())
        listed = []
        for key, entry in entries:
            info = entry.worker.model or entry.info
            listed.append(
                {
                    "checkpoint": key,
                    "version": info.version,
                    "sha256": info.sha256,
                    "device": info.device,
                    "precision": info.precision,
                    "mib": f"{info.weights_bytes / 2**20:.1f}",
                }
            )
        return listed

    def workers(self) -> list[dict[str, Any]]:
        """Every worker (/healthz, /metrics and the page): alive, busy, restarts, its model,
        and why it does not serve, if so; a checkpoint whose worker could not start is
        listed too, not alive, with the reason."""
        with self._lock:
            entries = list(self._loaded.items())
        listed = []
        for key, entry in entries:
            health = entry.worker.health()
            listed.append(
                {
                    "checkpoint": key,
                    "alive": health.alive,
                    "busy": health.busy,
                    "model": health.model_version,
                    "restarts": health.restarts,
                    "heartbeat_age_s": None
                    if health.heartbeat_age_s is None
                    else round(health.heartbeat_age_s, 2),
                    "pid": health.pid,
                    "device": health.device,
                    "precision": health.precision,
                    "error": health.error,
                    # A pool of model actors on a Ray cluster (daemon.workers.ray_pool): how
                    # many serve, how many are busy, how many were lost; None otherwise.
                    "actors": getattr(health, "actors", None),
                    "busy_actors": getattr(health, "busy_actors", None),
                    "lost": getattr(health, "lost", 0),
                }
            )
        for key, reason in list(self.failed.items()):
            if key not in dict(entries):
                listed.append(
                    {"checkpoint": key, "alive": False, "busy": False, "model": None}
                    | {"restarts": 0, "heartbeat_age_s": None, "pid": None, "device": None}
                    | {"precision": None, "error": reason}
                    | {"actors": None, "busy_actors": None, "lost": 0}
                )
        return listed

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every worker (each finishes the batch in hand within ``timeout_s``)."""
        self._stopped = True
        with self._lock:
            entries = list(self._loaded.values())
            self._loaded.clear()
        for entry in entries:
            entry.worker.stop(timeout_s)
