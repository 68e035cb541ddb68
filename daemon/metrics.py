"""Prometheus metrics and the health state behind ``/healthz``."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

_MODEL_LABELS = ("checkpoint", "version", "sha256", "device", "precision")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """One registry per daemon (tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.up = Gauge("artd_up", "1 while the daemon runs", registry=r)
        self.processed = Counter("artd_files_processed", "Inputs turned into outputs", registry=r)
        self.quarantined = Counter(
            "artd_files_quarantined", "Inputs quarantined", ["reason"], registry=r
        )
        self.queue_depth = Gauge(
            "artd_queue_depth", "Files per pipeline stage", ["stage"], registry=r
        )
        self.batch_size = Histogram(
            "artd_batch_size", "Images per model call", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "artd_batch_seconds", "Model call duration", buckets=LATENCY_BUCKETS, registry=r
        )
        self.drop_to_output = Histogram(
            "artd_drop_to_output_seconds",
            "From the input's last write to its committed output",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_info = Info("artd_model", "The model being served", registry=r)
        self.reloads = Counter(
            "artd_model_reload", "Checkpoint reload attempts", ["result"], registry=r
        )
        self.models_loaded = Gauge(
            "artd_models_loaded", "Models loaded now (bounded by model_memory_mb)", registry=r
        )
        self.loaded_model = Gauge(
            "artd_loaded_model",
            "One series per loaded model (value 1)",
            list(_MODEL_LABELS),
            registry=r,
        )
        self.write_errors = Counter(
            "artd_write_errors", "Output commits that failed (disk full, I/O)", registry=r
        )

    def set_models(self, loaded: list[dict[str, str]]) -> None:
        """Every loaded model as one ``artd_loaded_model`` series."""
        self.loaded_model.clear()
        for model in loaded:
            labels = {
                k: model[k] for k in ("checkpoint", "version", "sha256", "device", "precision")
            }
            self.loaded_model.labels(**labels).set(1)
        self.models_loaded.set(len(loaded))


@dataclass
class Health:
    """What ``/healthz`` reports; written by the pipeline threads, read by the HTTP thread."""

    model_version: str = ""
    started_at: float = field(default_factory=time.time)
    last_success: float | None = None
    engine_busy_since: float | None = None
    paused_reason: str | None = None
    reload_error: str | None = None
    folders_problem: str | None = None
    queue: dict[str, int] = field(default_factory=dict)
    models: list[dict[str, str]] = field(default_factory=list)  # every loaded model
    model_errors: dict[str, str] = field(default_factory=dict)  # refused reloads, by checkpoint
    stuck_after_s: float = 120.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, **changes: object) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self, key, value)

    def problems(self) -> list[str]:
        """Reasons the service cannot do its job right now (-> 503)."""
        with self._lock:
            found = []
            busy = self.engine_busy_since
            if busy is not None and time.monotonic() - busy > self.stuck_after_s:
                found.append(f"engine stuck for {time.monotonic() - busy:.0f}s")
            if self.folders_problem:
                found.append(self.folders_problem)
            if self.paused_reason:
                found.append(f"intake paused: {self.paused_reason}")
            return found

    def report(self) -> dict[str, object]:
        problems = self.problems()
        with self._lock:
            return {
                "status": "ok" if not problems else "failing",
                "problems": problems,
                "model": self.model_version,
                "model_reload_error": self.reload_error,
                "models": list(self.models),
                "model_errors": dict(self.model_errors),
                "queue": dict(self.queue),
                "last_success": self.last_success,
                "uptime_s": round(time.time() - self.started_at, 1),
            }
