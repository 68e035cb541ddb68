"""``artd process`` and ``artd generate``: run a checkpoint once and write the outputs.

``process``: files or folders through the model. The inference step is the daemon's
(core.runtime.img2img), run by a model worker as the daemon's is (daemon.workers: ``artd
process`` starts a supervised process of its own), with the daemon's crash rule
(daemon.workers.retries): a worker that dies with a batch is restarted and the batch retried
in halves, so an input that kills the model costs that input (``crashed_repeatedly``), not
the run. A denoise checkpoint's noise is seeded from each input file's content hash, so the
same file gives the same pixels on every run. Files are decoded in the daemon's decoder
processes (daemon.decoders: one that crashes a decoder twice is ``decoder_crashed``, not the
end of the run), fed by a thread pool that also encodes and writes, while the worker works on
the previous chunk, so the model is rarely idle. Bad inputs are reported and skipped; the
rest are still processed.

``generate``: images from noise (core.diffusion.generate), named ``<seed>-<index>.<ext>``; a name
that already exists is never overwritten: the run is refused before the model starts.

Outputs are written durably (core.durable). Colour, transparency, quality, the AI label and
the input's metadata follow ``OutputSettings`` (core.runtime.img2img, docs/colour.md); with
``format = "same"`` each output's extension is the input's format, sniffed from its first bytes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from loguru import logger
from tqdm import tqdm

from core.diffusion.sampler_settings import SamplerRequest
from core.durable import sha256_stream, write_atomic
from core.images import loading
from core.images.decode import ImageError, sniff
from core.images.origin import Origin
from core.images.pixels import ResizePolicy
from core.outputs.encoding import OUTPUT_FORMATS, encode
from core.outputs.result import encode_result
from core.outputs.settings import OutputSettings
from core.reasons import Reason
from core.runtime.batcher import map_by_shape
from core.runtime.engine import Engine
from core.runtime.errors import InferenceError
from daemon.decoders import DecoderPool, DecodeSettings
from daemon.workers import (
    SOLO_CRASH_LIMIT,
    CrashLedger,
    ModelInfo,
    ModelWorker,
    ResultPixels,
    WorkerResult,
)
from daemon.workers.inprocess import InProcessWorker
from daemon.workers.retries import run_batch

EXIT_OK, EXIT_FATAL, EXIT_SOME_REJECTED = 0, 1, 2
# Files decoded ahead of the engine; bounds memory however many inputs there are.
CHUNK = 32
# The engine thread is the critical path; the decode/encode threads around it only have to
# keep up. At equal priority they took the engine's core: Engine.run cost 16-17 ms per photo
# inside a run against about 5 ms alone. With the I/O threads at nice +10, 300 small files
# took 2.48 against 3.53 s and 200 photos 3.05 against 3.33 s (medians of 4 alternating pairs).
IO_NICENESS = 10

Rejected = tuple[Path, str, str]  # (input, reason, message)
Answer = tuple[WorkerResult, ModelInfo | None]  # a result and the model that computed it


@dataclass
class Job:
    """One input file and the output it becomes; ``pixels`` only while it waits for the model."""

    source: Path
    output: Path
    pixels: np.ndarray | None = None
    sha256: str = ""
    origin: Origin | None = None


@dataclass
class Report:
    """What a run wrote and what it refused, and the command's exit status from that."""

    written: list[Path] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_REJECTED if self.rejected else EXIT_OK


