"""The hot path: claimed files -> decode (processes) -> batches -> model worker -> encode + commit.

Decoding runs in worker processes (daemon.decoders: a decoder that segfaults costs one file,
not the service), driven by a thread pool of the same size. One thread (the engine thread)
hands each batch to the model worker of its checkpoint (daemon.workers, through
daemon.model_cache: the network runs in a supervised process of its own, never in the
service); encoding runs in a thread pool (Pillow releases the GIL), with the provenance of
the model the worker says computed the batch. What the model does to an image is
core.runtime.img2img's, shared with ``artd process``; a denoise checkpoint's noise is seeded
from each claimed file's content hash, so the same file dropped twice gives the same pixels,
whatever shares its batch.
The number of claimed files in memory is bounded by ``max_in_flight``: intake simply stops
claiming, so a huge backlog stays on disk. A file that fails anywhere is quarantined alone;
its batch-mates go on.

**A worker that dies** with a batch in it is restarted and the batch retried by the
crash-charging rule (daemon.workers.ledger.CrashLedger, in the service's memory: halves down
to single files; a file is charged only when it was alone in a worker that died after an
earlier death, and quarantined as ``crashed_repeatedly`` after ``max_attempts`` such deaths in
a row); every other file of the batch comes out. The service's own death charges nothing: the
ledger starts empty, and the files it interrupted are simply resumed (docs/spool.md).
**A worker that cannot serve** (it cannot start or load its checkpoint) keeps its files
claimed and pauses intake, with the reason on /healthz, until a start succeeds (retried
by the engine thread); nothing is lost or charged.

Each claim carries the settings fixed at its claim (``claim.job``: daemon.settings.jobs): it is
decoded at its size, batched only with claims of the same model and settings (its group:
daemon.job_groups, which builds each group's decode and output settings once), run by the
worker of its checkpoint, and its output records its settings and which preset or sidecar
gave them.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from loguru import logger

from core.diffusion.sampler_settings import SamplerRequest
from core.images.decode import ImageError
from core.images.origin import Origin
from core.outputs.result import encode_result
from core.outputs.settings import OutputSettings
from core.reasons import Reason
from core.runtime.batcher import Batcher
from core.runtime.errors import InferenceError
from daemon.decoders import DecoderPool, DecoderUnavailableError, PoolClosedError
from daemon.job_groups import Group, JobGroups, decode_settings, job_sampler_request
from daemon.metrics import Health, Metrics
from daemon.model_cache import ModelCache
from daemon.settings import DaemonSettings
from daemon.spool import Claim, DisposeError, Spool
from daemon.spool.errors import RESOURCE_ERRNOS, SPACE_ERRNOS
from daemon.workers import (
    CrashLedger,
    CrashVerdict,
    ModelInfo,
    ResultPixels,
    WorkerDied,
    WorkerUnavailable,
)
from daemon.workers.retries import run_batch

RETRY_DELAYS_S = (2.0, 5.0, 15.0, 30.0, 60.0)
DISK_PROBE_S = 0.5  # while retries wait: how often the outbox is checked for room again
MODEL_RETRY_S = (2.0, 5.0, 15.0, 30.0, 60.0)  # starts of a worker that could not start
DEFAULT_MAX_BATCH = 4  # before the first model reports its own


@dataclass
class Decoded:
    """A claimed file's pixels, waiting in the engine's batcher."""

    claim: Claim
    pixels: np.ndarray  # HWC uint8, the model's input size
    input_mtime: float
    group: Group = ("", "")
    origin: Origin | None = None  # format, profile, metadata (core.images.origin)


class Pipeline:
    """The running daemon's work: claims in, outputs committed or files quarantined.

    ``submit`` takes a claim; decoder processes, the engine thread (through the model
    workers of ``models``) and the encode threads carry it to ``spool.commit`` or
    ``spool.quarantine`` (module docstring). A disk that refuses writes keeps the claim and
    pauses intake (``health.paused_reason``) until ``retry_due`` hands it back; so does a
    model worker that cannot serve (``health.worker_problem``)."""

    def __init__(
        self,
        settings: DaemonSettings,
        spool: Spool,
        models: ModelCache,
        metrics: Metrics,
        health: Health,
        decoder: DecoderPool | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.models = models
        self._output = OutputSettings.from_settings(settings)
        # What the operator asked of the sampler; every model, hot-reloaded ones too, gets it.
        self._request = settings.sampler_request()
        self._default_checkpoint = str(settings.checkpoint)
        self._groups = JobGroups(settings, self._default_checkpoint)
        self._ledger: CrashLedger[str] = CrashLedger(settings.max_attempts)
        self.metrics = metrics
        self.health = health
        self._ready: queue.Queue[Decoded | None] = queue.Queue()
        self._decode = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode")
        self._decoder = decoder or decoder_pool(settings)
        self._encode = ThreadPoolExecutor(settings.encode_workers, thread_name_prefix="encode")
        self._in_flight = 0
        self._count_lock = threading.Lock()
        self._restarts_seen: dict[str, int] = {}  # per checkpoint: its worker's restarts
        self._stopping = threading.Event()
        self._retry: list[tuple[float, Claim]] = []
        self._retry_lock = threading.Lock()
        self._failures = 0
        self._needed_bytes = 0  # the largest write the disk refused (0: it was not ENOSPC)
        self._next_probe = 0.0
        # Checkpoints whose worker cannot serve -> why; the claims waiting for them.
        self._unavailable: dict[str, str] = {}
        self._waiting: list[Claim] = []
        self._model_tries = 0
        self._next_model_try = 0.0
        self._thread = threading.Thread(target=self._engine_loop, name="engine", daemon=True)
        # Batches in the model at once: one per model actor on a Ray cluster (each call waits
        # on its actor, in a thread of its own); otherwise one, run by the engine thread.
        self._concurrency = settings.ray_actors if settings.ray_address else 1
        self._slots = threading.BoundedSemaphore(self._concurrency)
        self._batches = (
            ThreadPoolExecutor(self._concurrency, thread_name_prefix="batch")
            if self._concurrency > 1
            else None
        )

    # -- control ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def model(self) -> ModelInfo | None:
        """The daemon's own model, as its worker serves it now (None: not loaded)."""
        return self.models.model(self._default_checkpoint)

    def model_unavailable(self, checkpoint: str, reason: str) -> None:
        """No worker serves ``checkpoint`` (it could not start): pause intake, retry later."""
        self._unavailable[checkpoint] = reason
        self._next_model_try = time.monotonic() + MODEL_RETRY_S[0]
        self.health.update(worker_problem=self._worker_problem())

    def retry_models_now(self) -> None:
        """A model was loaded meanwhile (a hot reload): try the workers that could not start
        at the engine thread's next turn, not at the end of their back-off."""
        self._next_model_try = 0.0

    def _worker_problem(self) -> str | None:
        if not self._unavailable:
            return None
        return "; ".join(f"{path}: {why}" for path, why in self._unavailable.items())

    @property
    def free_slots(self) -> int:
        with self._count_lock:
            return max(0, self.settings.max_in_flight - self._in_flight)

    @property
    def in_flight(self) -> int:
        with self._count_lock:
            return self._in_flight

    def submit(self, claim: Claim) -> None:
        """Take a claimed file into the pipeline."""
        with self._count_lock:
            self._in_flight += 1
        self._decode.submit(self._decode_one, claim)

    def retry_due(self) -> list[Claim]:
        """Claims whose commit failed for lack of space or I/O, now due for another try, and
        those that waited for a model worker, once every worker serves again."""
        now = time.monotonic()
        paused = self.health.paused_reason is not None
        if paused and self._retry and now >= self._next_probe:
            self._next_probe = now + DISK_PROBE_S
            if self._outbox_writable():
                self._retry_all_now()
        with self._retry_lock:
            due = [claim for when, claim in self._retry if when <= now]
            self._retry = [(when, claim) for when, claim in self._retry if when > now]
            if not self._unavailable and self._waiting:
                due += self._waiting
                self._waiting = []
        return due

    def _retry_later(self, claim: Claim, delay_s: float) -> None:
        with self._retry_lock:
            self._retry.append((time.monotonic() + delay_s, claim))

    def _retry_all_now(self) -> None:
        """The disk takes writes again: no claim waits out the rest of its back-off."""
        with self._retry_lock:
            self._retry = [(0.0, claim) for _, claim in self._retry]

    def _outbox_writable(self) -> bool:
        """Room for the write that failed and a folder that takes a new file: retry now."""
        try:
            fs = os.statvfs(self.spool.outbox)
        except OSError:
            return False
        room = fs.f_bavail * fs.f_frsize > 2 * self._needed_bytes + (1 << 16)
        return room and self.spool.can_write(self.spool.outbox)

    def stop(self, timeout_s: float) -> bool:
        """Finish the batch in flight, commit what is computed; the rest stays claimed."""
        self._stopping.set()
        self._ready.put(None)
        self._decode.shutdown(wait=False, cancel_futures=True)
        self._decoder.close()
        self._thread.join(timeout_s)
        if self._batches is not None:
            self._batches.shutdown(wait=True)  # the batches in the model answer first
        self._encode.shutdown(wait=True)
        return not self._thread.is_alive()

    # -- stages ----------------------------------------------------------------------------

    def _decode_one(self, claim: Claim) -> None:
        if self._stopping.is_set():
            return  # left claimed; the next start resumes it
        job = claim.job
        try:
            settings = None if job is None else self._groups.decode_settings(claim)
            with self.metrics.timed("decode"):
                pixels, mtime, origin = self._decoder.decode_with_origin(claim.work_path, settings)
        except PoolClosedError:
            return  # stopping: left claimed for the next start
        except DecoderUnavailableError as exc:  # the host, not the file: pause and retry
            logger.error("{}: {}", claim.rel_path, exc)
            self.health.update(paused_reason=str(exc))
            self.spool.release(claim)
            self._retry_later(claim, RETRY_DELAYS_S[1])
            self._finished()
            return
        except ImageError as exc:
            self._quarantine(claim, exc.reason, exc.message)
            return
        except OSError as exc:
            self._quarantine(claim, Reason.UNREADABLE, str(exc))
            return
        except Exception as exc:  # a decoder bug must cost one file, not the service
            logger.exception("decoder failed on {}", claim.rel_path)
            self._quarantine(claim, Reason.DECODER_FAILED, f"{type(exc).__name__}: {exc}")
            return
        self._ready.put(Decoded(claim, pixels, mtime, self._groups.group(claim), origin))

    def _settings_of(self, claim: Claim) -> tuple[OutputSettings, SamplerRequest]:
        """What the model and the encoder are asked for ``claim``: its job's, or the daemon's."""
        if claim.job is None:
            return self._output, self._request
        return self._groups.output(claim), job_sampler_request(claim.job)

    def _max_batch(self) -> int:
        model = self.model
        return self.settings.max_batch or (model.max_batch if model else DEFAULT_MAX_BATCH)

    def _engine_loop(self) -> None:
        batcher: Batcher[Decoded] = Batcher(self._max_batch(), self.settings.max_delay_ms / 1000)
        while True:
            wait = batcher.seconds_to_next()
            try:
                item = self._ready.get(timeout=wait if wait is not None else 0.5)
            except queue.Empty:
                item = None
            if self._stopping.is_set():
                return  # decoded-but-not-run items stay claimed for the next start
            if item is not None:
                full = batcher.add((item.group, item.pixels.shape), item)
                if full:
                    self._dispatch(full)
            for batch in batcher.due():
                self._dispatch(batch)
            if self._unavailable and time.monotonic() >= self._next_model_try:
                self._try_models()
            batcher.max_batch = self._max_batch()
            depths = self.queue_depths(len(batcher))
            self.health.update(queue=depths)
            for stage, depth in depths.items():
                self.metrics.queue_depth.labels(stage=stage).set(depth)

    def _try_models(self) -> None:
        """Start the workers that could not start; once all serve, the waiting claims go on."""
        for checkpoint in list(self._unavailable):
            try:
                self.models.get(checkpoint)
            except WorkerUnavailable as exc:
                self._unavailable[checkpoint] = exc.reason
            else:
                logger.info("model worker for {} serves again; resuming", checkpoint)
                del self._unavailable[checkpoint]
        self._model_tries = self._model_tries + 1 if self._unavailable else 0
        delay = MODEL_RETRY_S[min(self._model_tries, len(MODEL_RETRY_S) - 1)]
        self._next_model_try = time.monotonic() + delay
        self.health.update(worker_problem=self._worker_problem())
        self.publish_models()

    def _dispatch(self, batch: list[Decoded]) -> None:
        """Run ``batch`` here, or, with several model actors, in a batch thread once one is
        free (the engine thread waits for a free one: backpressure)."""
        if self._batches is None:
            self._run(batch)
            return
        self._slots.acquire()
        try:
            self._batches.submit(self._run_in_thread, batch)
        except RuntimeError:  # shut down: stopping, the claims stay for the next start
            self._slots.release()

    def _run_in_thread(self, batch: list[Decoded]) -> None:
        try:
            self._run(batch)
        except Exception:  # never silently: the claims stay claimed for the next start
            logger.exception("a batch of {} failed in its thread", len(batch))
        finally:
            self._slots.release()

    def _run(self, batch: list[Decoded]) -> None:
        checkpoint = batch[0].group[0] or self._default_checkpoint
        try:
            worker, _ = self.models.get(checkpoint)
        except WorkerUnavailable as exc:
            if exc.refused and checkpoint != self._default_checkpoint:
                # A preset's model that does not load: not the file's fault alone, but no
                # reason to hold every other file back (the daemon's own model serves on).
                for item in batch:
                    self._quarantine(item.claim, Reason.MODEL_FAILED, f"model: {exc}"[:300])
                return
            self._wait_for_model(checkpoint, [item.claim for item in batch], exc)
            return
        self.publish_models()
        output, request = self._settings_of(batch[0].claim)
        claims = {item.claim.id: item for item in batch}
        started = time.perf_counter()
        outcome = run_batch(
            worker,
            self._ledger,
            list(claims),
            [item.pixels for item in batch],
            [item.claim.sha256 for item in batch],
            request,
            output,
            on_death=lambda died, part, verdict: self._worker_died(died, part, verdict, claims),
            stopping=self._stopping.is_set,
        )
        self._count_restarts(checkpoint, worker.health().restarts)
        if outcome.answered:
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
            self.metrics.batch_size.observe(len(outcome.answered))
        for key, message in outcome.crashed.items():
            claim = claims[key].claim
            claim.solo_crashes = self._ledger.limit  # the sidecar records it
            self._quarantine(claim, Reason.CRASHED_REPEATEDLY, message)
        if outcome.unavailable is not None:
            left = [claims[key].claim for key in outcome.left]
            self._wait_for_model(checkpoint, left, outcome.unavailable)
        for key, (result, model) in outcome.answered.items():
            item = claims[key]
            if isinstance(result, InferenceError):
                self._quarantine(item.claim, result.reason, result.message)
            elif model is None:  # never: a worker that answered serves a model
                self._quarantine(item.claim, Reason.MODEL_FAILED, "no model to record")
            else:
                self._encode.submit(self._commit, item, result, model)

    def _count_restarts(self, checkpoint: str, restarts: int) -> None:
        """``artd_worker_restarts_total`` grows by the restarts a worker reports since this
        checkpoint's last batch (a pool of actors replaces a lost one in the background)."""
        with self._count_lock:
            seen = self._restarts_seen.get(checkpoint, 0)
            self._restarts_seen[checkpoint] = restarts
        self.metrics.worker_restarts.inc(max(0, restarts - seen))

    def _worker_died(
        self,
        died: WorkerDied,
        part: list[str],
        verdict: CrashVerdict[str],
        claims: dict[str, Decoded],
    ) -> None:
        self.metrics.worker_deaths.labels(kind=died.kind).inc()
        for key in verdict.charged:
            logger.warning(
                "{}: alone in the model worker when it died ({}), after an earlier death: "
                "solo crash {} of {}",
                claims[key].claim.rel_path,
                died.cause,
                self._ledger.solo_crashes(key) or self._ledger.limit,
                self._ledger.limit,
            )
        if verdict.retry:
            logger.info(
                "retrying the {} file(s) of the dead worker's batch as {} batch(es) of {}",
                len(part),
                len(verdict.retry),
                "/".join(str(len(r)) for r in verdict.retry),
            )

    def _wait_for_model(self, checkpoint: str, claims: list[Claim], exc: WorkerUnavailable) -> None:
        """No worker serves ``checkpoint``: keep the claims (nothing moves) until one does."""
        if not self._stopping.is_set():
            logger.error(
                "no model worker for {}: {}; {} file(s) wait, intake paused",
                checkpoint,
                exc.reason,
                len(claims),
            )
            self.model_unavailable(checkpoint, exc.reason)
        for claim in claims:
            self.spool.release(claim)
            with self._retry_lock:
                self._waiting.append(claim)
            self._finished()

    def _commit(self, item: Decoded, result: ResultPixels, model: ModelInfo) -> None:
        claim = item.claim
        data = b""
        output, request = self._settings_of(claim)
        try:
            settings = model.sampler_settings(request)
            with self.metrics.timed("encode"):
                data = encode_result(
                    result.image(), model.identity, claim.sha256, output, settings, item.origin
                )
            with self.metrics.timed("commit"):
                written = self.spool.commit(claim, data)
        except OSError as exc:
            self._commit_failed(claim, exc, len(data))
            return
        except Exception as exc:
            logger.exception("encoding failed for {}", claim.rel_path)
            self._quarantine(claim, Reason.ENCODE_FAILED, f"{type(exc).__name__}: {exc}")
            return
        self._failures, self._needed_bytes = 0, 0
        self.health.update(last_success=time.time(), paused_reason=None)
        self._retry_all_now()
        self.metrics.processed.inc()
        self.metrics.drop_to_output.observe(max(0.0, time.time() - item.input_mtime))
        logger.info("{} -> {}", claim.rel_path, written.relative_to(self.spool.root))
        self._finished()

    def _commit_failed(self, claim: Claim, exc: OSError, size: int) -> None:
        self.metrics.write_errors.inc()
        if isinstance(exc, DisposeError) and exc.errno not in RESOURCE_ERRNOS:
            # Published: a quarantine now would make a second copy. Retry the archiving.
            logger.error("{}: {}; retrying", claim.rel_path, exc)
            self.spool.release(claim)
            self._retry_later(claim, RETRY_DELAYS_S[-1])
            self._finished()
            return
        if exc.errno not in RESOURCE_ERRNOS:
            self._quarantine(claim, Reason.WRITE_FAILED, str(exc))
            return
        if exc.errno in SPACE_ERRNOS:
            self._needed_bytes = max(self._needed_bytes, size)
        # The disk, not the file: keep it claimed, pause intake, try again later.
        delay = RETRY_DELAYS_S[min(self._failures, len(RETRY_DELAYS_S) - 1)]
        self._failures += 1
        reason = f"cannot write outputs ({exc.strerror}); retrying in {delay:.0f}s"
        logger.error("{}: {}", claim.rel_path, reason)
        self.health.update(paused_reason=reason)
        self.spool.release(claim)
        self._retry_later(claim, delay)
        self._finished()

    def _quarantine(self, claim: Claim, reason: str, message: str) -> None:
        model = self.model
        details: dict[str, object] = {
            "model": model.version if model else None,
            "settings": self._output.recorded(),
        }
        if claim.job is not None:
            details = {"model": claim.job["model"], "settings": self._groups.recorded(claim)}
        try:
            self.spool.quarantine(claim, reason, message, details)
        except OSError as exc:
            logger.error("cannot quarantine {}: {} (left claimed)", claim.rel_path, exc)
            if exc.errno in RESOURCE_ERRNOS:
                self.health.update(paused_reason=f"cannot quarantine files ({exc.strerror})")
            self._retry_later(claim, RETRY_DELAYS_S[-1])
        else:
            self.metrics.quarantined.labels(reason=reason).inc()
            logger.warning("quarantined {}: {} ({})", claim.rel_path, reason, message)
            if not self._retry and self.health.paused_reason is not None:
                self.health.update(paused_reason=None)  # the disk took this write: resume
        self._finished()

    def publish_models(self) -> None:
        """/healthz and /metrics: every loaded model."""
        loaded = self.models.loaded()
        self.health.update(models=loaded, model_errors=dict(self.models.errors))
        self.metrics.set_models(loaded)

    def _finished(self) -> None:
        with self._count_lock:
            self._in_flight -= 1

    def queue_depths(self, batching: int = 0) -> dict[str, int]:
        return {
            "in_flight": self.in_flight,
            "decoded": self._ready.qsize(),
            "batching": batching,
            "retry": len(self._retry),
            "model_wait": len(self._waiting),
        }


def decoder_pool(settings: DaemonSettings) -> DecoderPool:
    """The isolated decoders of the pipeline; the caller start()s them."""
    return DecoderPool(settings.decode_workers, decode_settings(settings))
