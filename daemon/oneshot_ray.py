"""``artd process --ray [ADDRESS]``: the one-shot job (daemon.oneshot) as a Ray Data pipeline.

    read -> decode (tasks) -> model (a pool of actors) -> encode and write (tasks)

The same inputs, output names, decoding, model calls and encoding as ``artd process``
(daemon.oneshot's ``collect``, ``decode_job``, ``ModelRun`` and ``encode_job``), spread over a
Ray cluster (daemon.cluster: ``ray_address``; 'local': a Ray of this process's own):

- **Streaming**: blocks of :data:`BLOCK_FILES` paths flow through, at most
  :data:`OBJECT_STORE_BYTES` of them in the object store at once; the driver sees only one
  small row per file (path, outcome, reason), never pixels, so memory stays flat however many
  files there are. Pixels travel between stages pickled in one binary column.
- **The model**: each actor holds a :class:`~daemon.workers.LocalModelWorker` (the model in a
  supervised process of its own) and runs its batches by the daemon's crash rule
  (daemon.workers.retries): an input that kills the model costs that input
  (``crashed_repeatedly``), not the job. The checkpoint's bytes come through the object
  store, so any node can load it (cached per node under the temp folder by its sha256, until
  an hour unused). A batch holds up to the model's ``max_batch`` files and is run by shape,
  as today.
- **Outputs**: each written atomically (core.durable) under its deterministic name; a file
  that cannot be processed gets a reason record ``<output>.error.json`` instead (reason,
  message, input path, sha256 when known), never a failed job. An input that already has its
  output or its reason record is skipped before the pipeline starts: a rerun writes nothing
  new, and delete a record to have its input tried again.
- **Node loss**: tasks are retried and actors restarted (:data:`TASK_RETRIES`,
  :data:`ACTOR_RESTARTS`, :data:`ACTOR_TASK_RETRIES`), so the work of a lost node is simply
  redone; a redone write finds its output (or record) already there and writes nothing, so
  every input ends as exactly one output or one reason record. An actor restarts only where
  its CPUs and GPUs are free: leave room elsewhere for a lost node's actors.
- **Fatal**: a model that does not load, or a model worker that cannot be restarted, fails
  the job (RayJobFailed, exit 1) with no record for the files it had: that is never a file's
  fault, and a rerun goes on from what was written.

The inputs and ``--out`` must be reachable at the same paths from every node (one machine,
or a network share mounted alike everywhere): the tasks read and write them. Content
credentials are refused (``c2pa_cert``): the signing key stays on this machine.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import pickle
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger
from tqdm import tqdm

from core.checkpoint import CheckpointError, resolve_current
from core.diffusion.sampler_settings import SamplerRequest
from core.durable import write_atomic
from core.images.decode import ImageError
from core.network.shapes import INPUT_SIZE
from core.outputs.settings import OutputSettings
from core.reasons import Reason
from core.runtime.errors import InferenceError
from daemon import cluster
from daemon.decoders import DecoderPool, DecodeSettings
from daemon.oneshot import (
    CHUNK,
    EXIT_SOME_REJECTED,
    Job,
    ModelRun,
    Report,
    collect,
    decode_job,
    encode_job,
)
from daemon.workers import SOLO_CRASH_LIMIT, EngineOptions, LocalModelWorker, WorkerUnavailable
from daemon.workers.node_cache import node_checkpoint, touch

if TYPE_CHECKING:
    import pyarrow as pa

    from daemon.settings import ProcessSettings

RECORD_SUFFIX = ".error.json"  # the quarantine's own (daemon.spool.names.SIDECAR_SUFFIX)
BLOCK_FILES = CHUNK  # paths per input block: the unit that streams through
DECODE_BATCH = 8  # files per decode or write call
# Ray Data's budget for blocks in flight (decoded pixels, results): what keeps memory flat.
OBJECT_STORE_BYTES = 256 * 1024 * 1024
# Enough for several lost nodes; finite, so that a task that kills its worker every time
# fails the job instead of looping forever.
TASK_RETRIES = 8
ACTOR_RESTARTS = 8
ACTOR_TASK_RETRIES = 8
TASK_CPUS = 1.0  # each decode or write task: Pillow works on one core


class RayJobFailed(RuntimeError):
    """The pipeline itself failed (the model does not load, the cluster went away for good):
    what was written stays, and a rerun goes on from there."""


@dataclass
class RayReport(Report):
    """A :class:`Report` plus the inputs skipped because an earlier run settled them:
    ``skipped`` (their output exists) and ``skipped_rejected`` (their reason record does).
    The exit status is 2 while any input of the job has a reason record, this run's or not."""

    skipped: list[Path] = field(default_factory=list)
    skipped_rejected: list[Path] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_REJECTED if self.rejected or self.skipped_rejected else super().exit_code

    def summary(self) -> list[str]:
        """The summary lines: counts, then this run's rejections counted by reason."""
        skipped = len(self.skipped) + len(self.skipped_rejected)
        lines = [
            f"{len(self.written)} written, {len(self.rejected)} rejected, {skipped} skipped "
            f"(already done: {len(self.skipped)} output(s), {len(self.skipped_rejected)} "
            "reason record(s))"
        ]
        by_reason = Counter(reason for _, reason, _ in self.rejected)
        if by_reason:
            counts = ", ".join(f"{reason} {n}" for reason, n in sorted(by_reason.items()))
            lines.append(f"rejected by reason: {counts}")
        return lines


