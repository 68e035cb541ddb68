"""Study: what running the model in a worker process costs (the target: at most 5%), against the
in-process path it replaced, measured side by side in one run, alternating, medians.

    python -m bench.studies.worker_overhead [--part e2e|ipc|both] [--baseline-rev f070842]
        [--inputs mix|photos] [--files 32] [--repeats 5] [--ipc-repeats 30] [--batches 1 4]
        [--threads N] [--device cpu] [--out bench/out/worker-overhead]

(run as ``PYTHONPATH=. .venv/bin/python -m ...`` where the venv's install points elsewhere).
Writes OUT/worker_overhead.json; the e2e inputs are cached under OUT/data, each daemon's root
and log under OUT/e2e.

**e2e**: the daemon of this checkout (model in a supervised worker process) against the daemon
of ``--baseline-rev`` (default f070842, the last one that ran the model in the service
process), extracted once with ``git archive`` into ``build/baseline-REV`` and run from there
(cwd and ``PYTHONPATH``). Both run the shipped model (this checkout's
``core/assets/default.safetensors``; the JSON records whether the baseline's is the same
bytes) at the daemon's default size and resize (``shipped_settings()``), every other setting
at its default, on ``--device``. Both daemons are started once and warmed with one untimed
drop; then each repeat drops the same ``--files`` inputs at once (the photo mix of
bench.shared.datasets, or scikit-image's photos cycled, JPEG q90) and times until every output
is committed, the two daemons taking turns. Reports s/image each, their ratio and the
worker's overhead in percent.

**ipc**: the worker's own cost per batch, isolated from decoding, encoding and the spool: the
same batches (``--batches``, default 1 and 4: scikit-image photos centre-cropped and resized
by the product's resize to the daemon's size, HWC uint8 of one shape, as the pipeline hands
them to ``run_batch``; the daemon's own OutputSettings and SamplerRequest) through a
LocalModelWorker (a child process, shared memory) and an InProcessWorker (an Engine in this
process), taking turns. Reports ms per batch and per image each and the difference (the IPC
and the process boundary), and the local worker's own account of it (its BatchTiming: the
wall time of run() less the model's time inside the child): the wall-time difference carries
the model's own jitter, the BatchTiming one does not, so on a busy machine trust the latter.

Held equal: the checkpoint file, the settings (size, resize, sampler, output), the inputs and
their order, the device, the torch threads (e2e: both engines take the same default, half the
cores; ipc: ``--threads`` in the EngineOptions of both, so the child and this process set the
same), and the machine's load (turns alternate; the other daemon sits idle meanwhile).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

import core
from bench.shared.baseline import DEFAULT_REV, baseline_tree, run_header
from bench.shared.common import ROOT, alternate, fmt, median, table
from bench.shared.daemon_harness import Daemon, drop_and_wait, shipped_settings
from bench.shared.datasets import QUALITY, photo_mix
from bench.shared.photos import PHOTOS, SHEET_PHOTOS, photo, square
from bench.studies.daemon_cpu import cpu_seconds

if TYPE_CHECKING:
    from core.diffusion.sampler_settings import SamplerRequest
    from core.outputs.settings import OutputSettings
    from daemon.workers.interface import ModelWorker

OUT = ROOT / "bench" / "out" / "worker-overhead"
TARGET_PERCENT = 5.0


# -- e2e ----------------------------------------------------------------------------------


def same_bytes(a: Path, b: Path) -> bool:
    if not (a.exists() and b.exists()) or a.stat().st_size != b.stat().st_size:
        return False
    return hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def skimage_files(out: Path, count: int) -> list[Path]:
    """``count`` JPEGs (q90) of scikit-image's photos, cycled in :data:`PHOTOS`' order."""
    folder = out / "data" / f"skimage-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        name = PHOTOS[i % len(PHOTOS)]
        path = folder / f"{i:04d}-{name}.jpg"
        if not path.exists():
            Image.fromarray(photo(name)).save(path, "JPEG", quality=QUALITY)
        files.append(path)
    return files


def in_worker(port: int) -> bool:
    """Whether the daemon on ``port`` runs its model in a worker process (artd_worker_up)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return re.search(r"^artd_worker_up\{", text, re.M) is not None


