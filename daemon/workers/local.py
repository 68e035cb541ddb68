"""The service's side of a worker on this host: :class:`LocalModelWorker`, one supervised child
process (daemon.workers.child) serving one model. It spawns, loads, switches and restarts
the child, sends it each batch through shared memory (daemon.workers.segments) and waits for
its answer within bounds (daemon.workers.supervision)."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from multiprocessing import get_context, shared_memory
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from core.diffusion.sampler_settings import SamplerRequest
from core.outputs.settings import OutputSettings
from daemon.workers import messages, segments
from daemon.workers.child import child_main
from daemon.workers.interface import (
    STOP_TIMEOUT_S,
    BatchTiming,
    EngineOptions,
    ModelInfo,
    WorkerDied,
    WorkerHealth,
    WorkerResult,
    WorkerUnavailable,
    checked_batch,
)
from daemon.workers.segments import BEAT
from daemon.workers.supervision import Died, Resources, await_reply, death, exit_cause

HEARTBEAT_TIMEOUT_S = 30.0  # sixty missed beats: stopped or deadlocked, not slow
BATCH_TIMEOUT_S = 120.0  # the daemon's stuck_seconds default: a hang that still beats
START_TIMEOUT_S = 300.0  # imports, CUDA set-up, the precision probe, torch.compile

_worker_ids = itertools.count(1)


class LocalModelWorker:
    """One supervised child process serving one model (daemon.workers). Thread-safe: one
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
        self._res = Resources()
        self._finalizer = weakref.finalize(self, Resources.release, self._res)
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
        items, output = checked_batch(batch, sha256s, output)
        if not items:
            return []
        shape = items[0].shape
        with self._call:
            if self._stopped:
                raise WorkerUnavailable("the model worker was stopped")
            if self._checkpoint is None:
                raise RuntimeError("start() the model worker before run()")
            with self._busy_flag():
                for attempt in (1, 2):
                    self._ensure_running()
                    number = next(self._batches)
                    pid = self._pid  # a death clears it
                    started = time.perf_counter()
                    try:
                        reply = self._send_batch(
                            number, items, shape, list(sha256s), request, output
                        )
                    except Died as died:
                        held = self._held()
                        self._forget_held()  # the dead child's number must not outlive it
                        if self._stopped:
                            raise WorkerUnavailable("the model worker was stopped") from None
                        if held == number:
                            self._log_death(died.error, len(items), pid)
                            raise died.error from None
                        # Died before taking the batch: not its doing. Restart, send it again.
                        logger.warning(
                            "model worker {} died idle ({}); restarting", self.name, died
                        )
                        if attempt == 2:
                            raise WorkerUnavailable(
                                f"the model worker dies before taking a batch: {died}"
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
                stamp, _ = BEAT.unpack_from(beat.buf, 0)
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
                exit_cause(process),
            )
        self._spawn_and_load(restart=self._loads > 0)

    def _spawn_and_load(self, *, restart: bool) -> ModelInfo:
        assert self._checkpoint is not None
        self._end()
        with self._lock:
            self._pid = None
            if restart:
                self._restarts += 1
        beat = self._segment("beat", BEAT.size)
        BEAT.pack_into(beat.buf, 0, 0.0, 0)
        began = time.monotonic()
        try:
            parent, child = self._ctx.Pipe(duplex=True)
            process = self._ctx.Process(
                target=child_main,
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
        except Died as died:
            self._end()
            raise self._unavailable(
                f"the model worker could not load {self._checkpoint}: {died}"
            ) from None
        if reply[0] != "loaded":
            self._end()
            raise self._unavailable(str(reply[1]), refused=True)
        before = self._model
        info = dataclasses.replace(reply[1], path=self._checkpoint)
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
        except (Died, OSError) as exc:
            self._end()
            reason = f"the model worker could not load {checkpoint}: {exc}"
            raise self._unavailable(reason) from None
        if reply[0] != "loaded":
            message = f"new checkpoint {checkpoint} refused, still serving the old model: "
            with self._lock:
                self._error = message + str(reply[1])
            logger.error(self._error)
            raise WorkerUnavailable(self._error, refused=True)
        old = self._model
        info = dataclasses.replace(reply[1], path=checkpoint)
        self._checkpoint = checkpoint
        with self._lock:
            self._model, self._error = info, None
        logger.info(
            "model worker {} switched: {} -> {}", self.name, old.version if old else None,
            info.version,
        )  # fmt: skip
        return info

    def _unavailable(self, reason: str, *, refused: bool = False) -> WorkerUnavailable:
        with self._lock:
            self._error = reason
        logger.error("model worker {} unavailable: {}", self.name, reason)
        return WorkerUnavailable(reason, refused=refused)

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
        out_size = messages.out_size(count, shape)
        inp, out = self._segment("in", size), self._segment("out", out_size)
        segments.copy_in(inp, items, shape)
        message = ("run", number, inp.name, out.name, out.size, shape, sha256s, request, output)
        assert self._res.conn is not None
        try:
            self._res.conn.send(message)
        except OSError as exc:
            raise Died(death(self._res, exc, self._end)) from exc
        reply = self._await(self.batch_timeout_s, "the batch", heartbeat=True)
        if reply[0] != "done" or reply[1] != number:
            raise RuntimeError(f"model worker {self.name}: unexpected reply {reply[0]!r}")
        return reply

    def _collect(self, reply: tuple[Any, ...], number: int) -> tuple[list[WorkerResult], float]:
        _, _, answers, model_s = reply
        return messages.unpack(answers, self._res.segments["out"]), float(model_s)

    def _held(self) -> int:
        """The number of the batch the child last took (0: none)."""
        beat = self._res.segments.get("beat")
        return 0 if beat is None else BEAT.unpack_from(beat.buf, 0)[1]

    def _forget_held(self) -> None:
        beat = self._res.segments.get("beat")
        if beat is not None:
            BEAT.pack_into(beat.buf, 0, 0.0, 0)

    def _log_death(self, error: WorkerDied, files: int, pid: int | None) -> None:
        with self._lock:
            self._error = f"died with {files} file(s) in it: {error.cause}; restarts on next use"
        logger.error(
            "model worker {} (pid {}) died with {} file(s) in it: {}",
            self.name,
            pid,
            files,
            error.cause,
        )

    # -- waiting, with bounds --------------------------------------------------------------

    def _await(self, bound_s: float, what: str, *, heartbeat: bool) -> tuple[Any, ...]:
        """The child's next message, within ``bound_s`` (and its heartbeat's bound)."""
        return await_reply(
            self._res,
            bound_s,
            what,
            heartbeat_timeout_s=self.heartbeat_timeout_s if heartbeat else None,
            aborted=lambda: self._abort,
            end=self._end,
        )

    def _segment(self, kind: str, size: int) -> shared_memory.SharedMemory:
        """The ``kind`` segment, at least ``size`` bytes: reused, or replaced by a larger one
        (the child attaches to the new name with the next batch)."""
        current = self._res.segments.get(kind)
        if current is not None and current.size >= size:
            return current
        segment = segments.create(self._id, kind, size)
        with self._lock:
            if current is not None:
                segments.drop(current)
            self._res.segments[kind] = segment
        return segment