def reason_record(output: Path) -> Path:
    """Where the reason record of the input that would write ``output`` goes."""
    return output.with_name(output.name + RECORD_SUFFIX)


def process_on_ray(
    paths: Sequence[Path],
    out: Path,
    settings: ProcessSettings,
    *,
    progress: bool | None = None,
) -> RayReport:
    """Process every input under ``paths`` into ``out`` on the Ray cluster of
    ``settings.ray_address`` (module docstring). Raises ClusterError (daemon.cluster: it
    names the setting) before anything is written, and RayJobFailed when the pipeline
    itself fails; never raises for a bad input."""
    output = OutputSettings.from_settings(settings)
    if output.credentials is not None:
        raise cluster.ClusterError(
            "c2pa_cert", "content credentials are not signed with --ray: the signing key "
            "stays on this machine (run without --ray to sign)"
        )  # fmt: skip
    checkpoint, data = _read_checkpoint(settings.checkpoint)
    was_connected = _ray_initialized()
    ray = cluster.connect(settings.ray_address or "local")
    try:
        _check_room(ray, settings)
        report, todo = _plan(paths, out, output)
        if todo:
            ckpt = _Checkpoint(checkpoint, hashlib.sha256(data).hexdigest(), [ray.put(data)])
            del data
            _run(todo, ckpt, output, settings, report, progress)
    finally:
        if not was_connected:
            ray.shutdown()
    for source, reason, message in report.rejected:
        logger.warning("rejected {}: {} ({})", source, reason, message)
    return report


# --- the driver ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Checkpoint:
    """The checkpoint as the actors get it: its path here (for messages), its sha256 and its
    bytes in the object store (a list, so Ray passes the reference)."""

    path: Path
    sha256: str
    ref: list[Any]


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _read_checkpoint(path: Path) -> tuple[Path, bytes]:
    """The real file behind ``path`` (a ``current`` pointer followed) and its bytes."""
    try:
        real = resolve_current(path)
        return real, real.read_bytes()
    except (CheckpointError, OSError) as exc:
        raise RayJobFailed(f"cannot load the model: {exc}") from exc


def _check_room(ray: Any, settings: ProcessSettings) -> None:
    """The actors fit (daemon.cluster.require), with a CPU left for decoding and writing."""
    actors, cpus = settings.ray_actors, settings.ray_cpus_per_actor
    cluster.require(ray, actors=actors, cpus=cpus, gpus=settings.ray_gpus_per_actor)
    have = ray.cluster_resources().get("CPU", 0.0)
    if actors * cpus + TASK_CPUS > have + 1e-9:
        raise cluster.ClusterError(
            "ray_cpus_per_actor",
            f"{actors} actor(s) x {cpus:g} CPUs leave no CPU of the cluster's {have:g} for "
            "decoding and writing (lower ray_actors or ray_cpus_per_actor)",
        )


