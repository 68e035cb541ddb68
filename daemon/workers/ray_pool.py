"""The model on a Ray cluster: :class:`RayWorkerPool`, a :class:`ModelWorker` whose batches run
in a pool of actors (daemon.workers.ray_actor), one model each, spread over the cluster's nodes.

- **Start.** ``start`` connects (``daemon.cluster``: errors name the setting to change, e.g.
  ``ray_address: cannot reach ...`` or ``ray_gpus_per_actor: ...``), checks the cluster has
  room, creates the actors (``num_cpus``, ``num_gpus``, ``SPREAD`` over the nodes,
  ``max_restarts=0``) and loads the model in all of them at once. The service reads the
  checkpoint's bytes and puts them in Ray's object store: a node need not see its disk.
- **Hot reload.** ``start`` on a running pool is a transaction: every actor stages the new
  model beside the old one; all switch only if all staged it, else all drop it and the old
  model serves on (WorkerUnavailable, ``refused`` when the checkpoint itself was refused).
- **Batches.** ``run`` is thread-safe and concurrent: each call takes a free actor (waiting
  for one), so up to :attr:`RayWorkerPool.concurrency` batches run at a time. An actor idle a
  while is pinged first, so one that went with its node while idle costs no file anything.
- **Losses.** An actor lost with a batch in it (its process or its node died: Ray raises
  ``ActorDiedError``, or another ``RayActorError``, ``NodeDiedError``, ``ObjectLostError``...)
  gives WorkerDied(kind="lost"); a batch past ``batch_timeout_s`` gives
  WorkerDied(kind="timeout") after ``ray.kill``. Either way the pool starts a replacement
  actor itself (Ray's own restarts are off, so that each loss is seen), on any node with room,
  loading the very bytes the others serve; it retries with a back-off until one comes up.
- **Stop.** ``stop`` kills every actor; the Ray connection stays (other pools may share it,
  and a cluster artd did not start is never shut down).

Ray is imported only by ``start`` (through ``daemon.cluster``): importing this module, or
``daemon.workers``, never needs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from loguru import logger

from core.checkpoint import CheckpointError, resolve_current
from core.checkpoint.files import MAX_CHECKPOINT_BYTES
from core.diffusion.sampler_settings import SamplerRequest
from core.durable import open_regular
from core.outputs.settings import OutputSettings
from daemon.cluster import ClusterError, connect, require
from daemon.workers import ray_actor
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
from daemon.workers.local import BATCH_TIMEOUT_S, START_TIMEOUT_S

IDLE_PING_S = 5.0  # an actor idle this long is pinged before it gets a batch
PING_TIMEOUT_S = 10.0  # an idle actor answers a ping in milliseconds
REPLACE_BACKOFF_S = (1.0, 30.0)  # between a replacement's failed tries: first, most

ActorStateName = Literal["loading", "serving", "busy"]


@dataclass(frozen=True)
class ActorState:
    """One actor of a pool as :meth:`RayWorkerPool.actors` reports it: ``loading`` (starting,
    or a replacement on its way), ``serving`` (idle) or ``busy`` (a batch in it)."""

    number: int
    state: ActorStateName
    node_id: str | None
    model_version: str | None


@dataclass
class _Actor:
    number: int  # 1, 2, ...: replacements get new numbers
    handle: Any = None
    state: ActorStateName = "loading"
    node: str | None = None
    info: ModelInfo | None = None  # the model it serves
    staged: ModelInfo | None = None  # the model a reload staged in it
    generation: int = 0  # the pool's model generation it serves
    idle_since: float = 0.0


@dataclass(frozen=True)
class _Load:
    """What an actor loads: the checkpoint's bytes in the object store, and where they came
    from (``label``: the real file, whose name the model's version carries)."""

    ref: Any
    label: str
    path: Path  # the path start() was given (ModelInfo.path)
    options: EngineOptions


class RayWorkerPool:
    """Model actors on a Ray cluster behind the :class:`ModelWorker` calls (module
    docstring). Thread-safe; :meth:`run` may be called by :attr:`concurrency` threads at once
    and :meth:`health` never waits for a batch or for Ray."""

    def __init__(
        self,
        name: str = "model",
        address: str = "auto",
        actors: int = 1,
        gpus_per_actor: float = 0.0,
        cpus_per_actor: float = 1.0,
        batch_timeout_s: float = BATCH_TIMEOUT_S,
        *,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        if actors < 1:
            raise ValueError(f"a pool needs at least one actor, not {actors}")
        self.name = name
        self.address = address
        self.actor_count = actors
        self.gpus_per_actor = gpus_per_actor
        self.cpus_per_actor = cpus_per_actor
        self.batch_timeout_s = batch_timeout_s
        self.start_timeout_s = start_timeout_s
        self.last_timing: BatchTiming | None = None
        self._start_lock = threading.Lock()  # one start (or reload) at a time
        self._cond = threading.Condition()  # guards all below; never held across a Ray call
        self._actors: list[_Actor] = []
        self._numbers = itertools.count(1)
        self._ray: Any = None
        self._remote: Any = None  # ModelActor made remote
        self._current: _Load | None = None  # what a replacement loads
        self._generation = 0  # bumped by each committed reload
        self._model: ModelInfo | None = None
        self._restarts = 0
        self._lost = 0
        self._error: str | None = None
        self._stopped = False
        self._local = threading.local()  # per thread: (generation, the model of its last run)

    # -- the interface ---------------------------------------------------------------------

    @property
    def concurrency(self) -> int:
        """How many batches may run at once: one per actor."""
        return self.actor_count

    @property
    def model(self) -> ModelInfo | None:
        """The model that computed this thread's last batch (unless a reload has committed
        since), else the model the pool serves now. Read it after each run()."""
        seen = getattr(self._local, "seen", None)
        if seen is not None and seen[0] == self._generation:
            return seen[1]
        return self._model

    def start(self, checkpoint: Path, options: EngineOptions | None = None) -> ModelInfo:
        options = options or EngineOptions()
        with self._start_lock:
            if self._stopped:
                raise WorkerUnavailable("the model worker pool was stopped")
            label, data = self._read(Path(checkpoint))
            if self._current is None:
                return self._start(Path(checkpoint), label, data, options)
            return self._reload(Path(checkpoint), label, data, options)

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
        if self._current is None and not self._stopped:
            raise RuntimeError("start() the model worker pool before run()")
        ray = self._ray
        for _ in range(self.actor_count + 2):
            actor = self._acquire()
            if not self._answers_ping(actor):
                continue  # lost while idle: replaced, and the batch goes to another
            started = time.perf_counter()
            try:
                ref = actor.handle.run.remote(items, list(sha256s), request, output)
                sha, answers, model_s = ray.get(ref, timeout=self.batch_timeout_s)
            except ray.exceptions.GetTimeoutError:
                where = _where(actor)
                self._retire(actor, f"its batch ran past {self.batch_timeout_s:g}s")
                if self._stopped:
                    raise WorkerUnavailable("the model worker pool was stopped") from None
                raise WorkerDied(
                    f"the batch ran past {self.batch_timeout_s:g}s in {where}; killed",
                    kind="timeout",
                ) from None
            except _losses(ray) as exc:
                if self._stopped:
                    self._release(actor, None)
                    raise WorkerUnavailable("the model worker pool was stopped") from None
                where = _where(actor)
                self._lose(actor, exc)
                cause = f"{where} was lost with the batch in it: {_brief(exc)}"
                raise WorkerDied(cause, kind="lost") from None
            except ray.exceptions.RayError as exc:  # the object store, an RPC: not the files
                self._release(actor, None)
                raise WorkerUnavailable(f"Ray could not run the batch: {_brief(exc)}") from exc
            except BaseException:
                self._release(actor, None)
                raise
            generation, info = self._release(actor, sha)
            self._local.seen = (generation, info)
            self.last_timing = BatchTiming(time.perf_counter() - started, float(model_s))
            return ray_actor.results(answers)
        raise WorkerUnavailable("no model actor answers: each one tried was lost")

    def health(self) -> WorkerHealth:
        with self._cond:
            up = [a for a in self._actors if a.state != "loading"]
            busy = sum(1 for a in up if a.state == "busy")
            model = self._model
            return WorkerHealth(
                alive=bool(up) and not self._stopped,
                busy=busy > 0,
                model_version=model.version if model else None,
                restarts=self._restarts,
                heartbeat_age_s=None,
                device=model.device if model else None,
                precision=model.precision if model else None,
                error=self._error,
                actors=len(up),
                busy_actors=busy,
                lost=self._lost,
            )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            while any(a.state == "busy" for a in self._actors):
                left = deadline - time.monotonic()
                if left <= 0:
                    break  # killed below: their callers get WorkerUnavailable
                self._cond.wait(left)
            handles = [a.handle for a in self._actors if a.handle is not None]
            self._actors.clear()
        for handle in handles:
            self._kill(handle)
        logger.info("model worker pool {} stopped ({} actor(s) killed)", self.name, len(handles))

    # -- beyond the interface --------------------------------------------------------------

    def actors(self) -> list[ActorState]:
        """Each actor now: its state, node and model (for tests, logs and the page)."""
        with self._cond:
            return [
                ActorState(a.number, a.state, a.node, a.info.version if a.info else None)
                for a in self._actors
            ]

    # -- starting and reloading ------------------------------------------------------------

    def _read(self, checkpoint: Path) -> tuple[str, bytes]:
        """The real file behind ``checkpoint`` (its name is the model's) and its bytes."""
        try:
            real = resolve_current(checkpoint)
            with open_regular(real) as handle:
                data = handle.read(MAX_CHECKPOINT_BYTES + 1)
        except (CheckpointError, OSError) as exc:
            raise self._unavailable(f"cannot read {checkpoint}: {exc}", refused=True) from exc
        if len(data) > MAX_CHECKPOINT_BYTES:
            raise self._unavailable(f"{checkpoint}: far too large for a checkpoint", refused=True)
        return str(real), data

    def _start(self, path: Path, label: str, data: bytes, options: EngineOptions) -> ModelInfo:
        began = time.monotonic()
        fresh: list[_Actor] = []
        try:
            ray = connect(self.address)
            require(
                ray, actors=self.actor_count, cpus=self.cpus_per_actor, gpus=self.gpus_per_actor
            )
            self._ray = ray
            self._remote = ray.remote(ray_actor.ModelActor)
            load = _Load(ray.put(data), label, path, options)
            for _ in range(self.actor_count):
                fresh.append(_Actor(next(self._numbers), self._create()))
            refs = []
            for actor in fresh:
                refs.append(actor.handle.load.remote(load.ref, label, options))
                refs.append(actor.handle.node_id.remote())
        except ClusterError as exc:  # its message names the setting to change
            raise self._unavailable(str(exc)) from exc
        except Exception as exc:  # Ray itself: the object store, an RPC
            for actor in fresh:
                self._kill(actor.handle)
            raise self._unavailable(f"Ray could not start the model actors: {_brief(exc)}") from exc
        settled = self._settle(refs, self.start_timeout_s)
        failures: list[str] = []
        refused = False
        for i, actor in enumerate(fresh):
            (ok, answer), (node_ok, node) = settled[2 * i], settled[2 * i + 1]
            if ok and answer[0] == "loaded" and node_ok:
                actor.info = dataclasses.replace(answer[1], path=path)
                actor.node, actor.state, actor.idle_since = node, "serving", time.monotonic()
                continue
            refused |= ok and answer[0] == "refused"
            if ok and answer[0] == "loaded":
                failures.append(_failure(node_ok, node))
            else:
                failures.append(_failure(ok, answer))
        if failures:
            for actor in fresh:
                self._kill(actor.handle)
            reason = f"the model actors could not load {label}: {failures[0]}"
            raise self._unavailable(reason, refused=refused)
        model = fresh[0].info
        assert model is not None
        with self._cond:
            self._actors, self._current, self._model, self._error = fresh, load, model, None
            self._cond.notify_all()
        logger.info(
            "model worker pool {} ready: {} actor(s) on {} node(s), model {} on {} ({}), {:.1f}s",
            self.name, len(fresh), len({a.node for a in fresh}), model.version, model.device,
            model.precision, time.monotonic() - began,
        )  # fmt: skip
        return model

    def _reload(self, path: Path, label: str, data: bytes, options: EngineOptions) -> ModelInfo:
        """Stage the new model in every actor serving; commit all, or abort all (module
        docstring)."""
        ray = self._ray
        with self._cond:
            targets = [a for a in self._actors if a.state != "loading"]
        if not targets:
            raise self._unavailable(f"no model actor is serving to switch to {label}")
        load = _Load(ray.put(data), label, path, options)
        settled = self._settle(
            [a.handle.stage.remote(load.ref, label, options) for a in targets], self.start_timeout_s
        )
        if not all(ok and answer[0] == "staged" for ok, answer in settled):
            for actor in targets:
                with contextlib.suppress(Exception):
                    actor.handle.abort.remote()
            refused = any(ok and answer[0] == "refused" for ok, answer in settled)
            reason = next(_failure(ok, a) for ok, a in settled if not ok or a[0] != "staged")
            self._drop_failed(targets, settled)
            message = f"new checkpoint {label} refused, still serving the old model: {reason}"
            with self._cond:
                self._error = message
            logger.error("model worker pool {}: {}", self.name, message)
            raise WorkerUnavailable(message, refused=refused)
        with self._cond:
            for actor, (_, answer) in zip(targets, settled, strict=True):
                actor.staged = dataclasses.replace(answer[1], path=path)
        committed = self._settle([a.handle.commit.remote() for a in targets], self.start_timeout_s)
        stale: list[_Actor] = []
        with self._cond:
            old = self._model
            self._generation += 1
            self._current = load
            for actor, (ok, _) in zip(targets, committed, strict=True):
                if ok:
                    actor.info, actor.staged = actor.staged, None
                    actor.generation = self._generation
            # Replacements that came up with the old model meanwhile: replaced in turn.
            stale = [
                a for a in self._actors if a.generation != self._generation and a.state == "serving"
            ]
            self._model = targets[0].staged or targets[0].info
            self._error = None
            model = self._model
        self._drop_failed(targets, committed)
        for actor in stale:
            self._retire(actor, "it served the model before a reload")
        assert model is not None
        logger.info(
            "model worker pool {} switched: {} -> {} ({} actor(s))",
            self.name, old.version if old else None, model.version, len(targets),
        )  # fmt: skip
        return model

    def _drop_failed(self, actors: list[_Actor], settled: list[tuple[bool, Any]]) -> None:
        """Replace each actor whose call was lost with it or never answered."""
        for actor, (ok, answer) in zip(actors, settled, strict=True):
            if ok:
                continue
            if isinstance(answer, TimeoutError):
                self._retire(actor, "it did not answer within the start timeout")
            else:
                self._lose(actor, answer)

    def _create(self) -> Any:
        """A new actor (placed by Ray: it may wait for room), not yet loaded."""
        return self._remote.options(
            num_cpus=self.cpus_per_actor,
            num_gpus=self.gpus_per_actor,
            max_restarts=0,
            max_task_retries=0,
            scheduling_strategy="SPREAD",
        ).remote()

    def _settle(self, refs: list[Any], timeout_s: float) -> list[tuple[bool, Any]]:
        """Each ref's value, ``(True, value)``, or ``(False, the exception)``: a RayError, or a
        TimeoutError when it had no answer within ``timeout_s`` (all waited on together)."""
        ray = self._ray
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        done = set(ready)
        settled: list[tuple[bool, Any]] = []
        for ref in refs:
            if ref not in done:
                late = TimeoutError(f"no answer within {timeout_s:g}s (no node with room?)")
                settled.append((False, late))
                continue
            try:
                settled.append((True, ray.get(ref)))
            except ray.exceptions.RayError as exc:
                settled.append((False, exc))
        return settled

    # -- actors in and out of service ------------------------------------------------------

    def _acquire(self) -> _Actor:
        """A free actor serving the current model, now busy; waits for one. WorkerUnavailable
        when the pool stops, or when none has served for ``start_timeout_s``."""
        deadline: float | None = None
        with self._cond:
            while True:
                if self._stopped:
                    raise WorkerUnavailable("the model worker pool was stopped")
                free = [
                    a
                    for a in self._actors
                    if a.state == "serving" and a.generation == self._generation
                ]
                if free:
                    actor = min(free, key=lambda a: a.idle_since)  # the longest idle
                    actor.state = "busy"
                    return actor
                if any(a.state == "busy" for a in self._actors):
                    deadline = None  # one will come free within its batch's bound
                else:  # none serving: replacements are on their way (or failing)
                    now = time.monotonic()
                    deadline = deadline or now + self.start_timeout_s
                    if now >= deadline:
                        raise WorkerUnavailable(f"no model actor is serving ({self._error})")
                self._cond.wait(1.0)

    def _answers_ping(self, actor: _Actor) -> bool:
        """True, or the actor (idle a while) is lost or mute: replaced, and False."""
        if time.monotonic() - actor.idle_since < IDLE_PING_S:
            return True
        ray = self._ray
        try:
            ray.get(actor.handle.ping.remote(), timeout=PING_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            self._retire(actor, f"it did not answer a ping within {PING_TIMEOUT_S:g}s")
            return False
        except ray.exceptions.RayError as exc:
            self._lose(actor, exc)
            return False
        return True

    def _release(self, actor: _Actor, sha: str | None) -> tuple[int, ModelInfo | None]:
        """Back in service (or retired, when a reload left it behind); the pool's generation
        and the model that answered with ``sha``."""
        with self._cond:
            info = self._model
            for candidate in (actor.info, actor.staged):
                if sha is not None and candidate is not None and candidate.sha256 == sha:
                    info = candidate
            generation = self._generation
            stale = actor in self._actors and actor.generation != generation
            if actor in self._actors and not stale:
                actor.state, actor.idle_since = "serving", time.monotonic()
            self._cond.notify_all()
        if stale:
            self._retire(actor, "it served the model before a reload")
        return generation, info

    def _lose(self, actor: _Actor, exc: BaseException) -> None:
        """Ray lost the actor (its process or node): count it and replace it."""
        message = f"{_where(actor)} lost: {_brief(exc)}"
        with self._cond:
            if actor not in self._actors:
                return
            self._lost += 1
            self._error = message
        logger.error("model worker pool {}: {}", self.name, message)
        self._out_of_service(actor)

    def _retire(self, actor: _Actor, why: str) -> None:
        """Kill the actor (it is stuck or stale) and replace it."""
        with self._cond:
            if actor not in self._actors:
                return
        logger.warning("model worker pool {}: killing {}: {}", self.name, _where(actor), why)
        self._out_of_service(actor)

    def _out_of_service(self, actor: _Actor) -> None:
        with self._cond:
            if actor not in self._actors:
                return
            self._actors.remove(actor)
            self._cond.notify_all()
            if self._stopped:
                replacement = None
            else:
                self._restarts += 1
                replacement = _Actor(next(self._numbers))
                self._actors.append(replacement)
        self._kill(actor.handle)
        if replacement is not None:
            threading.Thread(
                target=self._bring_up,
                args=(replacement,),
                name=f"artd-ray-{self.name}-{replacement.number}",
                daemon=True,
            ).start()

    def _bring_up(self, slot: _Actor) -> None:
        """A replacement: create and load an actor until one serves (or the pool stops)."""
        delay = REPLACE_BACKOFF_S[0]
        began = time.monotonic()
        while True:
            with self._cond:
                if self._stopped or slot not in self._actors:
                    return
                load, generation = self._current, self._generation
            assert load is not None
            handle = self._create()
            with self._cond:
                slot.handle = handle  # so that stop() kills it
            loaded, placed = self._settle(
                [handle.load.remote(load.ref, load.label, load.options), handle.node_id.remote()],
                self.start_timeout_s,
            )
            ok = loaded[0] and loaded[1][0] == "loaded" and placed[0]
            with self._cond:
                current = generation == self._generation and not self._stopped
                if ok and current and slot in self._actors:
                    slot.info = dataclasses.replace(loaded[1][1], path=load.path)
                    slot.node, slot.generation = placed[1], generation
                    slot.state, slot.idle_since = "serving", time.monotonic()
                    if all(a.state != "loading" for a in self._actors):
                        self._error = None  # whole again
                    self._cond.notify_all()
                    break
                stopped = self._stopped or slot not in self._actors
            self._kill(handle)
            if stopped:
                return
            if ok:
                continue  # a reload committed meanwhile: load the new model
            if loaded[0] and loaded[1][0] == "loaded":
                reason = _failure(*placed)
            else:
                reason = _failure(*loaded)
            message = f"a replacement model actor failed: {reason}"
            with self._cond:
                self._error = message
            logger.error("model worker pool {}: {}; again in {:g}s", self.name, message, delay)
            time.sleep(delay)
            delay = min(2 * delay, REPLACE_BACKOFF_S[1])
        logger.info(
            "model worker pool {}: replacement {} ready on node {}, {:.1f}s",
            self.name, _where(slot), (slot.node or "?")[:12], time.monotonic() - began,
        )  # fmt: skip

    def _kill(self, handle: Any) -> None:
        if handle is None or self._ray is None:
            return
        with contextlib.suppress(Exception):  # already dead, or its node gone
            self._ray.kill(handle, no_restart=True)

    def _unavailable(self, reason: str, *, refused: bool = False) -> WorkerUnavailable:
        with self._cond:
            self._error = reason
        logger.error("model worker pool {} unavailable: {}", self.name, reason)
        return WorkerUnavailable(reason, refused=refused)


def _losses(ray: Any) -> tuple[type[BaseException], ...]:
    """What Ray raises when the actor, its process or its node is gone."""
    errors = ray.exceptions
    return (
        errors.RayActorError,  # ActorDiedError, ActorUnavailableError
        errors.NodeDiedError,
        errors.ObjectLostError,  # OwnerDiedError, ObjectReconstructionFailedError, ...
        errors.WorkerCrashedError,
        errors.OutOfMemoryError,  # Ray's memory monitor killed it
        errors.LocalRayletDiedError,
    )


def _where(actor: _Actor) -> str:
    node = f" on node {actor.node[:12]}" if actor.node else ""
    return f"model actor {actor.number}{node}"


def _brief(exc: BaseException) -> str:
    """An exception's first line: Ray's run to dozens."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _failure(ok: bool, answer: Any) -> str:
    """Why a load, stage or placement did not succeed, from ``_settle``'s pair."""
    if not ok:
        return _brief(answer)
    if isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[1], str):
        return answer[1]
    return repr(answer)[:300]
