"""The hot path: claimed files -> decode (processes) -> batches -> engine -> encode + commit.

One thread owns the engine (the device); decoding runs in worker processes (daemon.decoders:
a decoder that segfaults costs one file, not the service), driven by a thread pool of the
same size; encoding runs in a thread pool (Pillow releases the GIL). What the model does to
an image and how the result is encoded is core.runtime.img2img's, shared with ``artd process``;
a denoise checkpoint's noise is seeded from each claimed file's content hash, so the same
file dropped twice gives the same pixels, whatever shares its batch.
The number of claimed files in memory is bounded by ``max_in_flight``: intake simply stops
claiming, so a huge backlog stays on disk. A file that fails anywhere is quarantined alone;
its batch-mates go on. A *suspect* (a claim a restart found unfinished) runs alone: its own
batch, no encode still running, its ``solo`` marker on disk while the model has it; only
``max_attempts`` deaths of the process in that window quarantine it (docs/spool.md).

Each claim carries the settings fixed at its claim (``claim.job``: daemon.settings.jobs): it is
decoded at its size, batched only with claims of the same model and settings (its group:
daemon.job_groups, which builds each group's decode and output settings once), run by one
:class:`Inference` per such group on an engine from the bounded model cache
(daemon.model_cache), and its output records its settings and which preset or sidecar gave them.
"""

from __future__ import annotations

import copy
import os
import queue
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
from loguru import logger
from PIL import Image

from core.checkpoint import CheckpointError
from core.images.decode import ImageError
from core.images.origin import Origin
from core.reasons import Reason
from core.runtime.batcher import Batcher
from core.runtime.engine import Engine
from core.runtime.errors import InferenceError
from core.runtime.img2img import Inference, OutputSettings
from daemon import memory
from daemon.decoders import DecoderPool, DecoderUnavailableError, PoolClosedError
from daemon.job_groups import MAX_GROUPS, Group, JobGroups, decode_settings, job_sampler_request
from daemon.metrics import Health, Metrics
from daemon.model_cache import ModelCache
from daemon.settings import DaemonSettings
from daemon.spool import Claim, DisposeError, Spool
from daemon.spool.errors import RESOURCE_ERRNOS, SPACE_ERRNOS

