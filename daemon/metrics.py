"""Prometheus metrics and the health state behind ``/healthz``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric

_MODEL_LABELS = ("checkpoint", "version", "sha256", "device", "precision")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
# The service's stages, each timed where it runs (docs/operations.md "Where the time goes"):
# per file, claim (rename into work/, its record, the sidecar look-up and the settings fixed),
# decode (waiting on a decoder process), encode (colour management, labels, the format's
# encoder) and commit (write, fsync, rename, archive). The model's share is artd_batch_seconds
# (per batch, the worker's IPC included).
STAGES = ("claim", "decode", "encode", "commit")


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
        self.worker_restarts = Counter(
            "artd_worker_restarts", "Model worker restarts (after a death)", registry=r
        )
        self.worker_deaths = Counter(
            "artd_worker_deaths",
            "Model worker deaths with a batch in them, by kind (signal, exit, heartbeat, timeout)",
            ["kind"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "artd_stage_seconds",
            "Seconds per file in each stage of the service (claim, decode, encode, commit)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)
        self.workers = WorkerGauges()
        r.register(self.workers)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Observe the block's wall time as ``artd_stage_seconds{stage}`` (also when it raises)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.labels(stage=stage).observe(time.perf_counter() - started)

    def set_models(self, loaded: list[dict[str, str]]) -> None:
        """Every loaded model as one ``artd_loaded_model`` series."""
        self.loaded_model.clear()
        for model in loaded:
            labels = {
                k: model[k] for k in ("checkpoint", "version", "sha256", "device", "precision")
            }
            self.loaded_model.labels(**labels).set(1)
        self.models_loaded.set(len(loaded))


Workers = Callable[[], list[dict[str, Any]]]


class WorkerGauges:
    """``artd_worker_up`` and ``artd_worker_busy``, one series per model worker, and for a
    pool of Ray actors ``artd_worker_actors``, ``artd_worker_actors_busy`` and
    ``artd_worker_actors_lost``, read from the workers themselves at each scrape (``source``:
    daemon.model_cache.ModelCache.workers)."""

    def __init__(self) -> None:
        self.source: Workers = list

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        up, busy, actors, actors_busy, lost = families = self._families()
        for worker in self.source():
            label = [worker["checkpoint"]]
            up.add_metric(label, 1.0 if worker["alive"] else 0.0)
            busy.add_metric(label, 1.0 if worker["busy"] else 0.0)
            if worker.get("actors") is not None:  # a pool of model actors on a Ray cluster
                actors.add_metric(label, float(worker["actors"]))
                actors_busy.add_metric(label, float(worker["busy_actors"] or 0))
                lost.add_metric(label, float(worker["lost"] or 0))
        return iter(families)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        def gauge(name: str, text: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=["checkpoint"])

        return (
            gauge("artd_worker_up", "1 while the model worker's process runs"),
            gauge("artd_worker_busy", "1 while the model worker has a batch"),
            gauge("artd_worker_actors", "Model actors serving on the Ray cluster"),
            gauge("artd_worker_actors_busy", "Model actors with a batch"),
            gauge("artd_worker_actors_lost", "Model actors lost (their node or process) so far"),
        )


@dataclass
class Health:
    """What ``/healthz`` reports; written by the pipeline threads, read by the HTTP thread."""

    model_version: str = ""
    started_at: float = field(default_factory=time.time)
    last_success: float | None = None
    paused_reason: str | None = None
    reload_error: str | None = None
    folders_problem: str | None = None
    # Why files wait for a model worker that cannot serve (it cannot start or load); None
    # while every worker in use serves.
    worker_problem: str | None = None
    workers: Workers = list  # every model worker, as ModelCache.workers lists them
    queue: dict[str, int] = field(default_factory=dict)
    models: list[dict[str, str]] = field(default_factory=list)  # every loaded model
    model_errors: dict[str, str] = field(default_factory=dict)  # refused reloads, by checkpoint
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, **changes: object) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self, key, value)

    def problems(self) -> list[str]:
        """Reasons the service cannot do its job right now (-> 503)."""
        with self._lock:
            found = []
            if self.folders_problem:
                found.append(self.folders_problem)
            if self.paused_reason:
                found.append(f"intake paused: {self.paused_reason}")
            if self.worker_problem:
                found.append(f"no model worker serves (intake paused): {self.worker_problem}")
            return found

    def report(self) -> dict[str, object]:
        problems = self.problems()
        workers = self.workers()
        with self._lock:
            return {
                "status": "ok" if not problems else "failing",
                "problems": problems,
                "model": self.model_version,
                "model_reload_error": self.reload_error,
                "models": list(self.models),
                "model_errors": dict(self.model_errors),
                "workers": workers,
                "queue": dict(self.queue),
                "last_success": self.last_success,
                "uptime_s": round(time.time() - self.started_at, 1),
            }
