"""``artd process``: run files or folders through a checkpoint once and write the outputs.

Decoding and encoding run in a thread pool (Pillow releases the GIL) while the engine
works on the previous chunk, so the model is rarely idle. Bad inputs are reported and
skipped; the rest are still processed.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger
from PIL import Image
from tqdm import tqdm

from core import imaging
from core.engine import Engine, InferenceError
from core.provenance import provenance
from daemon.priority import lower_thread_priority

EXIT_OK, EXIT_FATAL, EXIT_SOME_REJECTED = 0, 1, 2
# Files decoded ahead of the engine; bounds memory however many inputs there are.
CHUNK = 32


@dataclass
class Job:
    source: Path
    output: Path
    image: Image.Image | None = None
    sha256: str = ""


@dataclass
class Report:
    written: list[Path] = field(default_factory=list)
    rejected: list[tuple[Path, str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_REJECTED if self.rejected else EXIT_OK


def output_name(relative: Path, extension: str) -> Path:
    """``a.jpg`` -> ``a.jpg.png``: keeping the input's extension means ``a.jpg`` and ``a.png``
    never write to one output."""
    return relative.with_name(relative.name + extension)


def collect(paths: Sequence[Path], out: Path, extension: str) -> Iterator[Job | tuple[Path, str]]:
    """Jobs for every file under ``paths`` (hidden files and symlinked folders skipped)."""
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
            yield path, "unreadable: no such file or folder"


def _job(
    source: Path, relative: Path, out: Path, extension: str, seen: set[Path]
) -> Iterator[Job | tuple[Path, str]]:
    output = out / output_name(relative, extension)
    if output in seen:
        yield source, f"duplicate_output: another input also writes {output}"
        return
    seen.add(output)
    yield Job(source, output)


def process(
    paths: Sequence[Path],
    out: Path,
    engine: Engine,
    *,
    size: int,
    resize: imaging.ResizePolicy,
    fmt: str,
    workers: int | None = None,
    progress: bool | None = None,
) -> Report:
    """Process every input under ``paths`` into ``out``; never raises for a bad input."""
    extension = imaging.OUTPUT_FORMATS[fmt]
    settings = {"size": size, "resize": resize, "format": fmt}
    report = Report()
    jobs: list[Job] = []
    for item in collect(paths, out, extension):
        if isinstance(item, Job):
            jobs.append(item)
        else:
            report.rejected.append((item[0], *item[1].split(": ", 1)))  # type: ignore[arg-type]
    show_bar = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(jobs), unit="img", disable=not show_bar)
    workers = workers or min(8, (os.cpu_count() or 2) + 2)

    def decode(job: Job) -> Job:
        data = job.source.read_bytes()
        job.sha256 = hashlib.sha256(data).hexdigest()
        job.image = imaging.load(data, size, resize)
        return job

    def encode(job: Job, image: Image.Image) -> Path:
        meta = provenance(engine.checkpoint, job.sha256, settings)
        data = imaging.encode(image, fmt, metadata=meta)
        job.output.parent.mkdir(parents=True, exist_ok=True)
        temp = job.output.with_name(f".{job.output.name}.tmp-{os.getpid()}")
        temp.write_bytes(data)
        os.replace(temp, job.output)  # never a half-written output under its final name
        return job.output

    with ThreadPoolExecutor(
        workers, thread_name_prefix="artd-io", initializer=lower_thread_priority
    ) as pool:
        pending_writes: list[tuple[Job, Future[Path]]] = []
        decoded = [pool.submit(decode, job) for job in jobs[:CHUNK]]
        for start in range(0, len(jobs), CHUNK):
            ready, failed = _gather(decoded, jobs[start : start + CHUNK])
            # Start decoding the next chunk before the engine takes this one.
            decoded = [pool.submit(decode, job) for job in jobs[start + CHUNK : start + 2 * CHUNK]]
            report.rejected.extend(failed)
            results = engine.run([job.image for job in ready]) if ready else []
            for job, result in zip(ready, results, strict=True):
                job.image = None
                if isinstance(result, InferenceError):
                    report.rejected.append((job.source, result.reason, result.message))
                else:
                    pending_writes.append((job, pool.submit(encode, job, result)))
            bar.update(len(ready) + len(failed))
            pending_writes = _drain(pending_writes, report, wait=False)
        _drain(pending_writes, report, wait=True)
    bar.close()
    for source, reason, message in report.rejected:
        logger.warning("rejected {}: {} ({})", source, reason, message)
    return report


def _gather(
    futures: list[Future[Job]], jobs: list[Job]
) -> tuple[list[Job], list[tuple[Path, str, str]]]:
    ready, failed = [], []
    for job, future in zip(jobs, futures, strict=True):
        try:
            ready.append(future.result())
        except imaging.ImageError as exc:
            failed.append((job.source, exc.reason, exc.message))
        except OSError as exc:
            failed.append((job.source, "unreadable", str(exc)))
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
            report.rejected.append((job.source, "write_failed", str(exc)))
    return left