RETRY_DELAYS_S = (2.0, 5.0, 15.0, 30.0, 60.0)
DISK_PROBE_S = 0.5  # while retries wait: how often the outbox is checked for room again
ENCODE_DRAIN_S = 30.0  # a suspect waits this long at most for the encodes in progress
# Test-only (docs/reliability.md): the process SIGKILLs itself when the input with this
# SHA-256 is in the model. Read once at import; unset, a batch costs one ``is None`` test.
_POISON_SHA256 = os.environ.get("_ARTD_POISON_SHA256") or None


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

    ``submit`` takes a claim; decoder processes, the engine thread and the encode threads
    carry it to ``spool.commit`` or ``spool.quarantine`` (module docstring). A disk that
    refuses writes keeps the claim and pauses intake (``health.paused_reason``) until
    ``retry_due`` hands it back. ``swap_engine`` switches models between batches."""

    def __init__(
        self,
        settings: DaemonSettings,
        spool: Spool,
        engine: Engine,
        metrics: Metrics,
        health: Health,
        decoder: DecoderPool | None = None,
        models: ModelCache | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self._output = OutputSettings.from_settings(settings)
        # What the operator asked of the sampler; every engine, hot-reloaded ones too, gets it.
        self._request = settings.sampler_request()
        self._inference = Inference(engine, self._output, self._request)
        self._default_checkpoint = str(settings.checkpoint)
        self._groups = JobGroups(settings, self._default_checkpoint)
        self.models = models or ModelCache(
            settings.load_engine,
            settings.model_memory_mb << 20,
            settings.reload_seconds,
            watched=settings.checkpoint,
        )
        self.models.put(self._default_checkpoint, engine)
        self._inferences: dict[Group, Inference] = {}
        self._models_seen = self.models.generation  # engines let go that _inferences knows of
        self.metrics = metrics
        self.health = health
        self._engine_lock = threading.Lock()
        self._ready: queue.Queue[Decoded | None] = queue.Queue()
        self._decode = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode")
        self._decoder = decoder or decoder_pool(settings)
        self._encode = ThreadPoolExecutor(settings.encode_workers, thread_name_prefix="encode")
        self._encoding: set[Future[None]] = set()  # what a suspect waits for before the model
        self._in_flight = 0
        self._count_lock = threading.Lock()
        self._stopping = threading.Event()
        self._retry: list[tuple[float, Claim]] = []
        self._retry_lock = threading.Lock()
        self._failures = 0
        self._needed_bytes = 0  # the largest write the disk refused (0: it was not ENOSPC)
        self._next_probe = 0.0
        self._thread = threading.Thread(target=self._engine_loop, name="engine", daemon=True)

    # -- control ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def engine(self) -> Engine:
        return self._inference.engine

    def swap_engine(self, engine: Engine) -> None:
        """Switch models between batches (the engine thread takes the lock per batch)."""
        with self._engine_lock:
            old, self._inference = self.engine, Inference(engine, self._output, self._request)
            self.models.put(self._default_checkpoint, engine)
            self._forget_unloaded()
        logger.info("model switched: {} -> {}", old.version, engine.version)
        # The caller (the service) gives the old engine's memory back: daemon.memory.

    def _forget_unloaded(self) -> None:
        """Drop the groups' Inferences of engines the model cache no longer serves (engine
        lock held): each held a whole old engine (weights, folded copies) alive until its
        group came again, one per job group and hot reload (docs/soak.md, "Memory")."""
        self._models_seen = self.models.generation
        stale = [g for g, i in self._inferences.items() if not self.models.is_loaded(i.engine)]
        for group in stale:
            del self._inferences[group]

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
        if claim.solo_crashes >= self.settings.max_attempts:
            message = (
                f"the process died {claim.solo_crashes} times while this file was alone in "
                f"the model (crash, hang or kill; interrupted {claim.interrupted} times in all)"
            )
            self._quarantine(claim, Reason.CRASHED_REPEATEDLY, message)
            return
        self._decode.submit(self._decode_one, claim)

    def retry_due(self) -> list[Claim]:
        """Claims whose commit failed for lack of space or I/O, now due for another try."""
        now = time.monotonic()
        paused = self.health.paused_reason is not None
        if paused and self._retry and now >= self._next_probe:
            self._next_probe = now + DISK_PROBE_S
            if self._outbox_writable():
                self._retry_all_now()
        with self._retry_lock:
            due = [claim for when, claim in self._retry if when <= now]
            self._retry = [(when, claim) for when, claim in self._retry if when > now]
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
        self._encode.shutdown(wait=True)
        return not self._thread.is_alive()

    # -- stages ----------------------------------------------------------------------------

    def _decode_one(self, claim: Claim) -> None:
        if self._stopping.is_set():
            return  # left claimed; the next start resumes it
        job = claim.job
        try:
            settings = None if job is None else self._groups.decode_settings(claim)
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

    def _inference_for(self, item: Decoded) -> Inference:
        """The Inference of ``item``'s group on its model's engine (engine lock held)."""
        job = item.claim.job
        if job is None:
            return self._inference
        engine = self.models.get(job["checkpoint"])
        if self.models.generation != self._models_seen:
            # A preset's model reloaded or unloaded: other groups may still hold the old one.
            self._forget_unloaded()
            memory.release("a preset model's reload or unload")
        cached = self._inferences.get(item.group)
        if cached is None or cached.engine is not engine:
            if len(self._inferences) >= MAX_GROUPS:
                self._inferences.clear()
            cached = Inference(engine, self._groups.output(item.claim), job_sampler_request(job))
            self._inferences[item.group] = cached
        return cached

    def _engine_loop(self) -> None:
        batcher: Batcher[Decoded] = Batcher(
            self._inference.max_batch, self.settings.max_delay_ms / 1000
        )
        while True:
            wait = batcher.seconds_to_next()
            try:
                item = self._ready.get(timeout=wait if wait is not None else 0.5)
            except queue.Empty:
                item = None
            if self._stopping.is_set():
                return  # decoded-but-not-run items stay claimed for the next start
            if item is not None and item.claim.suspect:
                self._run_solo(item)
            elif item is not None:
                full = batcher.add((item.group, item.pixels.shape), item)
                if full:
                    self._run(full)
            for batch in batcher.due():
                self._run(batch)
            depths = self.queue_depths(len(batcher))
            self.health.update(queue=depths)
            for stage, depth in depths.items():
                self.metrics.queue_depth.labels(stage=stage).set(depth)

    def _run_solo(self, item: Decoded) -> None:
        """A suspect alone: its own batch, after the encodes in progress, marked ``solo`` on
        disk while the model has it, so that only a death in that window counts against it."""
        claim = item.claim
        wait(self._encoding.copy(), timeout=ENCODE_DRAIN_S)  # copy(): atomic, unlike list()
        try:
            self.spool.mark_solo(claim)
        except OSError as exc:  # unmarked, a crash would not count: do not run it so
            logger.error("{}: cannot record its solo run ({}); retrying later", claim.rel_path, exc)
            self.spool.release(claim)
            self._retry_later(claim, RETRY_DELAYS_S[1])
            self._finished()
            return
        self._run([item], solo=True)

    def _clear_solo(self, claim: Claim) -> None:
        try:
            self.spool.clear_solo(claim)
        except OSError as exc:  # its commit or quarantine record replaces the marker anyway
            logger.error("{}: cannot clear its solo marker: {}", claim.rel_path, exc)

    def _run(self, batch: list[Decoded], solo: bool = False) -> None:
        with self._engine_lock:
            try:
                inference = self._inference_for(batch[0])
            except (CheckpointError, OSError, RuntimeError, ValueError) as exc:
                if solo:
                    self._clear_solo(batch[0].claim)
                for item in batch:  # its model cannot be loaded: not the file's fault alone
                    self._quarantine(item.claim, Reason.MODEL_FAILED, f"model: {exc}"[:300])
                return
            self.publish_models()
            self.health.update(engine_busy_since=time.monotonic())
            started = time.perf_counter()
            try:
                if _POISON_SHA256 is not None:
                    _die_on_poison(batch)
                results = inference.run(
                    [item.pixels for item in batch], [item.claim.sha256 for item in batch]
                )
            finally:
                self.health.update(engine_busy_since=None)
                if solo:
                    self._clear_solo(batch[0].claim)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(batch))
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, InferenceError):
                self._quarantine(item.claim, result.reason, result.message)
            else:
                future = self._encode.submit(self._commit, item, result, inference)
                self._encoding.add(future)
                future.add_done_callback(self._encoding.discard)

    def _commit(self, item: Decoded, image: Image.Image, inference: Inference) -> None:
        claim = item.claim
        data = b""
        if claim.job is not None:  # its own provenance: preset and sidecar are per file
            inference = copy.copy(inference)
            inference.output = self._groups.output(claim)
        try:
            data = inference.encode(image, claim.sha256, item.origin)
            output = self.spool.commit(claim, data)
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
        logger.info("{} -> {}", claim.rel_path, output.relative_to(self.spool.root))
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
        details: dict[str, object] = {
            "model": self.engine.version,
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
        }


def _die_on_poison(batch: list[Decoded]) -> None:
    """The test-only poison hook: SIGKILL this process if the poison input is in ``batch``."""
    if any(item.claim.sha256 == _POISON_SHA256 for item in batch):
        logger.warning("_ARTD_POISON_SHA256: the poison input is in the model; dying")
        os.kill(os.getpid(), signal.SIGKILL)


def decoder_pool(settings: DaemonSettings) -> DecoderPool:
    """The isolated decoders of the pipeline; the caller start()s them."""
    return DecoderPool(settings.decode_workers, decode_settings(settings))
