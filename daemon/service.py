"""The daemon's lifecycle: bootstrap, the claim loop, heartbeats, hot reload, drain on SIGTERM."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from daemon import http, sidecars, systemd
from daemon.decoders import DecoderPool
from daemon.intake import Intake
from daemon.metrics import Health, Metrics
from daemon.model_cache import ModelCache
from daemon.pipeline import Pipeline, decoder_pool
from daemon.reload import ModelWatcher, identity
from daemon.settings import DaemonSettings, Resolver
from daemon.spool import Claim, Spool, SpoolError
from daemon.web.api import DaemonState, PageData
from daemon.web.requeue import RECORDS as REQUEUE_RECORDS
from daemon.web.requeue import Requeue
from daemon.workers import LocalModelWorker, ModelInfo, ModelWorker, WorkerUnavailable

EXIT_OK, EXIT_FATAL = 0, 1
HOUSEKEEPING_S = 5.0
# How often a running daemon looks for dead peers' claims to adopt (shared roots), and
# finishes the page's requeues that a kill cut short (daemon.web.requeue.Requeue.recover).
ADOPT_EVERY_S = 30.0
DECODER_START_S = 120.0
CLAIM_RETRY_S = (0.5, 1.0, 2.0, 5.0, 10.0)  # probes of a disk that refused claims
MAX_HELD = 10_000  # images waiting for their sidecar at once; beyond, the rescan finds them
# The order shutdown() stops the parts in, whichever of them were started: intake first (no
# new files), the pipeline drained while /healthz still answers, the spool's lock last.
STOP_ORDER = (
    "intake",
    "model watcher",
    "pipeline",
    "http",
    "page",
    "model workers",
    "decoder",
    "spool",
)


class Service:
    """One daemon instance from start to exit: ``run()`` is its whole life.

    The steps are named as huey's Consumer and rq's Worker name theirs: :meth:`bootstrap`
    (the spool's folders, the decoder processes, the model worker), then one ``_start_*`` method per
    worker thread (the pipeline, the page and the HTTP server, the inbox intake, the
    checkpoint watcher), :meth:`work` (the claim loop with its heartbeats, until a stop is
    requested) and :meth:`shutdown` (drain in-flight files within ``drain_seconds``, stop
    every thread). A SIGTERM or SIGINT at any point after ``run()`` begins is a clean drain.

    Each part, once started, is recorded with its stopper (:meth:`_started`), and
    ``run()`` calls :meth:`shutdown` whatever happens after its start begins: a start that
    fails half-way (a port in use, a folder that cannot be read) stops exactly the parts
    started before it, in :data:`STOP_ORDER`.
    """

    spool: Spool
    decoder: DecoderPool
    models: ModelCache
    pipeline: Pipeline
    intake: Intake
    model_watcher: ModelWatcher

    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.stop_requested = threading.Event()
        self.metrics = Metrics()
        self.health = Health()
        self.backlog: deque[Claim] = deque()  # claims to (re)submit before new inbox files
        self.server: http.Server | None = None
        self.page: PageData | None = None  # built here, handed to the server (the page's owner)
        self._stoppers: dict[str, Callable[[], object]] = {}  # the parts started, by name
        self._drained = True
        self._model_problem: str | None = None  # why no model worker serves, as last told
        # Set while the disk refuses claims (full, read-only, failing): intake waits, then probes.
        self._claim_problem: str | None = None
        self._claim_failures = 0
        self._claims_resume_at = 0.0
        # Images waiting a moment for a sidecar still being copied: path -> first seen.
        self._held: dict[Path, float] = {}
        self._next_orphan_sweep = 0.0
        self._next_adoption = time.monotonic() + ADOPT_EVERY_S  # start adopts by itself
        self._requeue: Requeue | None = None  # recovers page requeues when the page is off

    def request_stop(self, signum: int | None = None, _frame: object = None) -> None:
        if signum is not None:
            logger.info("received {}; draining", signal.Signals(signum).name)
        self.stop_requested.set()

    # ----- the lifecycle -----

    def run(self) -> int:
        """Start, work until a stop is requested, drain; the process's exit status."""
        # From here on a stop request (systemd, Ctrl-C, a test) is a clean drain, even one
        # that lands while the model is still loading or the inbox is first scanned.
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        try:
            if not self.bootstrap():
                return EXIT_FATAL
            self._start_pipeline()
            self._resume_claimed()
            self.intake = self._create_intake()
            self.model_watcher = self._create_model_watcher()
            self._start_http()
            self.intake.start()
            self._started("intake", self.intake.stop)
            self.model_watcher.start()
            self._started("model watcher", self.model_watcher.stop)
            logger.info("watching {} as instance {!r}", self.spool.inbox, self.settings.instance)
            systemd.notify("READY=1\nSTATUS=watching the inbox")
            self.work()
        finally:
            self.shutdown()
        return EXIT_OK

    def bootstrap(self) -> bool:
        """The spool's folders, the decoder processes and the model worker; False when the
        service cannot start. A model worker that cannot start does not stop the service: it
        says why (/healthz, the page, the log), takes no file, and is started again later."""
        s = self.settings
        try:
            self.resolver = Resolver(s)
        except ValueError as exc:
            logger.error("cannot start: {}", exc)
            return False
        self.spool = Spool(
            s.root,
            s.instance,
            output_ext=s.output_extension,
            keep_originals=s.keep_originals,
            resolve=self.resolver.resolve,
        )
        self.decoder = decoder_pool(s)
        try:
            self.spool.prepare()
            self._started("spool", self.spool.close)  # the instance lock, released last
            for name in s.presets:  # each preset's inbox folder, ready for drops
                (self.spool.inbox / name).mkdir(exist_ok=True)
            self.decoder.start()  # its forkserver imports the decoder while the model loads
            self._started("decoder", self.decoder.close)
        except (SpoolError, ValueError, RuntimeError, OSError) as exc:
            logger.error("cannot start: {}", exc)
            return False  # run() stops what was started
        self.models = ModelCache(
            self._make_worker,
            s.engine_options(),
            s.model_memory_mb << 20,
            s.reload_seconds,
            watched=s.checkpoint,
        )
        self._started("model workers", self.models.stop)
        self.health.update(workers=self.models.workers)
        self.metrics.workers.source = self.models.workers
        try:
            _, info = self.models.get(s.checkpoint)
        except WorkerUnavailable as exc:
            self._model_problem = exc.reason
            logger.error(
                "the model worker cannot start: {}; serving /healthz, taking no file, "
                "and starting it again later",
                exc.reason,
            )
        else:
            self._model_loaded(info)
        self.metrics.up.set(1)
        return True

    def _make_worker(self, checkpoint: str) -> ModelWorker:
        """A model worker for ``checkpoint`` (daemon.model_cache), whose batches are cut at
        ``stuck_seconds``: one supervised process, or with ``ray_address`` a pool of
        ``ray_actors`` model actors on that Ray cluster (daemon.workers.ray_pool)."""
        default = checkpoint == str(self.settings.checkpoint)
        name = "default" if default else Path(checkpoint).name
        settings = self.settings
        if settings.ray_address is None:
            return LocalModelWorker(name, batch_timeout_s=settings.stuck_seconds)
        from daemon.workers.ray_pool import RayWorkerPool  # imports Ray: only when asked for

        return RayWorkerPool(
            name,
            address=settings.ray_address,
            actors=settings.ray_actors,
            gpus_per_actor=settings.ray_gpus_per_actor,
            cpus_per_actor=settings.ray_cpus_per_actor,
            batch_timeout_s=settings.stuck_seconds,
        )

    def _model_loaded(self, info: ModelInfo) -> None:
        self.health.update(model_version=info.version)
        self.metrics.model_info.info(_model_labels(info))

    def _start_pipeline(self) -> None:
        self.pipeline = Pipeline(
            self.settings, self.spool, self.models, self.metrics, self.health, decoder=self.decoder
        )
        if self._model_problem is not None:
            self.pipeline.model_unavailable(str(self.settings.checkpoint), self._model_problem)
        self.pipeline.start()
        self._started("pipeline", self._stop_pipeline)
        self.pipeline.publish_models()

    def _resume_claimed(self) -> None:
        # Resume nothing before files can be decoded: a start killed this early would only
        # make more suspects (interrupted files that then run alone; docs/spool.md).
        if not self.decoder.wait_ready(DECODER_START_S):
            logger.warning("decoder workers slow to start; resuming anyway")
        self.backlog.extend(self.spool.recover())
        self.backlog.extend(self.spool.adopt_stale())
        if self.backlog:
            logger.info("resuming {} claimed file(s) from an earlier run", len(self.backlog))

    def _create_intake(self) -> Intake:
        s = self.settings
        return Intake(
            self.spool.inbox,
            is_candidate=self.spool.is_candidate,
            scan=self.spool.scan_inbox,
            settle_seconds=s.settle_seconds,
            rescan_seconds=s.rescan_seconds,
            polling=s.polling,
        )

    def _create_model_watcher(self) -> ModelWatcher:
        s = self.settings
        return ModelWatcher(
            s.checkpoint,
            self.models.reload,
            on_new=self._switch,
            on_error=self._reload_failed,
            interval_s=s.reload_seconds,
            current=identity(s.checkpoint),
        )

    def _start_http(self) -> None:
        """The page (when it can be built) and the HTTP server that serves it."""
        s = self.settings
        if not s.http_port:
            return
        self.page = self._open_page()
        self.server = http.serve(
            s.http_host,
            s.http_port,
            self.metrics,
            self.health,
            page=self.page,
            hosts=http.parse_hosts(s.page_hosts),
            max_connections=s.page_max_connections,
        )
        self._started("http", self.server.stop)

    def _open_page(self) -> PageData | None:
        """What the page needs: the folders, their indexes, the thumbnails, the requeue, and
        this daemon's health, metrics and queue (never the service itself)."""
        state = DaemonState(health=self.health, metrics=self.metrics, waiting=self._waiting)
        try:
            page = PageData(self.settings, state)
        except Exception:  # the page is optional: /healthz and /metrics must come up regardless
            logger.exception("page: cannot start the page; serving /healthz and /metrics only")
            return None
        self._started("page", page.close)
        return page

    def _waiting(self) -> tuple[int, int]:
        """For the page: (inbox files settling, resumed claims not yet submitted)."""
        return self.intake.pending(), len(self.backlog)

    def _started(self, part: str, stop: Callable[[], object]) -> None:
        """``part`` (a name of STOP_ORDER) is running: :meth:`shutdown` calls ``stop``."""
        assert part in STOP_ORDER, part
        self._stoppers[part] = stop

    def _stop_pipeline(self) -> None:
        self._drained = self.pipeline.stop(self.settings.drain_seconds)

    def shutdown(self) -> None:
        """Stop taking files, drain the pipeline, stop every thread; claims left unfinished
        stay claimed for the next start. Stops only the parts started (:meth:`_started`),
        so it is safe at any point of a start that failed, and a second call does nothing."""
        serving = "pipeline" in self._stoppers
        if serving:
            systemd.notify("STOPPING=1")
        failed: BaseException | None = None
        for part in STOP_ORDER:
            stop = self._stoppers.pop(part, None)
            if stop is None:
                continue
            try:
                stop()
            except Exception as exc:  # the parts after it must stop all the same
                logger.opt(exception=exc).error("cannot stop the {} cleanly", part)
                failed = failed or exc
        self.metrics.up.set(0)
        if serving:
            logger.info(
                "stopped{}; unfinished files stay claimed for the next start",
                "" if self._drained else " (drain timed out)",
            )
        if failed is not None:
            raise failed

    # ----- the claim loop -----

    def work(self) -> None:
        """Feed the pipeline (resumed claims first, then settled inbox files) until stopped."""
        heartbeat_every = systemd.watchdog_interval() or HOUSEKEEPING_S
        next_housekeeping = 0.0
        pipeline, backlog = self.pipeline, self.backlog
        while not self.stop_requested.is_set():
            backlog.extend(pipeline.retry_due())
            # Files wait on disk while no model worker can serve them.
            no_model = self.health.worker_problem is not None
            while backlog and pipeline.free_slots and not no_model:
                pipeline.submit(backlog.popleft())
            # A disk that refused writes pauses intake until a retried commit succeeds.
            paused = self.health.paused_reason is not None or no_model
            if not paused and pipeline.free_slots and time.monotonic() >= self._claims_resume_at:
                self._claim_new()
            now = time.monotonic()
            if now >= next_housekeeping:
                next_housekeeping = now + min(heartbeat_every, HOUSEKEEPING_S)
                self._housekeeping()
            self.intake.wait(0.05 if backlog else 0.25)

    def _claim_new(self) -> None:
        spool, pipeline = self.spool, self.pipeline
        taken = self.intake.take(max(0, pipeline.free_slots - len(self._held)))
        paths = self._not_waiting([*self._held, *taken])
        if not taken and self._claim_problem is not None:
            # No new file to try a claim on, but one the disk refused halfway may wait in
            # work/ (renamed, not yet recorded): probe the disk itself and recover it as soon
            # as writes work again, rather than only when the next file arrives.
            if spool.can_write(spool.work_dir):
                self._claims_resumed()
            else:
                self._claim_refused(None)
            return
        for path in paths:
            try:
                with self.metrics.timed("claim"):
                    claim = spool.claim(path)
            except OSError as exc:
                self._claim_refused(exc)  # the disk, not the file: the rescan finds it again
                return
            if self._claim_problem is not None:
                self._claims_resumed()
            if claim is not None:
                pipeline.submit(claim)

    def _not_waiting(self, paths: list[Path]) -> list[Path]:
        """``paths`` but the images still waiting a moment for their sidecar (kept in
        ``_held`` and offered again at the next turn, at most ``sidecar_wait_seconds``)."""
        wait_s = self.settings.sidecar_wait_seconds
        if wait_s <= 0:
            return paths
        now, wall, ready = time.monotonic(), time.time(), []
        for path in dict.fromkeys(paths):
            first = self._held.setdefault(path, now)
            if now - first >= wait_s or not self._sidecar_may_come(path, wall, wait_s):
                self._held.pop(path, None)
                ready.append(path)
        while len(self._held) > MAX_HELD:
            self._held.pop(next(iter(self._held)))
        return ready

    def _sidecar_may_come(self, path: Path, wall: float, wait_s: float) -> bool:
        """A sidecar is being copied, or none is there yet and the image is that fresh."""
        if sidecars.copy_in_progress(path.parent, path.name, self.settings.settle_seconds):
            return True
        if os.path.lexists(path.parent / sidecars.sidecar_name(path.name)):
            return False  # there and settled: take both now
        try:
            return wall - os.lstat(path).st_mtime < wait_s
        except OSError:
            return False  # gone: the claim finds out

    def _claim_refused(self, exc: OSError | None) -> None:
        """Pause intake and probe again later (exc None: a probe of the disk failed)."""
        delay = CLAIM_RETRY_S[min(self._claim_failures, len(CLAIM_RETRY_S) - 1)]
        self._claim_failures += 1
        self._claims_resume_at = time.monotonic() + delay
        if exc is None:
            return  # still refused: the problem already reported stands
        if self._claim_problem is None:
            logger.error("cannot claim inputs: {}; intake paused", exc)
        self._claim_problem = f"intake paused: cannot claim inputs ({exc.strerror})"
        self.health.update(folders_problem=self._claim_problem)

    def _claims_resumed(self) -> None:
        logger.info("claims succeed again; intake resumed")
        self._claim_problem, self._claim_failures = None, 0
        self.health.update(folders_problem=_folders_problem(self.spool))
        self.backlog.extend(self.spool.recover())  # claims the refused disk left half-recorded

    def _housekeeping(self) -> None:
        spool = self.spool
        self._watch_model()
        try:
            spool.heartbeat()
        except OSError as exc:  # a full, read-only or failing disk: reported, not fatal
            logger.warning("cannot touch the heartbeat file: {}", exc)
        self.health.update(folders_problem=self._claim_problem or _folders_problem(spool))
        # A folder still being copied in may be empty for a moment: wait well past settling.
        keep = frozenset(self.settings.presets)
        spool.remove_empty_dirs(older_than=max(5.0, 4 * self.settings.settle_seconds), keep=keep)
        if time.monotonic() >= self._next_adoption:
            # A peer that died while this one runs: take its claims over now, not only when
            # this instance itself restarts (its lock is free once its process is gone).
            self._next_adoption = time.monotonic() + ADOPT_EVERY_S
            try:
                self.backlog.extend(spool.adopt_stale())
            except OSError as exc:
                logger.warning("cannot adopt the work of dead instances: {}", exc)
            self._recover_requeues()
        if time.monotonic() >= self._next_orphan_sweep:
            orphan_s = self.settings.sidecar_orphan_seconds
            self._next_orphan_sweep = time.monotonic() + min(60.0, orphan_s / 4)
            try:
                spool.sweep_orphan_sidecars(orphan_s)
            except OSError as exc:
                logger.warning("cannot sweep sidecars without images: {}", exc)
        if self.intake.healthy:
            systemd.notify("WATCHDOG=1")

    def _recover_requeues(self) -> None:
        """Finish a page requeue that a kill cut short (its file held aside in the
        quarantine, or not yet in the inbox) once its record is old enough, without waiting
        for a restart or the next requeue POST. The page's own Requeue when it runs (its lock
        keeps a POST and this apart); otherwise one of our own, if any record was ever made."""
        requeue = self.page.requeue if self.page is not None else self._requeue
        if requeue is None:
            if not (self.spool.root / REQUEUE_RECORDS).is_dir():
                return
            requeue = self._requeue = Requeue(self.spool.root)
        try:
            requeue.recover()
        except OSError as exc:
            logger.warning("cannot finish interrupted retries: {}", exc)

    def _watch_model(self) -> None:
        """The served model as its worker reports it (a restart reloads the checkpoint's
        path, which may hold a newer file), and systemd's status line while none serves (the
        engine thread starts the worker again: daemon.pipeline)."""
        info = self.pipeline.model
        if info is not None and info.version != self.health.model_version:
            self._model_loaded(info)
        problem = self.health.worker_problem
        if problem != self._model_problem:
            self._model_problem = problem
            status = "watching the inbox" if problem is None else f"no model worker: {problem}"
            systemd.notify(f"STATUS={status}"[:200])
        self.pipeline.publish_models()

    def _switch(self, info: ModelInfo) -> None:
        self._model_loaded(info)
        self.pipeline.retry_models_now()  # the worker may have been down until now
        self.metrics.reloads.labels(result="ok").inc()
        self.health.update(reload_error=None)
        self.pipeline.publish_models()

    def _reload_failed(self, message: str) -> None:
        self.metrics.reloads.labels(result="failed").inc()
        self.health.update(reload_error=message)


def _model_labels(info: ModelInfo) -> dict[str, str]:
    identity = info.identity
    return {
        "version": identity.version,
        "sha256": identity.sha256,
        "epoch": "" if identity.epoch is None else str(identity.epoch),
        "image_space": identity.image_space,
        "device": info.device,
        "precision": info.precision,
    }


def _folders_problem(spool: Spool) -> str | None:
    """Re-create a deleted inbox; report folders we can no longer write."""
    try:
        spool.inbox.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"inbox missing and cannot be re-created: {exc}"
    for folder in (spool.outbox, spool.quarantine_dir, spool.archive, spool.work_dir):
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"folder not writable: {folder}"
    return None
