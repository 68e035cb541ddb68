"""What callers of a model worker see, whatever kind of worker it is: the :class:`ModelWorker`
interface, what it takes (:class:`EngineOptions`) and gives back (:class:`ModelInfo`,
:class:`ResultPixels`, :class:`WorkerHealth`, :class:`BatchTiming`), and its two exceptions
(:class:`WorkerDied`, :class:`WorkerUnavailable`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from core.checkpoint import ModelIdentity
from core.diffusion.sampler_settings import SamplerRequest, SamplerSettings
from core.outputs.settings import OutputSettings
from core.runtime.errors import InferenceError

if TYPE_CHECKING:
    from core.runtime.engine import Engine

STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class EngineOptions:
    """``core.runtime.engine.Engine``'s keyword arguments (daemon.settings.model has them)."""

    device: str = "auto"
    precision: str = "auto"
    max_batch: int | None = None
    cpu_threads: int | None = None
    compile: bool = False


@dataclass(frozen=True)
class ModelInfo:
    """The model a worker serves: what the service needs to batch for it and to write each
    output's provenance without loading the weights itself."""

    path: Path
    identity: ModelIdentity  # what each output's provenance records
    device: str
    precision: str
    max_batch: int
    recommended: SamplerSettings | None  # None: a one-pass checkpoint (no sampler settings)
    weights_bytes: int = 0  # what the loaded weights take (daemon.model_cache's budget)

    @property
    def version(self) -> str:
        return self.identity.version

    @property
    def sha256(self) -> str:
        return self.identity.sha256

    @property
    def objective(self) -> str:
        return self.identity.objective

    @property
    def epoch(self) -> int | None:
        return self.identity.epoch

    def sampler_settings(self, request: SamplerRequest | None = None) -> SamplerSettings | None:
        """The effective settings, as ``Engine.sampler_settings`` resolves them."""
        if self.recommended is None:
            return None
        return (request or SamplerRequest()).resolve(self.recommended)


@dataclass(frozen=True)
class WorkerHealth:
    """For /healthz, /metrics and the page. ``error``: why the worker is not serving (it
    never came up, or its last restart failed), or the model a hot reload refused while the
    old one serves on."""

    alive: bool
    busy: bool
    model_version: str | None
    restarts: int
    heartbeat_age_s: float | None  # None while no process runs
    pid: int | None = None
    device: str | None = None
    precision: str | None = None
    error: str | None = None
    # A pool of model actors (daemon.workers.ray_pool): those serving now, those with a
    # batch in them, and those lost with their node or process so far (None: not a pool).
    actors: int | None = None
    busy_actors: int | None = None
    lost: int = 0


@dataclass(frozen=True)
class ResultPixels:
    """One result: HWC uint8 RGB, or RGBA with the model's own composited RGB beside it."""

    pixels: np.ndarray
    composited: np.ndarray | None = None

    def image(self) -> Image.Image:
        """The image ``Inference.run`` gave in the worker (mode, and ``info["composited"]``
        for RGBA), ready for ``Inference.encode``."""
        image = Image.fromarray(self.pixels)
        if self.composited is not None:
            image.info["composited"] = Image.fromarray(self.composited)
        return image


WorkerResult = ResultPixels | InferenceError


@dataclass(frozen=True)
class BatchTiming:
    """The last batch: wall time through the worker, and the model's share of it (the time
    ``Inference.run`` took in the child); the rest is what the worker costs."""

    total_s: float
    model_s: float

    @property
    def overhead_s(self) -> float:
        return self.total_s - self.model_s


