"""Suite member ``memory``: peak resident memory of the daemon through a backlog.

Peak resident memory (VmHWM) of the daemon working through a backlog of small files that
sit in the inbox before it starts, 100 files and 5,000 files: it must be flat. Then the
shipped model at the daemon's defaults (512 px, 10 network passes per image) through a
smaller backlog, since it takes seconds per image."""

from __future__ import annotations

import shutil
import time

from bench.shared.common import Run, fmt, table
from bench.shared.daemon_harness import Daemon, daemon_model, wait_settled
from bench.shared.datasets import small_set


def backlog_peak(run: Run, count: int, which: str = "bench") -> dict[str, float]:
    """Peak and end RSS through a ``count``-file backlog, with the :func:`daemon_model`
    ``which``."""
    checkpoint, settings = daemon_model(run.out, which)
    name = "" if which == "bench" else f"{which}-"
    sources = small_set(run.out, run.pick(64, 300))
    root = run.out / "memory" / f"root-{name}{count}"
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
    with Daemon(root, checkpoint, run.device, fresh=False, **settings) as daemon:
        started = time.perf_counter()
        # Quick mode stops after 1,000 outputs: the whole backlog is still listed and waiting.
        settled = min(count, run.pick(1000, count))
        wait_settled(daemon, settled, timeout_s=1800, poll_s=0.5)
        seconds = time.perf_counter() - started
        return {"model": which, "files": count,
                "measured_after": settled, "peak_mb": daemon.status("VmHWM") / 1024,
                "end_mb": daemon.status("VmRSS") / 1024, "ips": settled / seconds}  # fmt: skip


def bench(run: Run) -> None:
    results = [backlog_peak(run, n) for n in (100, 5000)]
    results.append(backlog_peak(run, run.pick(24, 100), "shipped"))
    run.figures["memory"] = results
    rows = [
        [r["model"], r["files"], r["measured_after"], f"**{fmt(r['peak_mb'], 0)}**",
         fmt(r["end_mb"], 0), fmt(r["ips"])]
        for r in results
    ]  # fmt: skip
    headers = [
        "model",
        "backlog (files)",
        "outputs when read",
        "peak RSS MB (VmHWM)",
        "RSS at end MB",
        "img/s through it",
    ]
    run.report("### Daemon memory with a backlog (small files)\n\n" + table(headers, rows) + "\n")
