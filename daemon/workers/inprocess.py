"""A :class:`ModelWorker` over an engine in this very process: :class:`InProcessWorker`.

No isolation: a crash in the model is this process's own death. It is what callers that
already hold an :class:`~core.runtime.engine.Engine` get (``daemon.oneshot.process`` called
with one: the tests, the benchmarks' in-process baseline), so that they go through the same
calls, results and retries as a :class:`~daemon.workers.local.LocalModelWorker`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from core.diffusion.sampler_settings import SamplerRequest
from core.outputs.settings import OutputSettings
from core.runtime.engine import Engine
from core.runtime.errors import InferenceError
from core.runtime.img2img import Inference
from daemon.workers.child import probe
from daemon.workers.interface import (
    STOP_TIMEOUT_S,
    BatchTiming,
    EngineOptions,
    ModelInfo,
    ResultPixels,
    WorkerHealth,
    WorkerResult,
    WorkerUnavailable,
    model_info,
)


class InProcessWorker:
    """An engine of this process behind the :class:`ModelWorker` calls (module docstring)."""

    def __init__(self, engine: Engine | None = None, name: str = "in-process") -> None:
        self.name = name
        self.last_timing: BatchTiming | None = None
        self._lock = threading.Lock()
        self._busy = False
        self._stopped = False
        self._engine = engine
        self._model = None if engine is None else model_info(engine, engine.checkpoint.path)

    @property
    def model(self) -> ModelInfo | None:
        return self._model

    @property
    def engine(self) -> Engine | None:
        return self._engine

    def start(self, checkpoint: Path, options: EngineOptions | None = None) -> ModelInfo:
        options = options or EngineOptions()
        try:
            engine = Engine.from_path(checkpoint, **dataclasses.asdict(options))
            probe(engine)
        except Exception as exc:  # a bad file, out of memory, no device: the old one serves on
            raise WorkerUnavailable(f"{type(exc).__name__}: {exc}"[:500], refused=True) from exc
        with self._lock:
            self._engine, self._model = engine, model_info(engine, Path(checkpoint))
            self._stopped = False
            return self._model

    def run(
        self,
        batch: Sequence[np.ndarray],
        sha256s: Sequence[str],
        request: SamplerRequest | None = None,
        output: OutputSettings | None = None,
    ) -> list[WorkerResult]:
        engine = self._engine
        if self._stopped or engine is None:
            raise WorkerUnavailable("the model worker was stopped or never started")
        if not batch:
            return []
        output = output or OutputSettings(max(np.shape(batch[0])[:2]))
        started = time.perf_counter()
        self._busy = True
        try:
            results = Inference(engine, output, request).run(batch, sha256s)
        finally:
            self._busy = False
        elapsed = time.perf_counter() - started
        self.last_timing = BatchTiming(elapsed, elapsed)
        return [_pixels(result) for result in results]

    def health(self) -> WorkerHealth:
        model = self._model
        return WorkerHealth(
            alive=not self._stopped and self._engine is not None,
            busy=self._busy,
            model_version=model.version if model else None,
            restarts=0,
            heartbeat_age_s=None,
            device=model.device if model else None,
            precision=model.precision if model else None,
        )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        self._stopped = True
        self._engine = None


def _pixels(result: Image.Image | InferenceError) -> WorkerResult:
    if isinstance(result, InferenceError):
        return result
    composited = result.info.get("composited")
    return ResultPixels(np.asarray(result), None if composited is None else np.asarray(composited))