def _plan(
    paths: Sequence[Path], out: Path, output: OutputSettings
) -> tuple[RayReport, list[dict[str, str]]]:
    """The report so far (inputs refused before any work, inputs already done) and the
    rows of the inputs left to do."""
    report = RayReport()
    todo: list[dict[str, str]] = []
    for item in collect(paths, out, output):
        if not isinstance(item, Job):
            report.rejected.append((item[0], *item[1].split(": ", 1)))  # type: ignore[arg-type]
        elif os.path.lexists(item.output):
            report.skipped.append(item.source)
        elif os.path.lexists(reason_record(item.output)):
            report.skipped_rejected.append(item.source)
        else:
            todo.append({"source": str(item.source), "output": str(item.output)})
    return report, todo


def _run(
    todo: list[dict[str, str]],
    checkpoint: _Checkpoint,
    output: OutputSettings,
    settings: ProcessSettings,
    report: RayReport,
    progress: bool | None,
) -> None:
    """The pipeline over ``todo``, each file's outcome into ``report``."""
    import ray.data

    _configure_ray_data()
    request = settings.sampler_request()
    gpus = settings.ray_gpus_per_actor
    engine = settings.engine_options()
    # The engine's own default (4 on CPU, 32 on CUDA) unless --batch says otherwise.
    batch = settings.max_batch or (32 if gpus > 0 else 4)
    blocks = max(1, math.ceil(len(todo) / BLOCK_FILES))
    # Retries and restarts go as Ray's remote args, which Ray Data 2.60 deprecates without a
    # replacement (its defaults, should they go: unbounded restarts and retries).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        pipeline = (
            ray.data.from_items(todo, override_num_blocks=blocks)
            .map_batches(
                _decode_batch,
                batch_size=DECODE_BATCH,
                batch_format="pyarrow",
                fn_kwargs={"output": output},
                num_cpus=TASK_CPUS,
                max_retries=TASK_RETRIES,
            )
            .map_batches(
                _ModelActor,
                batch_size=batch,
                batch_format="pyarrow",
                fn_constructor_kwargs={
                    "checkpoint": checkpoint,
                    "options": engine,
                    "request": request,
                    "output": output,
                    "crash_limit": SOLO_CRASH_LIMIT,
                },
                compute=ray.data.ActorPoolStrategy(size=settings.ray_actors),
                num_gpus=gpus,
                num_cpus=settings.ray_cpus_per_actor,
                max_restarts=ACTOR_RESTARTS,
                max_task_retries=ACTOR_TASK_RETRIES,
            )
            .map_batches(
                _write_batch,
                batch_size=DECODE_BATCH,
                batch_format="pyarrow",
                fn_kwargs={"output": output, "request": request},
                num_cpus=TASK_CPUS,
                max_retries=TASK_RETRIES,
            )
        )
    show_bar = sys.stderr.isatty() if progress is None else progress
    settled = 0
    try:
        with tqdm(total=len(todo), unit="img", disable=not show_bar) as bar:
            for block in pipeline.iter_batches(batch_size=None, batch_format="pyarrow"):
                rows = block.to_pylist()
                for row in rows:
                    if row["outcome"] == "written":
                        report.written.append(Path(row["output"]))
                    else:
                        report.rejected.append((Path(row["source"]), row["reason"], row["message"]))
                settled += len(rows)
                bar.update(len(rows))
    except Exception as exc:  # Ray's own errors, or a model that does not load
        # Ray's text carries the remote traceback, whose last line is the error itself.
        lines = str(exc).strip().splitlines()
        detail = lines[-1] if lines else type(exc).__name__
        raise RayJobFailed(
            f"the Ray pipeline failed after {settled} of {len(todo)} file(s): {detail[:1000]} "
            "(what was written stays; a rerun goes on from there)"
        ) from exc
    if settled != len(todo):
        logger.error("the Ray pipeline settled {} of {} file(s)", settled, len(todo))


