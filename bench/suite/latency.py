"""Suite member ``latency``: drop-to-output latency of one file on an idle daemon.

The file is written into the inbox (like ``cp``) and the clock stops when its output
exists. ``settle_seconds`` is configured; the figure that matters is latency minus settle
(target: under 200 ms, set with the one-pass bench model). Measured again with the shipped
model at the daemon's defaults (512 px, its recommended sampler settings), whose latency is
mostly its sampling."""

from __future__ import annotations

import os
import shutil
import time

from bench.shared.common import Run, fmt, median, table
from bench.shared.daemon_harness import Daemon, daemon_model
from bench.shared.datasets import small_set

SETTLE_S = 1.0


def drop_latency(run: Run, which: str) -> list[float]:
    """Seconds from each drop into an idle daemon's inbox to its output, with the
    :func:`daemon_model` ``which``."""
    checkpoint, settings = daemon_model(run.out, which)
    source = small_set(run.out, run.pick(64, 300))[0]
    samples = []
    root = run.out / "latency" / ("root" if which == "bench" else which)
    with Daemon(root, checkpoint, run.device, settle_seconds=SETTLE_S, **settings) as d:
        time.sleep(2)  # let start-up work (scan, probe, first heartbeat) finish: "idle"
        for i in range(run.pick(5, 15)):
            output = d.root / "outbox" / f"one-{i}.jpg.png"
            started = time.perf_counter()
            shutil.copyfile(source, d.root / "inbox" / f"one-{i}.jpg")
            while not os.path.exists(output):
                if time.perf_counter() - started > 60:
                    raise RuntimeError(f"no output after 60 s; see {d.log}")
                time.sleep(0.002)
            samples.append(time.perf_counter() - started)
            time.sleep(1.5)  # idle again before the next drop
    return samples


MODELS = (  # (daemon_model, figures key, table label)
    ("bench", "latency", "bench model (128 px, one pass)"),
    ("shipped", "latency.shipped", "shipped model (daemon defaults)"),
)


def bench(run: Run) -> None:
    rows = []
    for which, key, label in MODELS:
        samples = drop_latency(run, which)
        latency = median(samples)
        run.figures[key] = {
            "settle_s": SETTLE_S, "median_s": latency, "max_s": max(samples), "samples": samples,
        }  # fmt: skip
        over = fmt((latency - SETTLE_S) * 1000, 0)
        rows.append([label, fmt(SETTLE_S, 1), len(samples), fmt(latency * 1000, 0),
                     fmt(max(samples) * 1000, 0), f"**{over}**"])  # fmt: skip
    headers = ["model", "settle s", "drops", "median ms", "max ms", "median minus settle, ms"]
    run.report(
        "### Drop-to-output latency, one file, idle daemon\n\n" + table(headers, rows) + "\n"
    )
