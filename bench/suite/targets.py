"""Suite member ``targets`` (runs last): the speed and memory targets against this run's figures.

Each target is met, not met, or not measured (its family did not run)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.shared.common import Run, table

# (target, figure key, what is compared, predicate on the value)
TARGETS: list[tuple[str, str, Callable[[Any], float], Callable[[float], bool], str]] = [
    ("`artd process` >= 5x post, photos", "process.photos", lambda f: f["ratio_steady"],
     lambda v: v >= 5, "{:.2f}x"),
    ("`artd process` >= 3x post, small", "process.small", lambda f: f["ratio_steady"],
     lambda v: v >= 3, "{:.2f}x"),
    ("daemon >= 4.5x post, photos", "daemon.photos", lambda f: f["ratio"], lambda v: v >= 4.5,
     "{:.2f}x"),
    ("daemon >= 2.7x post, small", "daemon.small", lambda f: f["ratio"], lambda v: v >= 2.7,
     "{:.2f}x"),
    ("outputs within 2/255 of the post's fp32 result", "process.small",
     lambda f: f["max_diff_255"], lambda v: v <= 2, "{:.0f}/255 (small)"),
    ("outputs within 2/255 of the post's fp32 result", "process.photos",
     lambda f: f["max_diff_255"], lambda v: v <= 2, "{:.0f}/255 (photos)"),
    ("latency < settle + 200 ms", "latency", lambda f: (f["median_s"] - f["settle_s"]) * 1000,
     lambda v: v < 200, "{:.0f} ms over settle"),
    ("peak RSS < 1.5 GB (5,000 backlog)", "memory", lambda f: f[1]["peak_mb"],
     lambda v: v < 1536, "{:.0f} MB"),
    ("peak RSS flat 100 -> 5,000 (within 10%)", "memory",
     lambda f: f[1]["peak_mb"] / f[0]["peak_mb"], lambda v: v <= 1.10, "x{:.2f}"),
    ("peak RSS < 1.5 GB (shipped model, 512 px)", "memory", lambda f: f[2]["peak_mb"],
     lambda v: v < 1536, "{:.0f} MB"),
    ("shipped model <= 0.5 s per 512 px image (daemon defaults)", "daemon.shipped",
     lambda f: f["s_per_image"], lambda v: v <= 0.5, "{:.3f} s"),
    ("shipped model >= 5x the previous shipped model", "daemon.shipped",
     lambda f: f.get("speedup_vs_previous", float("nan")), lambda v: v >= 5, "{:.2f}x"),
    ("training >= 2x post, perceptual on", "training.perceptual_on", lambda f: f["ratio"],
     lambda v: v >= 2, "{:.2f}x"),
]  # fmt: skip


def fraction_rows(run: Run) -> list[list[str]]:
    """Our pipelines' throughput as a fraction of the limit the floor figures imply."""
    limits = run.figures.get("floors", {}).get("limit_ips", {})
    rows = []
    for path, key in (("`artd process`", "artd_steady_ips"), ("daemon", "daemon_ips")):
        family = "process" if key.startswith("artd") else "daemon"
        for name, limit in limits.items():
            figures = run.figures.get(f"{family}.{name}")
            if figures:
                share = figures[key] / limit
                run.figures[f"fraction.{family}.{name}"] = share
                rows.append([f"{path} >= 85% of the limit, {name}", f"{share:.0%}",
                             "met" if share >= 0.85 else "**not met**"])  # fmt: skip
    return rows


def bench(run: Run) -> None:
    rows = []
    for target, key, value, ok, shown in TARGETS:
        figures = run.figures.get(key)
        if figures is None:
            rows.append([target, "not measured", "-"])
            continue
        v = value(figures)
        rows.append([target, shown.format(v), "met" if ok(v) else "**not met**"])
    rows += fraction_rows(run)
    run.report("### Targets\n\n" + table(["target", "measured", "status"], rows) + "\n")