class WorkerDied(Exception):
    """The worker died with this batch in it; no result came back. ``kind``: ``signal``,
    ``exit``, ``heartbeat`` (missed its bound: killed), ``timeout`` (the batch ran past its
    bound: killed) or ``lost`` (a remote actor went with its process or its node, as Ray
    reports it). The next call restarts it (a pool has already started a replacement);
    :class:`CrashLedger` says what to retry."""

    def __init__(
        self,
        cause: str,
        *,
        kind: Literal["signal", "exit", "heartbeat", "timeout", "lost"],
        signal: int | None = None,
        exitcode: int | None = None,
    ) -> None:
        super().__init__(cause)
        self.cause = cause
        self.kind = kind
        self.signal = signal
        self.exitcode = exitcode


class WorkerUnavailable(Exception):
    """No worker can serve (it cannot load its checkpoint, cannot start, or was stopped): the
    host's or the model's problem, never a file's. Keep the batch and try later. ``refused``:
    the checkpoint itself was refused by the loader or the probe (a bad file, or no memory or
    device for it), not the process (it could not start, died or ran out of time loading)."""

    def __init__(self, reason: str, *, refused: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refused = refused


def checked_batch(
    batch: Sequence[np.ndarray], sha256s: Sequence[str], output: OutputSettings | None
) -> tuple[list[np.ndarray], OutputSettings]:
    """What a worker sends its model: the images (HWC uint8, 3 or 4 channels, one shape; a
    ValueError otherwise, or for a hash count that differs) and the output settings the model
    reads (the signing key stays in the service, and a job's subclass travels as the plain
    settings). An empty batch gives no images."""
    items = [np.asarray(item) for item in batch]
    if len(sha256s) != len(items):
        raise ValueError(f"{len(sha256s)} hashes for {len(items)} images")
    if not items:
        return [], output or OutputSettings()
    shape = items[0].shape
    if len(shape) != 3 or shape[2] not in (3, 4):
        raise ValueError(f"expected HWC images with 3 or 4 channels, got {shape}")
    for item in items:
        if item.shape != shape or item.dtype != np.uint8:
            raise ValueError(f"a batch is uint8 images of one shape: {item.shape} {item.dtype}")
    output = output or OutputSettings(max(shape[:2]))
    if output.credentials is not None or type(output) is not OutputSettings:
        fields = {f.name: getattr(output, f.name) for f in dataclasses.fields(OutputSettings)}
        output = OutputSettings(**(fields | {"credentials": None}))
    return items, output


def model_info(engine: Engine, path: Path) -> ModelInfo:
    """What a worker reports of ``engine``, loaded from ``path``."""
    tensors = engine.checkpoint.state_dict.values()
    return ModelInfo(
        path=Path(path),
        identity=engine.checkpoint.identity,
        device=str(engine.device),
        precision=engine.precision,
        max_batch=engine.max_batch,
        recommended=engine.sampler_settings(),
        # The checkpoint's tensors and about as much again for the folded copies.
        weights_bytes=2 * sum(t.numel() * t.element_size() for t in tensors),
    )


@runtime_checkable
class ModelWorker(Protocol):
    """What the pipeline needs of a worker, local process or remote actor alike."""

    @property
    def model(self) -> ModelInfo | None:
        """The model served now (None before a start). A restart reloads the checkpoint
        from its path, which may hold a newer file by then: read it after each run()."""
        ...

    def start(self, checkpoint: Path, options: EngineOptions | None = None) -> ModelInfo:
        """Load ``checkpoint`` (a running worker switches to it only if it loads and passes
        the probe; otherwise the old model serves on). Raises WorkerUnavailable."""
        ...

    def run(
        self,
        batch: Sequence[np.ndarray],
        sha256s: Sequence[str],
        request: SamplerRequest | None,
        output: OutputSettings,
    ) -> list[WorkerResult]:
        """One result or InferenceError per HWC uint8 image of one shape, in order. Raises
        WorkerDied (the batch was in a worker that died) or WorkerUnavailable."""
        ...

    def health(self) -> WorkerHealth:
        """Never blocks on a batch in progress."""
        ...

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Let the batch in progress finish within ``timeout_s``, then end the worker and
        everything it holds."""
        ...