def _configure_ray_data() -> None:
    """Streaming within a small object store budget, our progress bar instead of Ray's."""
    import ray.data

    context = ray.data.DataContext.get_current()
    limits = ray.data.ExecutionResources.for_limits(object_store_memory=OBJECT_STORE_BYTES)
    context.execution_options.resource_limits = limits
    context.execution_options.preserve_order = False
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


# --- the stages (run on the cluster's workers) ---------------------------------------------


def _row(job: Job, reason: str = "", message: str = "", payload: bytes | None = None) -> dict:
    return {
        "source": str(job.source),
        "output": str(job.output),
        "sha256": job.sha256,
        "reason": reason,
        "message": message,
        "payload": payload,
    }


def _table(rows: list[dict]) -> pa.Table:
    import pyarrow as pa

    schema = pa.schema(
        [
            ("source", pa.string()),
            ("output", pa.string()),
            ("sha256", pa.string()),
            ("reason", pa.string()),
            ("message", pa.string()),
            ("payload", pa.large_binary()),  # pickled pixels: large, not limited to 2 GiB
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def _jobs(batch: pa.Table) -> list[tuple[Job, dict]]:
    return [
        (Job(Path(row["source"]), Path(row["output"]), sha256=row.get("sha256") or ""), row)
        for row in batch.to_pylist()
    ]


@functools.cache
def _decoders() -> DecoderPool:
    """This Ray worker process's decoder process (daemon.decoders: a file that crashes it
    twice is rejected as ``decoder_crashed``, and the task goes on), started by its first
    decode task and kept for the next ones (Ray reuses its worker processes); it ends with
    the process. One: a decode task takes one CPU (TASK_CPUS)."""
    pool = DecoderPool(1, DecodeSettings(size=INPUT_SIZE))  # each call names its settings
    pool.start()
    return pool


def _decode_batch(batch: pa.Table, output: OutputSettings) -> pa.Table:
    """Read and decode each file (daemon.oneshot.decode_job, in this process's decoder); a
    file that does not decode becomes a row with its reason, never an exception."""
    rows = []
    decoders = _decoders()
    for job, _ in _jobs(batch):
        try:
            decode_job(job, output, decoders)
        except ImageError as exc:
            rows.append(_row(job, exc.reason, exc.message))
            continue
        except OSError as exc:
            rows.append(_row(job, Reason.UNREADABLE, str(exc)))
            continue
        except Exception as exc:  # a decoder's own bug: this file's, not the job's
            rows.append(_row(job, Reason.DECODER_FAILED, f"{type(exc).__name__}: {exc}"))
            continue
        payload = pickle.dumps((job.pixels, job.origin), protocol=pickle.HIGHEST_PROTOCOL)
        rows.append(_row(job, payload=payload))
    return _table(rows)


class _ModelActor:
    """One actor of the pool: a model worker on its node, its batches run by shape and by
    the crash rule (daemon.oneshot.ModelRun); rows that carry a reason pass through. A model
    that does not load, or a worker that cannot be restarted, fails the job."""

    def __init__(
        self,
        checkpoint: _Checkpoint,
        options: EngineOptions,
        request: SamplerRequest | None,
        output: OutputSettings,
        crash_limit: int,
    ) -> None:
        import ray

        path = node_checkpoint(
            checkpoint.path.name, checkpoint.sha256, lambda: ray.get(checkpoint.ref[0])
        )
        self.worker = LocalModelWorker("ray-process")
        try:
            self.worker.start(path, options)
        except WorkerUnavailable as exc:
            self.worker.stop()
            reason = exc.reason.replace(str(path), str(checkpoint.path))
            raise RuntimeError(f"cannot load the model: {reason}") from None
        self.cached = path.parent
        self.run = ModelRun(self.worker, output, request, crash_limit)

    def __call__(self, batch: pa.Table) -> pa.Table:
        touch(self.cached)
        jobs = _jobs(batch)
        rows: list[dict | None] = [None] * len(jobs)
        ready: list[tuple[int, Job]] = []
        for i, (job, row) in enumerate(jobs):
            if row["reason"]:
                rows[i] = row
            else:
                job.pixels, job.origin = pickle.loads(row["payload"])
                ready.append((i, job))
        answers = self.run.model_results([job for _, job in ready])
        if self.run.unavailable is not None:
            # The host's or the model's trouble, never a file's: no record for these files
            # (a rerun does them); the job fails, saying why.
            raise RuntimeError(f"the model worker of an actor: {self.run.unavailable}")
        for (i, job), (result, model) in zip(ready, answers, strict=True):
            origin, job.pixels = job.origin, None
            if isinstance(result, InferenceError):
                rows[i] = _row(job, result.reason, result.message)
            elif model is None:
                rows[i] = _row(job, Reason.MODEL_FAILED, "no model answered")
            else:
                payload = pickle.dumps((result, model, origin), protocol=pickle.HIGHEST_PROTOCOL)
                rows[i] = _row(job, payload=payload)
        return _table([row for row in rows if row is not None])

    def __del__(self) -> None:
        # Ray Data's graceful shutdown of the pool; a killed actor's child sees its parent
        # gone and exits, and multiprocessing's resource tracker unlinks the shared memory.
        worker = getattr(self, "worker", None)
        if worker is not None:
            with contextlib.suppress(Exception):
                worker.stop()


def _write_batch(
    batch: pa.Table, output: OutputSettings, request: SamplerRequest | None
) -> pa.Table:
    """Encode and write each result, or the reason record of each file that failed: one
    small row per file (source, output, outcome, reason, message) for the driver."""
    import pyarrow as pa

    rows = [_settle(job, row, output, request) for job, row in _jobs(batch)]
    schema = pa.schema([(name, pa.string()) for name in _SETTLED])
    return pa.Table.from_pylist(rows, schema=schema)


_SETTLED = ("source", "output", "outcome", "reason", "message")


def _settle(
    job: Job, row: dict, output: OutputSettings, request: SamplerRequest | None
) -> dict[str, str]:
    """One file's output or reason record, written atomically; a redone task finds what
    its first try wrote and writes nothing."""

    def settled(outcome: str, reason: str = "", message: str = "") -> dict[str, str]:
        values = (row["source"], row["output"], outcome, reason, message)
        return dict(zip(_SETTLED, values, strict=True))

    record = reason_record(job.output)
    if os.path.lexists(job.output):
        return settled("written")
    if os.path.lexists(record):
        return settled("rejected", *_recorded(record))
    reason, message = row["reason"], row["message"]
    if not reason:
        try:
            result, model, job.origin = pickle.loads(row["payload"])
            data = encode_job(job, model, result, output, request)
        except Exception as exc:  # an encoder's failure is this file's, not the job's
            reason, message = Reason.ENCODE_FAILED, f"{type(exc).__name__}: {exc}"[:500]
        else:
            try:
                job.output.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(job.output, data)  # never a half-written output
                return settled("written")
            except OSError as exc:
                reason, message = Reason.WRITE_FAILED, str(exc)
    entry = {
        "reason": str(reason),
        "message": message,
        "input_path": row["source"],
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if job.sha256:
        entry["sha256"] = job.sha256
    try:
        job.output.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(record, json.dumps(entry, indent=2, sort_keys=True).encode() + b"\n")
    except OSError as exc:
        message = f"{message} (and its reason record could not be written: {exc})"
    return settled("rejected", str(reason), message)


def _recorded(record: Path) -> tuple[str, str]:
    """The reason and message of an existing reason record."""
    try:
        entry = json.loads(record.read_text())
        return str(entry["reason"]), str(entry.get("message", ""))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return "unknown", f"unreadable reason record {record}: {exc}"