def lower_thread_priority(niceness: int = IO_NICENESS) -> None:
    """Make the calling thread yield the CPU to the rest of the process (Linux: threads have
    their own nice value; elsewhere the call would renice a whole process, so it is skipped)."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            tid = threading.get_native_id()
            # Relative to what the thread has (a unit's Nice= stays the floor), at most 19.
            os.setpriority(
                os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness)
            )


def output_name(relative: Path, extension: str) -> Path:
    """``a.jpg`` -> ``a.jpg.png``: keeping the input's extension means ``a.jpg`` and ``a.png``
    never write to one output."""
    return relative.with_name(relative.name + extension)


def collect(
    paths: Sequence[Path], out: Path, extension: str | OutputSettings
) -> Iterator[Job | tuple[Path, str]]:
    """Jobs for every file under ``paths`` (hidden files and symlinked folders skipped);
    ``extension`` may be the OutputSettings, whose ``format = "same"`` sniffs each file."""
    seen: set[Path] = set()
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        source = Path(root, name)
                        yield from _job(source, source.relative_to(path), out, extension, seen)
        elif path.exists():
            yield from _job(path, Path(path.name), out, extension, seen)
        else:
            yield path, f"{Reason.UNREADABLE}: no such file or folder"


def _job(
    source: Path, relative: Path, out: Path, extension: str | OutputSettings, seen: set[Path]
) -> Iterator[Job | tuple[Path, str]]:
    if isinstance(extension, OutputSettings):
        extension = OUTPUT_FORMATS[extension.format_for(Origin(format=_sniffed(source)))]
    output = out / output_name(relative, extension)
    if output in seen:
        yield source, f"{Reason.DUPLICATE_OUTPUT}: another input also writes {output}"
        return
    seen.add(output)
    yield Job(source, output)


def process(
    paths: Sequence[Path],
    out: Path,
    model: Engine | ModelWorker,
    *,
    size: int,
    resize: ResizePolicy,
    fmt: str,
    workers: int | None = None,
    progress: bool | None = None,
    request: SamplerRequest | None = None,
    output: OutputSettings | None = None,
    crash_limit: int = SOLO_CRASH_LIMIT,
    decoders: DecoderPool | None = None,
) -> Report:
    """Process every input under ``paths`` into ``out``; never raises for a bad input.
    ``model``: a started model worker, or an engine of this process (run in it, no
    isolation); ``request``: the sampler settings asked for (unset fields: the checkpoint's);
    ``output``: every output setting (OutputSettings.from_settings), which then wins over
    ``size``, ``resize`` and ``fmt``; ``crash_limit``: solo crashes of the worker in a row
    that reject an input as ``crashed_repeatedly`` (daemon.workers.CrashLedger);
    ``decoders``: a pool from :func:`decoder_pool` started earlier (the caller closes it),
    else the run starts and closes its own."""
    worker = InProcessWorker(model) if isinstance(model, Engine) else model
    run = ModelRun(worker, output or OutputSettings(size, resize, fmt), request, crash_limit)
    report = Report()
    jobs: list[Job] = []
    for item in collect(paths, out, run.output):
        if isinstance(item, Job):
            jobs.append(item)
        else:
            report.rejected.append((item[0], *item[1].split(": ", 1)))  # type: ignore[arg-type]
    show_bar = sys.stderr.isatty() if progress is None else progress
    workers = io_threads(workers)
    own = decoders is None
    decoders = decoders or decoder_pool(run.output, workers)
    try:
        with (
            tqdm(total=len(jobs), unit="img", disable=not show_bar) as bar,
            ThreadPoolExecutor(
                workers, thread_name_prefix="artd-io", initializer=lower_thread_priority
            ) as pool,
        ):
            _run(jobs, run, Io(pool, decoders), report, bar)
    finally:
        if own:
            decoders.close()
    for source, reason, message in report.rejected:
        logger.warning("rejected {}: {} ({})", source, reason, message)
    return report


@dataclass
class ModelRun:
    """A run's model worker, settings and crash ledger (keyed by output path)."""

    worker: ModelWorker
    output: OutputSettings
    request: SamplerRequest | None
    crash_limit: int
    ledger: CrashLedger[Path] = field(init=False)
    unavailable: str | None = None  # the worker cannot serve: the rest is rejected at once

    def __post_init__(self) -> None:
        self.ledger = CrashLedger(self.crash_limit)

    def model_results(self, jobs: list[Job]) -> list[Answer]:
        """Each job's result and the model that computed it, batched by shape, in order;
        never raises (a death is retried by the crash rule, daemon.workers.retries)."""
        model = self.worker.model
        max_batch = model.max_batch if model is not None else 4
        return map_by_shape(jobs, lambda job: np.shape(job.pixels), max_batch, self._batch)

    def _batch(self, jobs: list[Job]) -> list[Answer]:
        if self.unavailable is not None:
            return [(InferenceError(Reason.MODEL_FAILED, self.unavailable), None)] * len(jobs)
        keys = [job.output for job in jobs]
        outcome = run_batch(
            self.worker,
            self.ledger,
            keys,
            [job.pixels for job in jobs],  # type: ignore[misc]
            [job.sha256 for job in jobs],
            self.request,
            self.output,
        )
        if outcome.unavailable is not None:
            self.unavailable = f"no model worker: {outcome.unavailable.reason}"[:300]
        answers: list[Answer] = []
        for key in keys:
            if key in outcome.answered:
                answers.append(outcome.answered[key])
            elif key in outcome.crashed:
                error = InferenceError(Reason.CRASHED_REPEATEDLY, outcome.crashed[key])
                answers.append((error, None))
            else:
                message = self.unavailable or "not run"
                answers.append((InferenceError(Reason.MODEL_FAILED, message), None))
        return answers


def io_threads(asked: int | None) -> int:
    """The threads that decode and write: ``asked``, else a few more than the cores."""
    return asked or min(8, (os.cpu_count() or 2) + 2)


def decoder_pool(output: OutputSettings, workers: int | None = None) -> DecoderPool:
    """A run's decoder processes, started in the background (the forkserver's start takes a
    moment: a caller may start them while its model loads): one per core, at most one per
    I/O thread."""
    pool = DecoderPool(
        min(io_threads(workers), os.cpu_count() or 1), DecodeSettings.for_output(output)
    )
    pool.start()
    return pool


@dataclass
class Io:
    """A run's I/O: the threads that decode and write, and the decoder processes."""

    pool: ThreadPoolExecutor
    decoders: DecoderPool

    def decode(self, jobs: list[Job], settings: OutputSettings) -> list[Future[Job]]:
        return [self.pool.submit(decode_job, job, settings, self.decoders) for job in jobs]


def _run(jobs: list[Job], run: ModelRun, io: Io, report: Report, bar: tqdm) -> None:
    """Decode a chunk ahead, run the one before it, write its outputs behind."""
    settings = run.output
    pool = io.pool
    writes: list[tuple[Job, Future[Path]]] = []
    decoded = io.decode(jobs[:CHUNK], settings)
    for start in range(0, len(jobs), CHUNK):
        ready, failed = _gather(decoded, jobs[start : start + CHUNK])
        # Start decoding the next chunk before the engine takes this one.
        upcoming = jobs[start + CHUNK : start + 2 * CHUNK]
        decoded = io.decode(upcoming, settings)
        report.rejected.extend(failed)
        results = run.model_results(ready)
        for job, (result, model) in zip(ready, results, strict=True):
            job.pixels = None
            if isinstance(result, InferenceError):
                report.rejected.append((job.source, result.reason, result.message))
            elif model is not None:
                writes.append((job, pool.submit(_write, run, model, job, result)))
        bar.update(len(ready) + len(failed))
        writes = _drain(writes, report, wait=False)
    _drain(writes, report, wait=True)


class GenerateRefused(Exception):
    """``artd generate`` cannot start: a reconstruct checkpoint, or an output name taken."""


def generated_name(seed: int, index: int, extension: str) -> str:
    """Image ``index`` of the run with ``seed``: ``<seed>-<index, 4 digits>.<ext>``."""
    return f"{seed}-{index:04d}{extension}"


def generate_files(
    engine: Engine,
    out: Path,
    *,
    count: int,
    width: int,
    height: int,
    seed: int,
    fmt: str,
    request: SamplerRequest | None = None,
    guide: Path | None = None,
) -> Report:
    """``count`` images from noise into ``out`` (module docstring), each with its provenance.

    Raises GenerateRefused before any model work when the checkpoint cannot generate or an
    output name exists; an image the model fails on, or one whose write fails, is reported
    in the Report and the rest are still written."""
    from core.diffusion.generate import generate, generated_provenance, generation_settings

    guide_image = None
    if guide is not None:
        try:
            guide_image = loading.load(guide, max(width, height), "stretch")
        except ImageError as exc:
            raise GenerateRefused(f"--guide {guide}: {exc}") from None
        if not engine.sampler.takes_guide:
            raise GenerateRefused(
                f"--guide: model {engine.version} is a {engine.objective} checkpoint, "
                "which takes no guide image"
            )
    try:
        generation_settings(engine, request, guided=guide is not None)
    except ValueError as exc:
        raise GenerateRefused(str(exc)) from None
    targets = [out / generated_name(seed, i, OUTPUT_FORMATS[fmt]) for i in range(count)]
    taken = [path for path in targets if path.exists() or path.is_symlink()]
    if taken:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise GenerateRefused(
            f"{taken[0]} already exists{more}: artd generate never overwrites a file; "
            "choose another --seed or --out"
        )
    logger.info(
        "generating {} image(s) of {}x{} with seed {} (--seed {} repeats this run)",
        count,
        width,
        height,
        seed,
        seed,
    )
    results = generate(engine, count, width, height, seed, request, guide_image)
    out.mkdir(parents=True, exist_ok=True)
    recorded: dict[str, object] = {"width": width, "height": height, "format": fmt}
    report = Report()
    for index, (target, result) in enumerate(zip(targets, results, strict=True)):
        if isinstance(result, InferenceError):
            report.rejected.append((target, result.reason, result.message))
            continue
        meta = generated_provenance(engine, seed, index, request, recorded, guide is not None)
        try:
            if target.exists() or target.is_symlink():  # written by someone else meanwhile
                raise FileExistsError(f"{target} appeared during the run; not overwritten")
            write_atomic(target, encode(result, fmt, metadata=meta))
        except OSError as exc:
            report.rejected.append((target, Reason.WRITE_FAILED, str(exc)))
            continue
        report.written.append(target)
    for target, reason, message in report.rejected:
        logger.warning("not written {}: {} ({})", target, reason, message)
    return report


def decode_job(job: Job, settings: OutputSettings, decoders: DecoderPool) -> Job:
    """``job`` with its input hashed here and decoded for the model in ``decoders`` (its
    own process: a decoder that crashes twice on it raises ImageError ``decoder_crashed``,
    and the run goes on); raises ImageError (a bad file) or OSError (an unreadable one).
    A symlink the user named, or found in a folder, is read through (the pool's decoders
    never follow one themselves)."""
    source = os.path.realpath(job.source)
    with open(source, "rb") as handle:
        job.sha256 = sha256_stream(handle)
    # HWC uint8, RGBA where the input has transparency (core.runtime.img2img re-attaches it).
    job.pixels, _, job.origin = decoders.decode_with_origin(
        source, DecodeSettings.for_output(settings)
    )
    return job


def _sniffed(path: Path) -> str | None:
    """The format named by the file's first bytes (None: unknown or unreadable)."""
    try:
        with path.open("rb") as handle:
            return sniff(handle.read(64))
    except OSError:
        return None


def encode_job(
    job: Job,
    model: ModelInfo,
    result: ResultPixels,
    output: OutputSettings,
    request: SamplerRequest | None,
) -> bytes:
    """The output file's bytes of ``job``'s result, computed by ``model``, with its provenance."""
    settings = model.sampler_settings(request)
    return encode_result(result.image(), model.identity, job.sha256, output, settings, job.origin)


def _write(run: ModelRun, model: ModelInfo, job: Job, result: ResultPixels) -> Path:
    data = encode_job(job, model, result, run.output, run.request)
    job.output.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(job.output, data)  # never a half-written output under its final name
    return job.output


def _gather(futures: list[Future[Job]], jobs: list[Job]) -> tuple[list[Job], list[Rejected]]:
    ready, failed = [], []
    for job, future in zip(jobs, futures, strict=True):
        try:
            ready.append(future.result())
        except ImageError as exc:
            failed.append((job.source, exc.reason, exc.message))
        except OSError as exc:
            failed.append((job.source, Reason.UNREADABLE, str(exc)))
    return ready, failed


def _drain(
    writes: list[tuple[Job, Future[Path]]], report: Report, *, wait: bool
) -> list[tuple[Job, Future[Path]]]:
    left = []
    for job, future in writes:
        if not wait and not future.done():
            left.append((job, future))
            continue
        try:
            report.written.append(future.result())
        except OSError as exc:
            report.rejected.append((job.source, Reason.WRITE_FAILED, str(exc)))
    return left
