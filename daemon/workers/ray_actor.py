"""The model on a Ray node: :class:`ModelActor`, one model served by one actor of a
:class:`~daemon.workers.ray_pool.RayWorkerPool`.

A plain class: the pool makes it remote (``ray.remote(...)(ModelActor)``), so importing this
module never needs Ray. Constructing it holds nothing; :meth:`ModelActor.load` gets the
checkpoint's *bytes* (read by the service, passed through Ray's object store, so a node that
cannot see the service's disk loads it all the same), writes them to the node's checkpoint
cache (daemon.workers.node_cache) under the checkpoint's own name (its version reads the same
everywhere) and loads it the way
an :class:`~daemon.workers.inprocess.InProcessWorker` does: ``Engine.from_path`` and the probe.

A hot reload is a transaction across the pool's actors: :meth:`~ModelActor.stage` loads the
new model beside the one serving, :meth:`~ModelActor.commit` switches to it,
:meth:`~ModelActor.abort` drops it. Ray runs one call at a time per actor, so a switch never
lands in the middle of a batch.

What crosses Ray is plain data (tuples, numpy arrays, the interface's dataclasses): an
:class:`~core.runtime.errors.InferenceError` does not pickle back (its constructor takes two
arguments), and a refusal is an answer, not an exception for Ray to wrap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from core.diffusion.sampler_settings import SamplerRequest
from core.outputs.settings import OutputSettings
from core.reasons import Reason
from core.runtime.errors import InferenceError
from daemon.workers.inprocess import InProcessWorker
from daemon.workers.interface import (
    EngineOptions,
    ModelInfo,
    ResultPixels,
    WorkerResult,
    WorkerUnavailable,
)
from daemon.workers.node_cache import node_checkpoint

# One answer per image: ("pixels", HWC uint8, composited or None) | ("error", reason, message).
Answer = tuple[str, Any, Any]
# A load's or a stage's answer: ("loaded" | "staged", ModelInfo), ("refused", reason): the
# checkpoint was refused, or ("failed", reason): this node could not try it.
LoadAnswer = tuple[str, Any]


class ModelActor:
    """One model in one Ray actor (module docstring). Not thread-safe: Ray runs its calls
    one at a time (the actor's default ``max_concurrency`` of 1)."""

    def __init__(self) -> None:
        self._worker: InProcessWorker | None = None
        self._staged: InProcessWorker | None = None

    def load(self, data: bytes, label: str, options: EngineOptions) -> LoadAnswer:
        """Load the checkpoint ``data`` (the service's file ``label``) and serve it at once."""
        answer = self.stage(data, label, options)
        if answer[0] != "staged":
            return answer
        return ("loaded", self.commit())

    def stage(self, data: bytes, label: str, options: EngineOptions) -> LoadAnswer:
        """Load ``data`` beside the model serving (which serves on until :meth:`commit`)."""
        self._staged = None
        label_path = Path(label)
        try:
            path = node_checkpoint(label_path.name, hashlib.sha256(data).hexdigest(), lambda: data)
        except OSError as exc:  # this node's disk, not the checkpoint
            return ("failed", f"cannot write the checkpoint on this node: {exc}")
        worker = InProcessWorker(name=f"ray-actor:{label_path.name}")
        try:
            info = worker.start(path, options)
        except WorkerUnavailable as exc:
            # Name the service's file, not this node's copy.
            reason = exc.reason.replace(str(path), label)
            logger.error("model actor cannot load {}: {}", label, reason)
            return ("refused", reason)
        self._staged = worker
        return ("staged", dataclasses.replace(info, path=label_path))

    def commit(self) -> ModelInfo:
        """Serve the staged model, dropping the old one."""
        staged, self._staged = self._staged, None
        if staged is None or staged.model is None:
            raise RuntimeError("commit() without a staged model")
        old, self._worker = self._worker, staged
        if old is not None:
            from daemon import memory

            del old
            memory.release("a model switch in a model actor")
        return staged.model

    def abort(self) -> None:
        """Drop the staged model; the one serving serves on."""
        self._staged = None

    def run(
        self,
        batch: Sequence[np.ndarray],
        sha256s: Sequence[str],
        request: SamplerRequest | None,
        output: OutputSettings,
    ) -> tuple[str | None, list[Answer], float]:
        """The batch through the model serving: (its checkpoint's sha256, one answer per
        image, the model's seconds). A failure of the whole batch answers every image with
        it (as a local worker's child does), never an exception for Ray to carry."""
        worker = self._worker
        model = None if worker is None else worker.model
        if worker is None or model is None:
            failed = ("error", str(Reason.MODEL_FAILED), "the model actor has no model loaded")
            return None, [failed] * len(batch), 0.0
        started = time.perf_counter()
        try:
            results = worker.run(list(batch), list(sha256s), request, output)
        except Exception as exc:  # a bug here must cost the batch's answers, not the actor
            logger.exception("model actor failed on a batch")
            text = f"{type(exc).__name__}: {exc}"[:300]
            return model.sha256, [("error", str(Reason.MODEL_FAILED), text)] * len(batch), 0.0
        return model.sha256, [answer(result) for result in results], time.perf_counter() - started

    def ping(self) -> bool:
        """Alive and taking calls."""
        return True

    def node_id(self) -> str:
        """The Ray node this actor runs on (hex)."""
        import ray

        return str(ray.get_runtime_context().get_node_id())


def answer(result: WorkerResult) -> Answer:
    """The actor's side: one result as plain data."""
    if isinstance(result, InferenceError):
        return ("error", str(result.reason), result.message)
    return ("pixels", result.pixels, result.composited)


def results(answers: Sequence[Answer]) -> list[WorkerResult]:
    """The service's side: each answer's result, its pixels copied out of the object store's
    read-only buffer (which stays pinned while a view of it lives)."""
    out: list[WorkerResult] = []
    for kind, first, second in answers:
        if kind == "error":
            out.append(InferenceError(Reason(first), second))
        else:
            composited = None if second is None else np.array(second)
            out.append(ResultPixels(np.array(first), composited))
    return out
