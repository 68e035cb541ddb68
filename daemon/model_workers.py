"""Model workers: the network in a supervised process of its own, so that its death (a crash,
the OOM killer, an operator's ``kill -9``, a hang) is seen by the service, which lives on and
charges a file only by the rule of :class:`CrashLedger`. Not wired into the pipeline yet
(docs/spool.md, "Model workers (not yet wired)").

Every kind of worker has the same four-call shape (:class:`ModelWorker`, as rq's and huey's
workers all boot, loop and stop alike): ``start`` with a checkpoint, ``run`` a batch, report
``health``, ``stop``. :class:`LocalModelWorker` is one child process on this host; another kind
(a Ray actor) can stand in for it behind the same calls and exceptions.

**The child.** Started with the ``spawn`` method: a fresh interpreter that inherits no thread,
lock or CUDA context of the service (CUDA cannot be forked), and that leaves the decoders'
forkserver and its preload list alone. (Spawn imports the service's main module again as
``__mp_main__``, so that module must keep its work under ``if __name__ == "__main__"``, as
artd's entry points do.) It loads the checkpoint with
``core.runtime.engine.Engine`` (the precision probe runs there, and the OOM back-off and NaN
retry stay inside ``Engine.run``), checks it with ``daemon.reload.probe`` and answers each
batch with ``core.runtime.img2img.Inference.run``, returning pixels (encoding stays in the
service). It ignores SIGINT (the terminal's Ctrl-C is the service's to handle); on SIGTERM it
exits at once when idle, and otherwise finishes the batch in hand, answers it, then exits, so a
plain ``kill`` of a worker, or systemd stopping the whole unit, charges no file (and the
service's drain still gets its last batch). It exits by itself within
:data:`HEARTBEAT_INTERVAL_S` when the service dies, even mid-batch.

**Shared memory** (``multiprocessing.shared_memory``, POSIX segments named
``artd-mw-<service pid>-<worker>-<kind>-<token>`` under /dev/shm, all created, grown and
unlinked by the service; the child only attaches):

- ``beat`` (64 bytes): at 0, a float64 ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for
  every process) the child's heartbeat thread writes every :data:`HEARTBEAT_INTERVAL_S`,
  busy or not (the network releases the GIL, so a long batch keeps beating); at 8, an int64:
  the number of the batch the child has taken (set before anything else is done with it, back
  to 0 before its answer is sent). A death with the batch's number there had the batch in it
  (:class:`WorkerDied`); a death before it was taken, or after it was answered, is not the
  batch's: the worker is restarted and the batch sent again, once.
- ``in``: the batch as one C-contiguous ``(N, H, W, C)`` uint8 array. The service copies each
  image into it: the one copy in. The child hands ``Inference.run`` views of it, whose
  ``np.stack`` is the copy the in-process path makes too.
- ``out``: the results, packed one after the other: each image's HWC uint8 pixels and, for an
  RGBA result, the model's own composited RGB (what a JPEG is made of). The child writes each
  result there (after ``np.asarray(image)``, the conversion from PIL's own pixel layout that any
  caller of ``Inference.run`` wanting an array pays); the service copies each out, the one copy
  out, so the segment can take the next batch while the results are encoded. A result that does
  not fit (never, while outputs are the inputs' size) comes pickled over the pipe instead.

Segments grow (to the next power of two, at least 1 MiB) when a batch needs more and are
reused otherwise; :meth:`LocalModelWorker.stop` unlinks them. A service killed with
``kill -9`` leaves none behind either: multiprocessing's resource tracker, a process of its
own, unlinks what the service registered once the service and its children are gone.

**Control** travels over a duplex Pipe as small pickled tuples: ``("load", path, options)``
-> ``("loaded", info)`` | ``("refused", reason)``; ``("run", number, segments, shape,
sha256s, request, output)`` -> ``("done", number, results, model seconds)``; ``("stop",)``.

**Bounds.** The service waits on the pipe and the child's process sentinel together, so an
exit or a signal is seen at once; a child whose heartbeat is older than
``heartbeat_timeout_s`` while a batch waits on it (stopped, deadlocked) or whose batch runs past
``batch_timeout_s`` (a hang that still beats) is SIGKILLed; each is a :class:`WorkerDied`,
with its cause. Loading is bounded by ``start_timeout_s`` alone (imports and CUDA set-up may
hold the GIL for seconds); a worker that cannot load (a bad checkpoint, out of memory, no
device) or dies while loading raises :class:`WorkerUnavailable` with the reason and keeps no
process. A dead worker is restarted with its checkpoint on the next call (``health().restarts``).

Test hook, inert in production: when the environment holds ``_ARTD_WORKER_POISON=<sha256>``
as the child starts (docs/reliability.md's ``_ARTD_POISON_SHA256`` does the same to the whole
service), the child SIGKILLs itself on any batch with that input hash in it. The name does not
start with ``ARTD_``, so the daemon's settings never see it; only the child reads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import secrets
import signal
import struct
import threading
import time
import weakref
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import get_context, shared_memory
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
from loguru import logger
from PIL import Image

from core.diffusion.sampler_settings import SamplerRequest, SamplerSettings
from core.outputs.settings import OutputSettings
from core.reasons import Reason
from core.runtime.errors import InferenceError

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

POISON_ENV = "_ARTD_WORKER_POISON"  # test-only (module docstring)
SEGMENT_PREFIX = "artd-mw-"
HEARTBEAT_INTERVAL_S = 0.5
HEARTBEAT_TIMEOUT_S = 30.0  # sixty missed beats: stopped or deadlocked, not slow
BATCH_TIMEOUT_S = 120.0  # the daemon's stuck_seconds default: a hang that still beats
START_TIMEOUT_S = 300.0  # imports, CUDA set-up, the precision probe, torch.compile
STOP_TIMEOUT_S = 10.0
SOLO_CRASH_LIMIT = 3  # CrashLedger: consecutive solo crashes that quarantine a file
_POLL_S = 0.1  # how often a wait looks at the heartbeat; replies wake it at once
_MIN_SEGMENT = 1 << 20
_BEAT = struct.Struct("=dq")  # heartbeat time, number of the batch held

_worker_ids = itertools.count(1)


# --- what callers see ------------------------------------------------------------------------


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
    version: str
    sha256: str
    objective: str
    epoch: int | None
    device: str
    precision: str
    max_batch: int
    recommended: SamplerSettings | None  # None: a one-pass checkpoint (no sampler settings)

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
    ``exit``, ``heartbeat`` (missed its bound: killed) or ``timeout`` (the batch ran past its
    bound: killed). The next call restarts it; :class:`CrashLedger` says what to retry."""

    def __init__(
        self,
        cause: str,
        *,
        kind: Literal["signal", "exit", "heartbeat", "timeout"],
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
    host's or the model's problem, never a file's. Keep the batch and try later."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@runtime_checkable
class ModelWorker(Protocol):
    """What the pipeline needs of a worker, local process or remote actor alike."""

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


# --- the crash-charging rule -----------------------------------------------------------------

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class CrashVerdict(Generic[K]):
    """What to do with the files of a batch whose worker died: ``retry`` these batches (in
    order), quarantine ``quarantine`` as ``crashed_repeatedly``; ``charged`` got a solo crash."""

    retry: list[list[K]] = field(default_factory=list)
    quarantine: list[K] = field(default_factory=list)
    charged: list[K] = field(default_factory=list)


class CrashLedger(Generic[K]):
    """Which file a dead worker is charged to, in memory, keyed by claim (any hashable key).

    - A batch of two or more whose worker died is retried as its two halves (down to single
      files); none of its files is charged.
    - A file is charged a *solo crash* only when it was alone in a worker that died **and**
      it had been in a worker that died before (it was already a suspect): a file that
      happened to be alone at its first death (a quiet inbox) is not charged for it.
    - A file is quarantined after ``limit`` (:data:`SOLO_CRASH_LIMIT`, 3) *consecutive* solo
      crashes: each counted death had it alone, and nothing of it succeeded in between.
    - Any answer from the worker for a file (an image or its own InferenceError) clears it.

    So a poison is set aside after at most ``max(1, ceil(log2(batch))) + limit`` worker deaths
    (4 alone, 8 in a batch of 32) while its batch-mates come out. An operator's ``kill -9``
    cannot charge a file it did not kill twice, the second time alone, nor quarantine one with
    fewer than ``max(1, ceil(log2(batch))) + limit`` kills, each landing while that file's
    shrinking share of its batch was in the worker. A plain ``kill`` (SIGTERM) never charges:
    the worker answers its batch first. The service's own death charges nothing: the ledger
    lives in its memory and starts empty."""

    def __init__(self, limit: int = SOLO_CRASH_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self._deaths: dict[K, int] = {}
        self._solo: dict[K, int] = {}

    def died(self, batch: Sequence[K]) -> CrashVerdict[K]:
        """The worker died with ``batch`` in it (:class:`WorkerDied`)."""
        if not batch:
            raise ValueError("a worker cannot die of an empty batch")
        suspects = {key: self._deaths.get(key, 0) > 0 for key in batch}
        for key in batch:
            self._deaths[key] = self._deaths.get(key, 0) + 1
        if len(batch) > 1:
            half = len(batch) // 2
            return CrashVerdict(retry=[list(batch[:half]), list(batch[half:])])
        key = batch[0]
        if not suspects[key]:
            return CrashVerdict(retry=[[key]])
        self._solo[key] = self._solo.get(key, 0) + 1
        if self._solo[key] >= self.limit:
            self.forget([key])
            return CrashVerdict(quarantine=[key], charged=[key])
        return CrashVerdict(retry=[[key]], charged=[key])

    def succeeded(self, keys: Iterable[K]) -> None:
        """The worker answered for these files (result or per-item error): counts cleared."""
        self.forget(keys)

    def forget(self, keys: Iterable[K]) -> None:
        """These files left the pipeline otherwise (quarantined, released, stopping)."""
        for key in keys:
            self._deaths.pop(key, None)
            self._solo.pop(key, None)

    def solo_crashes(self, key: K) -> int:
        return self._solo.get(key, 0)

    def deaths(self, key: K) -> int:
        return self._deaths.get(key, 0)

    def __len__(self) -> int:
        return len(self._deaths)


# --- the service's side ----------------------------------------------------------------------


class _Died(Exception):
    def __init__(self, error: WorkerDied) -> None:
        super().__init__(error.cause)
        self.error = error


@dataclass
class _Resources:
    """What a worker holds that must go when it does (shared with its finalizer)."""

    process: BaseProcess | None = None
    conn: Connection | None = None
    segments: dict[str, shared_memory.SharedMemory] = field(default_factory=dict)

    def end_process(self, timeout_s: float = 2.0) -> None:
        process, conn = self.process, self.conn
        self.process, self.conn = None, None
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join(timeout_s)
            with contextlib.suppress(ValueError):
                process.close()
        if conn is not None:
            conn.close()

    def release(self) -> None:
        self.end_process()
        for segment in self.segments.values():
            _drop_segment(segment)
        self.segments.clear()


def _drop_segment(segment: shared_memory.SharedMemory) -> None:
    with contextlib.suppress(BufferError):  # a view still held: the mapping dies with us
        segment.close()
    with contextlib.suppress(FileNotFoundError):
        segment.unlink()


class LocalModelWorker:
    """One supervised child process serving one model (module docstring). Thread-safe: one
    call at a time runs (the pipeline's engine thread); :meth:`health` never waits for it.
    The timeouts are attributes and may be changed between calls."""

    def __init__(
        self,
        name: str = "model",
        *,
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
        batch_timeout_s: float = BATCH_TIMEOUT_S,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.batch_timeout_s = batch_timeout_s
        self.start_timeout_s = start_timeout_s
        self.last_timing: BatchTiming | None = None
        self._id = f"{os.getpid()}-{next(_worker_ids)}"
        self._ctx = get_context("spawn")
        self._call = threading.Lock()  # start / run / stop, one at a time
        self._lock = threading.Lock()  # the state health() reads
        self._res = _Resources()
        self._finalizer = weakref.finalize(self, _Resources.release, self._res)
        self._checkpoint: Path | None = None
        self._options = EngineOptions()
        self._model: ModelInfo | None = None
        self._pid: int | None = None
        self._busy = False
        self._restarts = 0
        self._loads = 0
        self._error: str | None = None
        self._stopped = False
        self._abort = False  # stop() ran out of patience: waits give up at once
        self._batches = itertools.count(1)

    # -- the interface ---------------------------------------------------------------------

    @property
    def model(self) -> ModelInfo | None:
        """The model served now. Read it after each run(): a restart reloads the checkpoint
        from its path, which may hold a newer file by then."""
        return self._model

    def start(self, checkpoint: Path, options: EngineOptions | None = None) -> ModelInfo:
        options = options or EngineOptions()
        with self._call:
            if self._stopped:
                raise WorkerUnavailable("the model worker was stopped")
            if self._running() and options == self._options:
                return self._switch(Path(checkpoint))
            self._end()
            self._checkpoint, self._options = Path(checkpoint), options
            return self._spawn_and_load(restart=False)

    def run(
        self,
        batch: Sequence[np.ndarray],
        sha256s: Sequence[str],
        request: SamplerRequest | None = None,
        output: OutputSettings | None = None,
    ) -> list[WorkerResult]:
        items = [np.asarray(item) for item in batch]
        if len(sha256s) != len(items):
            raise ValueError(f"{len(sha256s)} hashes for {len(items)} images")
        if not items:
            return []
        shape = _batch_shape(items)
        output = output or OutputSettings(max(shape[:2]))
        if output.credentials is not None:  # the signing key stays in the service
            output = dataclasses.replace(output, credentials=None)
        with self._call:
            if self._stopped:
                raise WorkerUnavailable("the model worker was stopped")
            if self._checkpoint is None:
                raise RuntimeError("start() the model worker before run()")
            with self._busy_flag():
                for attempt in (1, 2):
                    self._ensure_running()
                    number = next(self._batches)
                    started = time.perf_counter()
                    try:
                        reply = self._send_batch(
                            number, items, shape, list(sha256s), request, output
                        )
                    except _Died as death:
                        if self._stopped:
                            raise WorkerUnavailable("the model worker was stopped") from None
                        if self._held() == number:
                            self._log_death(death.error, len(items))
                            raise death.error from None
                        # Died before taking the batch: not its doing. Restart, send it again.
                        logger.warning(
                            "model worker {} died idle ({}); restarting", self.name, death
                        )
                        if attempt == 2:
                            raise WorkerUnavailable(
                                f"the model worker dies before taking a batch: {death}"
                            ) from None
                        continue
                    results, model_s = self._collect(reply, number)
                    self.last_timing = BatchTiming(time.perf_counter() - started, model_s)
                    return results
        raise AssertionError("unreachable")

    def health(self) -> WorkerHealth:
        with self._lock:
            process = self._res.process
            alive = self._pid is not None and not self._stopped and process is not None
            if alive and process is not None:
                with contextlib.suppress(ValueError, OSError):  # exited, not yet reaped?
                    alive = not wait([process.sentinel], timeout=0)
            age = None
            beat = self._res.segments.get("beat")
            if alive and beat is not None:
                stamp, _ = _BEAT.unpack_from(beat.buf, 0)
                age = max(0.0, time.monotonic() - stamp) if stamp else None
            model = self._model
            return WorkerHealth(
                alive=alive,
                busy=self._busy,
                model_version=model.version if model else None,
                restarts=self._restarts,
                heartbeat_age_s=age,
                pid=self._pid,
                device=model.device if model else None,
                precision=model.precision if model else None,
                error=self._error,
            )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        with self._lock:
            self._stopped = True
        if not self._call.acquire(timeout=timeout_s):
            # A batch still running: kill it (its caller gets WorkerUnavailable, not
            # WorkerDied, and reaps the process).
            self._abort = True
            process = self._res.process
            with contextlib.suppress(ValueError, OSError):
                if process is not None:
                    process.kill()
            self._call.acquire()
        try:
            conn = self._res.conn
            if conn is not None and self._running():
                with contextlib.suppress(OSError):
                    conn.send(("stop",))
                process = self._res.process
                if process is not None:
                    process.join(min(timeout_s, 5.0))
            with self._lock:
                self._pid = None
                self._res.release()
            logger.info("model worker {} stopped", self.name)
        finally:
            self._call.release()

    # -- starting, switching, restarting ---------------------------------------------------

    def _end(self) -> None:
        """End the process (if any) and reap it; the segments stay for the next one."""
        with self._lock:
            self._pid = None
        self._res.end_process()

    def _running(self) -> bool:
        process = self._res.process
        return process is not None and process.is_alive()

    def _ensure_running(self) -> None:
        if self._running():
            return
        process = self._res.process
        if process is not None:
            logger.warning(
                "model worker {} (pid {}) found dead ({}); restarting",
                self.name,
                self._pid,
                _exit_cause(process),
            )
        self._spawn_and_load(restart=self._loads > 0)

    def _spawn_and_load(self, *, restart: bool) -> ModelInfo:
        assert self._checkpoint is not None
        self._end()
        with self._lock:
            self._pid = None
            if restart:
                self._restarts += 1
        beat = self._segment("beat", _BEAT.size)
        _BEAT.pack_into(beat.buf, 0, 0.0, 0)
        began = time.monotonic()
        try:
            parent, child = self._ctx.Pipe(duplex=True)
            process = self._ctx.Process(
                target=_child_main,
                args=(child, beat.name, os.getpid()),
                name=f"artd-model-worker-{self.name}",
                daemon=True,
            )
            process.start()
            child.close()
        except OSError as exc:
            raise self._unavailable(f"cannot start a model worker process: {exc}") from exc
        self._res.process, self._res.conn = process, parent
        try:
            parent.send(("load", str(self._checkpoint), self._options))
            reply = self._await(self.start_timeout_s, "loading the model", heartbeat=False)
        except _Died as death:
            self._end()
            raise self._unavailable(
                f"the model worker could not load {self._checkpoint}: {death}"
            ) from None
        if reply[0] != "loaded":
            self._end()
            raise self._unavailable(str(reply[1]))
        before = self._model
        info = ModelInfo(path=self._checkpoint, **reply[1])
        with self._lock:
            self._model, self._pid, self._error = info, process.pid, None
        self._loads += 1
        if restart and before is not None and before.sha256 != info.sha256:
            logger.warning(
                "model worker {} restarted with a different file at {}: {} -> {}",
                self.name,
                self._checkpoint,
                before.version,
                info.version,
            )
        logger.info(
            "model worker {} ready{}: model {} on {} ({}), pid {}, {:.1f}s",
            self.name,
            f" (restart {self._restarts})" if restart else "",
            info.version,
            info.device,
            info.precision,
            process.pid,
            time.monotonic() - began,
        )
        return info

    def _switch(self, checkpoint: Path) -> ModelInfo:
        """Hot reload in the running child: the new model replaces the old only if it loads
        and passes the probe (the old one keeps serving otherwise)."""
        assert self._res.conn is not None
        try:
            self._res.conn.send(("load", str(checkpoint), self._options))
            reply = self._await(self.start_timeout_s, "loading the model", heartbeat=False)
        except (_Died, OSError) as exc:
            self._end()
            reason = f"the model worker could not load {checkpoint}: {exc}"
            raise self._unavailable(reason) from None
        if reply[0] != "loaded":
            message = f"new checkpoint {checkpoint} refused, still serving the old model: "
            with self._lock:
                self._error = message + str(reply[1])
            logger.error(self._error)
            raise WorkerUnavailable(self._error)
        old = self._model
        info = ModelInfo(path=checkpoint, **reply[1])
        self._checkpoint = checkpoint
        with self._lock:
            self._model, self._error = info, None
        logger.info(
            "model worker {} switched: {} -> {}", self.name, old.version if old else None,
            info.version,
        )  # fmt: skip
        return info

    def _unavailable(self, reason: str) -> WorkerUnavailable:
        with self._lock:
            self._error = reason
        logger.error("model worker {} unavailable: {}", self.name, reason)
        return WorkerUnavailable(reason)

    # -- a batch ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _busy_flag(self) -> Iterator[None]:
        with self._lock:
            self._busy = True
        try:
            yield
        finally:
            with self._lock:
                self._busy = False

    def _send_batch(
        self,
        number: int,
        items: list[np.ndarray],
        shape: tuple[int, ...],
        sha256s: list[str],
        request: SamplerRequest | None,
        output: OutputSettings,
    ) -> tuple[Any, ...]:
        count = len(items)
        size = count * int(np.prod(shape))
        # Outputs are the inputs' size: RGB, or RGBA with its composited RGB (3 + 4 bytes).
        out_size = count * shape[0] * shape[1] * (3 if shape[2] == 3 else 7)
        inp, out = self._segment("in", size), self._segment("out", out_size)
        view = np.ndarray((count, *shape), np.uint8, buffer=inp.buf)
        for index, item in enumerate(items):
            view[index] = item  # the one copy in
        del view
        message = ("run", number, inp.name, out.name, out.size, shape, sha256s, request, output)
        assert self._res.conn is not None
        try:
            self._res.conn.send(message)
        except OSError as exc:
            raise _Died(self._death(exc)) from exc
        reply = self._await(self.batch_timeout_s, "the batch", heartbeat=True)
        if reply[0] != "done" or reply[1] != number:
            raise RuntimeError(f"model worker {self.name}: unexpected reply {reply[0]!r}")
        return reply

    def _collect(self, reply: tuple[Any, ...], number: int) -> tuple[list[WorkerResult], float]:
        _, _, answers, model_s = reply
        out = self._res.segments["out"]
        results: list[WorkerResult] = []
        for answer in answers:
            if answer[0] == "error":
                results.append(InferenceError(Reason(answer[1]), answer[2]))
            elif answer[0] == "inline":
                results.append(ResultPixels(answer[1], answer[2]))
            else:
                _, offset, pixel_shape, comp_offset, comp_shape = answer
                pixels = _copy_out(out, offset, pixel_shape)  # the one copy out
                composited = None
                if comp_offset is not None:
                    composited = _copy_out(out, comp_offset, comp_shape)
                results.append(ResultPixels(pixels, composited))
        return results, float(model_s)

    def _held(self) -> int:
        """The number of the batch the child last took (0: none)."""
        beat = self._res.segments.get("beat")
        return 0 if beat is None else _BEAT.unpack_from(beat.buf, 0)[1]

    def _log_death(self, error: WorkerDied, files: int) -> None:
        with self._lock:
            self._error = f"died with {files} file(s) in it: {error.cause}; restarts on next use"
        logger.error(
            "model worker {} (pid {}) died with {} file(s) in it: {}",
            self.name,
            self._pid,
            files,
            error.cause,
        )

    # -- waiting, with bounds --------------------------------------------------------------

    def _await(self, bound_s: float, what: str, *, heartbeat: bool) -> tuple[Any, ...]:
        """The child's next message; _Died when it exits, misses its heartbeat or runs past
        ``bound_s``. A reply already in the pipe wins over a death after it."""
        conn, process = self._res.conn, self._res.process
        assert conn is not None and process is not None
        began = time.monotonic()
        while True:
            ready = wait([conn, process.sentinel], timeout=_POLL_S)
            if self._abort:
                self._end()
                raise WorkerUnavailable("the model worker was stopped")
            if conn in ready or conn.poll():
                try:
                    return conn.recv()
                except (EOFError, OSError) as exc:
                    raise _Died(self._death(exc)) from exc
            if process.sentinel in ready:
                raise _Died(self._death(None))
            now = time.monotonic()
            if heartbeat:
                stamp = _BEAT.unpack_from(self._res.segments["beat"].buf, 0)[0]
                age = now - max(stamp, began)
                if age > self.heartbeat_timeout_s:
                    self._end()
                    cause = f"no heartbeat for {age:.1f}s (killed with SIGKILL)"
                    raise _Died(WorkerDied(cause, kind="heartbeat", signal=signal.SIGKILL))
            if now - began > bound_s:
                self._end()
                cause = f"{what} ran over {bound_s:g}s (killed with SIGKILL)"
                raise _Died(WorkerDied(cause, kind="timeout", signal=signal.SIGKILL))

    def _death(self, exc: BaseException | None) -> WorkerDied:
        process = self._res.process
        assert process is not None
        process.join(2.0)
        code = process.exitcode
        self._end()
        if code is None:
            return WorkerDied(f"lost its pipe ({exc})", kind="exit")
        if code < 0:
            name = signal.Signals(-code).name
            return WorkerDied(f"killed by {name}", kind="signal", signal=-code, exitcode=code)
        return WorkerDied(f"exited with status {code}", kind="exit", exitcode=code)

    def _segment(self, kind: str, size: int) -> shared_memory.SharedMemory:
        """The ``kind`` segment, at least ``size`` bytes: reused, or replaced by a larger one
        (the child attaches to the new name with the next batch)."""
        current = self._res.segments.get(kind)
        if current is not None and current.size >= size:
            return current
        capacity = max(_MIN_SEGMENT if kind != "beat" else 64, 1 << max(0, size - 1).bit_length())
        name = f"{SEGMENT_PREFIX}{self._id}-{kind}-{secrets.token_hex(4)}"
        segment = shared_memory.SharedMemory(name=name, create=True, size=capacity)
        with self._lock:
            if current is not None:
                _drop_segment(current)
            self._res.segments[kind] = segment
        return segment


def _batch_shape(items: list[np.ndarray]) -> tuple[int, int, int]:
    shape = items[0].shape
    if len(shape) != 3 or shape[2] not in (3, 4):
        raise ValueError(f"expected HWC images with 3 or 4 channels, got {shape}")
    for item in items:
        if item.shape != shape or item.dtype != np.uint8:
            raise ValueError(f"a batch is uint8 images of one shape: {item.shape} {item.dtype}")
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def _copy_out(segment: shared_memory.SharedMemory, offset: int, shape: Sequence[int]) -> np.ndarray:
    view = np.ndarray(tuple(shape), np.uint8, buffer=segment.buf, offset=offset)
    try:
        return view.copy()
    finally:
        del view


def _exit_cause(process: BaseProcess) -> str:
    code = process.exitcode
    if code is None:
        return "no exit status"
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"


# --- the worker process ----------------------------------------------------------------------


def _child_main(conn: Connection, beat_name: str, parent_pid: int) -> None:
    """The child's entry point (spawned: this module is all it imports before the model)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = _Child(conn, beat_name, parent_pid)
    signal.signal(signal.SIGTERM, child.on_sigterm)
    child.serve()


class _Child:
    def __init__(self, conn: Connection, beat_name: str, parent_pid: int) -> None:
        from daemon import logs

        logs.configure()
        self.conn = conn
        self.parent_pid = parent_pid
        self.beat = shared_memory.SharedMemory(name=beat_name)
        self.held = 0
        self.beat_lock = threading.Lock()  # a beat never writes back a stale batch number
        self.busy = False
        self.exit_when_idle = False
        self.poison = os.environ.get(POISON_ENV) or None
        self.engine: Any = None
        self.attached: dict[str, shared_memory.SharedMemory] = {}
        threading.Thread(target=self._beat, name="heartbeat", daemon=True).start()

    def _beat(self) -> None:
        while True:
            with self.beat_lock:
                _BEAT.pack_into(self.beat.buf, 0, time.monotonic(), self.held)
            if os.getppid() != self.parent_pid:
                os._exit(0)  # the service is gone: nobody will read our answer
            time.sleep(HEARTBEAT_INTERVAL_S)

    def _hold(self, number: int) -> None:
        with self.beat_lock:
            self.held = number
            _BEAT.pack_into(self.beat.buf, 0, time.monotonic(), number)

    def on_sigterm(self, signum: int, frame: object) -> None:
        if not self.busy:
            os._exit(0)
        self.exit_when_idle = True  # answer the batch in hand first

    def serve(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the service closed our pipe
            kind = message[0]
            if kind == "stop":
                os._exit(0)
            self.busy = True
            if kind == "load":
                reply = self.load(Path(message[1]), message[2])
            else:
                reply = self._answer(message)
                # Let go of the batch before answering: once the service has the answer, the
                # segment never shows this batch as held (a death now is not the batch's).
                self._hold(0)
            self.conn.send(reply)
            self.busy = False
            if self.exit_when_idle:
                os._exit(0)

    def load(self, path: Path, options: EngineOptions) -> tuple[Any, ...]:
        from core.runtime.engine import Engine
        from daemon import memory
        from daemon.reload import probe

        try:
            engine = Engine.from_path(path, **dataclasses.asdict(options))
            probe(engine)
        except Exception as exc:  # a bad file, out of memory, no device: the reason, not a trace
            logger.error("model worker cannot load {}: {}", path, exc)
            return ("refused", f"{type(exc).__name__}: {exc}"[:500])
        old, self.engine = self.engine, engine
        if old is not None:
            del old
            memory.release("a model switch in the model worker")
        meta = engine.checkpoint.meta
        info = {
            "version": engine.version,
            "sha256": engine.checkpoint.sha256,
            "objective": engine.objective,
            "epoch": meta.epoch,
            "device": str(engine.device),
            "precision": engine.precision,
            "max_batch": engine.max_batch,
            "recommended": engine.sampler_settings(),
        }
        return ("loaded", info)

    def _answer(self, message: tuple[Any, ...]) -> tuple[Any, ...]:
        try:
            return self.run(*message[1:])
        except Exception as exc:  # a bug here must cost the batch's answers, not a death
            logger.exception("model worker failed on a batch")
            error = ("error", str(Reason.MODEL_FAILED), f"{type(exc).__name__}: {exc}"[:300])
            return ("done", message[1], [error] * len(message[6]), 0.0)

    def _attach(self, name: str) -> shared_memory.SharedMemory:
        segment = self.attached.get(name)
        if segment is None:
            kind = name.rsplit("-", 2)[-2]
            for old_name in [n for n in self.attached if n.rsplit("-", 2)[-2] == kind]:
                with contextlib.suppress(BufferError):
                    self.attached.pop(old_name).close()
            segment = self.attached[name] = shared_memory.SharedMemory(name=name)
        return segment

    def run(
        self,
        number: int,
        in_name: str,
        out_name: str,
        out_size: int,
        shape: tuple[int, int, int],
        sha256s: list[str],
        request: SamplerRequest | None,
        output: OutputSettings,
    ) -> tuple[Any, ...]:
        from core.runtime.img2img import Inference

        self._hold(number)
        if self.poison is not None and self.poison in sha256s:
            logger.warning("{}: the poison input is in the batch; dying", POISON_ENV)
            os.kill(os.getpid(), signal.SIGKILL)
        inp = self._attach(in_name)
        batch = np.ndarray((len(sha256s), *shape), np.uint8, buffer=inp.buf)
        started = time.perf_counter()
        results = Inference(self.engine, output, request).run(list(batch), sha256s)
        model_s = time.perf_counter() - started
        del batch
        out = self._attach(out_name)
        answers: list[tuple[Any, ...]] = []
        offset = 0
        for result in results:
            if isinstance(result, InferenceError):
                answers.append(("error", str(result.reason), result.message))
                continue
            pixels = np.asarray(result)
            comp_image = result.info.get("composited")
            composited = None if comp_image is None else np.asarray(comp_image)
            need = pixels.nbytes + (0 if composited is None else composited.nbytes)
            if offset + need > out_size:
                answers.append(("inline", pixels, composited))
                continue
            pixel_offset, offset = offset, _put(out, offset, pixels)
            comp_offset, comp_shape = None, None
            if composited is not None:
                comp_offset, comp_shape = offset, composited.shape
                offset = _put(out, offset, composited)
            answers.append(("shm", pixel_offset, pixels.shape, comp_offset, comp_shape))
        return ("done", number, answers, model_s)


def _put(segment: shared_memory.SharedMemory, offset: int, array: np.ndarray) -> int:
    """Write ``array`` at ``offset``; the offset after it."""
    view = np.ndarray(array.shape, np.uint8, buffer=segment.buf, offset=offset)
    view[...] = array
    del view
    return offset + array.nbytes