def end_to_end(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The daemon of this checkout against the baseline rev's: s/image, ratio, overhead."""
    tree, commit = baseline_tree(args.baseline_rev)
    checkpoint = core.DEFAULT_CHECKPOINT
    identical = same_bytes(checkpoint, tree / "core" / "assets" / "default.safetensors")
    if args.inputs == "mix":
        files = photo_mix(out, -(-args.files // 4) * 4)
    else:
        files = skimage_files(out, args.files)
    settings = shipped_settings()
    print(f"e2e: {len(files)} {args.inputs} files at {settings}, baseline {commit[:12]} "
          f"({tree}), checkpoint identical in both trees: {identical}", flush=True)  # fmt: skip
    work = out / "e2e"
    sides = {"worker": ROOT, "in-process": tree}
    daemons = {
        name: Daemon(work / name / "root", checkpoint, args.device, tree=where, **settings)
        for name, where in sides.items()
    }
    placement: dict[str, bool] = {}
    with contextlib.ExitStack() as running:
        for name, daemon in daemons.items():
            running.enter_context(daemon)
            placement[name] = in_worker(daemon.port)
        if placement != {"worker": True, "in-process": False}:
            print(f"  warning: model in a worker process {placement}: not the comparison meant")
        for name, daemon in daemons.items():  # warm-up: every shape seen once, untimed
            drop_and_wait(daemon, files, work / name / "staging")

        def runner(name: str) -> Callable[[], float]:
            def run() -> float:
                seconds = drop_and_wait(daemons[name], files, work / name / "staging")
                print(f"  {name}: {seconds / len(files):.4f} s/image", flush=True)
                return seconds

            return run

        times = alternate({name: runner(name) for name in daemons}, args.repeats)
    per_image = {name: median(values) / len(files) for name, values in times.items()}
    ratio = per_image["worker"] / per_image["in-process"]
    return {
        "baseline_rev": commit,
        "baseline_tree": str(tree),
        "checkpoint": str(checkpoint),
        "checkpoint_identical": identical,
        "settings": settings,
        "device": args.device,
        "inputs": args.inputs,
        "files": len(files),
        "repeats": args.repeats,
        "model_in_worker": placement,
        "seconds": times,
        "s_per_image": per_image,
        "ratio": ratio,
        "overhead_percent": (ratio - 1) * 100,
    }


def e2e_table(fig: dict[str, Any]) -> str:
    rows = []
    for name, s in fig["s_per_image"].items():
        where = "worker process" if fig["model_in_worker"].get(name) else "service process"
        rev = "this checkout" if name == "worker" else fig["baseline_rev"][:12]
        rows.append([name, rev, where, fmt(s, 4), fmt(len(fig["seconds"][name]), 0)])
    verdict = "ok" if fig["overhead_percent"] <= TARGET_PERCENT else "over"
    return (
        f"### End to end: {fig['files']} files ({fig['inputs']}) dropped at once, median of "
        f"{fig['repeats']}\n\n"
        + table(["daemon", "rev", "model in", "s/image", "repeats"], rows)
        + f"\n\nworker / in-process = {fig['ratio']:.3f}: overhead {fig['overhead_percent']:+.1f}%"
        f" (target at most {TARGET_PERCENT:.0f}%: {verdict})"
    )


# -- ipc ----------------------------------------------------------------------------------


def ipc_cost(args: argparse.Namespace) -> dict[str, Any]:
    """The same batches through a LocalModelWorker and an InProcessWorker, taking turns."""
    from core.outputs.settings import OutputSettings
    from daemon.settings import DaemonSettings
    from daemon.workers.inprocess import InProcessWorker
    from daemon.workers.local import LocalModelWorker

    settings = DaemonSettings(device=args.device)
    threads = args.threads or max(1, (os.cpu_count() or 2) // 2)  # the engine's own default
    options = dataclasses.replace(settings.engine_options(), cpu_threads=threads)
    output, request = OutputSettings.from_settings(settings), settings.sampler_request()
    names = [SHEET_PHOTOS[i % len(SHEET_PHOTOS)] for i in range(max(args.batches))]
    images = [square(photo(name), settings.size) for name in names]
    hashes = [hashlib.sha256(image.tobytes()).hexdigest() for image in images]
    checkpoint = core.DEFAULT_CHECKPOINT
    local, inproc = LocalModelWorker("bench"), InProcessWorker()
    print(f"ipc: {checkpoint.name}, {options}, batches of {images[0].shape}", flush=True)
    figures: dict[str, Any] = {"options": dataclasses.asdict(options), "shape": images[0].shape}
    try:
        model, here = local.start(checkpoint, options), inproc.start(checkpoint, options)
        figures |= {"precision": model.precision, "max_batch": model.max_batch}
        if (here.precision, here.device) != (model.precision, model.device):
            print(f"  warning: in-process {here.device} {here.precision}, local "
                  f"{model.device} {model.precision}: not like for like")  # fmt: skip
            figures["precision_in_process"] = here.precision
        batches = {
            str(size): one_size(
                {"local": local, "in-process": inproc}, images[:size], hashes[:size],
                request, output, args.ipc_repeats,
            )
            for size in args.batches
        }  # fmt: skip
        figures["torch_threads_here"] = _torch_threads()
    finally:
        local.stop()
        inproc.stop()
    figures |= {"threads": threads, "repeats": args.ipc_repeats, "batches": batches}
    return figures


def one_size(
    workers: dict[str, ModelWorker], batch: list[np.ndarray], sha256s: list[str],
    request: SamplerRequest, output: OutputSettings, repeats: int,
) -> dict[str, Any]:  # fmt: skip
    """One batch through each worker ``repeats`` times, taking turns, after one untimed call
    each (this shape's first); "local" must be a LocalModelWorker (its BatchTiming is read)."""
    overheads: list[float] = []
    # CPU seconds per call: of the process that ran the model, and of this one (for "local",
    # the service's side of the IPC); robust to a busy machine where wall times are not.
    cpu: dict[str, dict[str, list[float]]] = {n: {"model": [], "here": []} for n in workers}

    def through(name: str) -> Callable[[], float]:
        worker = workers[name]

        def run() -> float:
            model_pid = worker.health().pid or os.getpid()
            model0, here0 = sum(cpu_seconds(model_pid)), sum(cpu_seconds(os.getpid()))
            started = time.perf_counter()
            worker.run(batch, sha256s, request, output)
            wall = time.perf_counter() - started
            model1, here1 = sum(cpu_seconds(model_pid)), sum(cpu_seconds(os.getpid()))
            cpu[name]["model"].append(model1 - model0)
            cpu[name]["here"].append(0.0 if model_pid == os.getpid() else here1 - here0)
            timing = getattr(worker, "last_timing", None)
            if name == "local" and timing is not None:
                overheads.append(timing.overhead_s)
            return wall

        return run

    runners = {name: through(name) for name in workers}
    alternate(runners, 1)  # warm-up
    overheads.clear()
    for lists in cpu.values():
        lists["model"].clear()
        lists["here"].clear()
    times = alternate(runners, repeats)
    ms = {name: median(values) * 1000 for name, values in times.items()}
    size = len(batch)
    print(f"  batch {size}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()), flush=True)
    return {
        "seconds": times,
        "ms_per_batch": ms,
        "ms_per_image": {name: value / size for name, value in ms.items()},
        "difference_ms_per_batch": ms["local"] - ms["in-process"],
        "difference_ms_per_image": (ms["local"] - ms["in-process"]) / size,
        "local_overhead_ms_per_batch": median(overheads) * 1000,
        "local_overhead_s": overheads,
        "cpu_ms_per_image": {
            name: {part: 1000 * sum(v) / len(v) / size for part, v in lists.items()}
            for name, lists in cpu.items()
        },
    }


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def ipc_table(fig: dict[str, Any]) -> str:
    rows = []
    for size, b in fig["batches"].items():
        ms, per = b["ms_per_batch"], b["ms_per_image"]
        share = b["difference_ms_per_batch"] / ms["in-process"] * 100
        rows.append([
            size, fmt(ms["local"], 1), fmt(ms["in-process"], 1), fmt(per["local"], 1),
            fmt(per["in-process"], 1), fmt(b["difference_ms_per_image"], 2), f"{share:+.1f}%",
            fmt(b["local_overhead_ms_per_batch"] / int(size), 2),
            fmt(b["cpu_ms_per_image"]["local"]["model"], 1),
            fmt(b["cpu_ms_per_image"]["local"]["here"], 2),
            fmt(b["cpu_ms_per_image"]["in-process"]["model"], 1),
        ])  # fmt: skip
    headers = ["batch", "local ms/batch", "in-process ms/batch", "local ms/image",
               "in-process ms/image", "difference ms/image", "difference",
               "local run() - model ms/image", "local child CPU ms/image",
               "local service-side CPU ms/image", "in-process CPU ms/image"]  # fmt: skip
    return (
        f"### IPC: the same batches through each worker, median of {fig['repeats']} "
        f"({fig['threads']} torch thread(s) each, {fig['precision']}, {tuple(fig['shape'])})\n\n"
        + table(headers, rows)
    )


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studies.worker_overhead", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--part", choices=("e2e", "ipc", "both"), default="both")
    parser.add_argument("--baseline-rev", default=DEFAULT_REV, help="the in-process daemon")
    parser.add_argument(
        "--inputs", choices=("mix", "photos"), default="mix",
        help="e2e inputs: the photo mix (4032x3024 .. 800x600) or skimage's",
    )  # fmt: skip
    parser.add_argument("--files", type=int, default=32, help="e2e files per drop (mix: x4)")
    parser.add_argument("--repeats", type=int, default=5, help="e2e drops per daemon")
    parser.add_argument("--ipc-repeats", type=int, default=30, help="ipc calls per worker")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="ipc sizes")
    parser.add_argument(
        "--threads", type=int, default=0,
        help="ipc torch threads, both workers (0: the engine's, half the cores)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = run_header()
    sections = []
    if args.part in ("e2e", "both"):
        figures["e2e"] = end_to_end(args, out)
        sections.append(e2e_table(figures["e2e"]))
    if args.part in ("ipc", "both"):
        figures["ipc"] = ipc_cost(args)
        sections.append(ipc_table(figures["ipc"]))
    print("\n\n".join(sections))
    path = out / "worker_overhead.json"
    path.write_text(json.dumps(figures, indent=2, default=_plain) + "\n")
    print(f"\nfigures: {path}")
    return 0


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


if __name__ == "__main__":
    raise SystemExit(main())
