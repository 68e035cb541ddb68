"""The loaded models: a bounded set of engines, least recently used out first.

Presets may name different checkpoints; each is loaded on first use (and validated with the
probe image, as the default model is), kept while the sum of the loaded weights fits
``model_memory_mb``, and re-checked every ``reload_seconds`` when it is used: a changed file
is loaded beside the old engine and replaces it only when it passes the probe, so a bad
checkpoint leaves the old one serving. The default checkpoint is hot-reloaded by
daemon.reload's watcher and handed in with :meth:`ModelCache.put`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from core.checkpoint import CheckpointError
from core.runtime.engine import Engine
from daemon.reload import Identity, identity, probe


def engine_bytes(engine: Engine) -> int:
    """What an engine's weights take: its checkpoint's tensors (folded copies: about as much)."""
    return 2 * sum(t.numel() * t.element_size() for t in engine.checkpoint.state_dict.values())


@dataclass
class _Loaded:
    engine: Engine
    seen: Identity | None
    checked_at: float
    size: int


class ModelCache:
    """Engines by checkpoint path, at most ``budget_bytes`` of weights (but always one)."""

    def __init__(
        self,
        load: Callable[[Path], Engine],
        budget_bytes: int,
        reload_seconds: float,
        *,
        watched: Path | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._load = load
        self.budget_bytes = budget_bytes
        self._reload_s = reload_seconds
        self._watched = str(watched) if watched is not None else None  # reload.py's
        self._on_change = on_change or (lambda: None)
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self.errors: dict[str, str] = {}
        self.evictions = 0
        # Counts engines let go (replaced by a reload, or unloaded): whoever keeps its own
        # references to engines (the pipeline's per-group Inferences) drops them on a change.
        self.generation = 0

    def put(self, path: Path | str, engine: Engine) -> None:
        """Serve ``engine`` for ``path`` (the default model, loaded or hot-reloaded)."""
        with self._lock:
            entry = _Loaded(engine, identity(Path(path)), time.monotonic(), engine_bytes(engine))
            previous = self._loaded.get(str(path))
            if previous is not None and previous.engine is not engine:
                self.generation += 1
            self._loaded[str(path)] = entry
            self._loaded.move_to_end(str(path))
            self._evict(keep=str(path))
        self._on_change()

    def get(self, path: Path | str) -> Engine:
        """The engine for ``path``, loaded (and probed) if needed; raises what loading raises."""
        key = str(path)
        with self._lock:
            entry = self._loaded.get(key)
            if entry is not None:
                self._loaded.move_to_end(key)
                due = time.monotonic() - entry.checked_at >= self._reload_s
                if not due or key == self._watched:
                    return entry.engine
        if entry is not None:
            return self._maybe_reload(key, entry)
        engine = self._load(Path(key))
        probe(engine)
        logger.info("model loaded for {}: {}", key, engine.version)
        self.put(key, engine)
        return engine

    def _maybe_reload(self, key: str, entry: _Loaded) -> Engine:
        entry.checked_at = time.monotonic()
        seen = identity(Path(key))
        if seen is None or seen == entry.seen:
            return entry.engine
        try:
            engine = self._load(Path(key))
            probe(engine)
        except (CheckpointError, OSError, RuntimeError, ValueError) as exc:
            entry.seen = seen
            message = f"new checkpoint {seen[0]} refused, still serving the old model: {exc}"
            logger.error(message)
            self.errors[key] = message
            return entry.engine
        logger.info("model switched for {}: {} -> {}", key, entry.engine.version, engine.version)
        self.errors.pop(key, None)
        self.put(key, engine)
        return engine

    def _evict(self, keep: str) -> None:
        while sum(e.size for e in self._loaded.values()) > self.budget_bytes:
            oldest = next(iter(self._loaded))
            if oldest == keep:
                break  # one model always stays, whatever the budget
            gone = self._loaded.pop(oldest)
            self.evictions += 1
            self.generation += 1
            logger.info("model {} unloaded (memory budget)", gone.engine.version)

    def is_loaded(self, engine: Engine) -> bool:
        with self._lock:
            return any(e.engine is engine for e in self._loaded.values())

    def loaded(self) -> list[dict[str, str]]:
        """Every loaded model, most recently used last (for /healthz and /metrics)."""
        with self._lock:
            return [
                {
                    "checkpoint": key,
                    "version": e.engine.version,
                    "sha256": e.engine.checkpoint.sha256,
                    "device": str(e.engine.device),
                    "precision": e.engine.precision,
                    "mib": f"{e.size / 2**20:.1f}",
                }
                for key, e in self._loaded.items()
            ]
