"""Peak resident memory (VmHWM) of the daemon working through a backlog of small files that
sit in the inbox before it starts, 100 files and 5,000 files: it must be flat."""

from __future__ import annotations

import shutil
import time

from bench.common import Run, bench_checkpoints, fmt, table
from bench.daemon_run import Daemon, wait_settled
from bench.datasets import small_set


def backlog_peak(run: Run, count: int) -> dict[str, float]:
    checkpoint, _ = bench_checkpoints(run.out)
    sources = small_set(run.out, run.pick(64, 300))
    root = run.out / "memory" / f"root-{count}"
    # The backlog is in the inbox before the daemon starts (copied from a cached staging set).
    staging = run.out / "memory" / f"backlog-{count}"
    if not (staging.exists() and len(list(staging.iterdir())) == count):
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for i in range(count):
            shutil.copyfile(sources[i % len(sources)], staging / f"b-{i:05d}.jpg")
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(staging, root / "inbox")
    with Daemon(root, checkpoint, run.device, fresh=False) as daemon:
        started = time.perf_counter()
        # Quick mode stops after 1,000 outputs: the whole backlog is still listed and waiting.
        settled = min(count, run.pick(1000, count))
        wait_settled(daemon, settled, timeout_s=1800, poll_s=0.5)
        seconds = time.perf_counter() - started
        return {"files": count, "measured_after": settled, "peak_mb": daemon.status("VmHWM") / 1024,
                "end_mb": daemon.status("VmRSS") / 1024, "ips": settled / seconds}  # fmt: skip


def bench(run: Run) -> None:
    results = [backlog_peak(run, n) for n in (100, 5000)]
    run.figures["memory"] = results
    rows = [
        [r["files"], r["measured_after"], f"**{fmt(r['peak_mb'], 0)}**", fmt(r["end_mb"], 0),
         fmt(r["ips"])]
        for r in results
    ]  # fmt: skip
    headers = [
        "backlog (files)",
        "outputs when read",
        "peak RSS MB (VmHWM)",
        "RSS at end MB",
        "img/s through it",
    ]
    run.report("### Daemon memory with a backlog (small files)\n\n" + table(headers, rows) + "\n")
