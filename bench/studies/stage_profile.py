"""Study: where a file's time goes in the daemon, stage by stage, and which process pays it.

    .venv/bin/python -m bench.studies.stage_profile [--set plumbing-photos,plumbing-small,shipped]
        [--repeats N] [--out DIR]

Each set is dropped at once into a running daemon (after one warm-up drop), ``--repeats``
times. Per repeat, ``/metrics`` is scraped before and after: the service's stages
(``artd_stage_seconds{stage}``: claim, decode, encode, commit; per file) and the model call
(``artd_batch_seconds``, per image, the worker's IPC included) in milliseconds per file, and
the CPU each process spent per file (``/proc/PID/stat``): the service, its model worker(s)
and its decoder processes. Stage times are wall times summed over the threads that ran them,
so they add up to more than the wall time per file when stages overlap. Medians.

Sets: ``plumbing-photos`` and ``plumbing-small`` are the plumbing benchmark's (suite member
``daemon``: the seed's one-pass checkpoint at the post's 128 px stretch, photo-sized and small
JPEGs); ``shipped`` is the shipped model at the daemon's defaults on the photo mix.

``--baseline-rev REV`` (default: the last in-process revision, bench.shared.baseline) runs
that revision's daemon beside this one on the same files, the drops taking turns: its wall
and CPU per file (it has no stage metrics; its model ran in the service process), the
before of the before-and-after. ``--baseline-rev none`` skips it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import core
from bench.shared.baseline import DEFAULT_REV, baseline_tree
from bench.shared.common import DEFAULT_OUT, bench_checkpoints, fmt, median, table
from bench.shared.daemon_harness import Daemon, drop_and_wait, shipped_settings
from bench.shared.datasets import photo_mix, small_set
from bench.shared.scrape import delta, scrape
from bench.studies.daemon_cpu import cpu_seconds, descendants
from daemon.metrics import STAGES

SETS = ("plumbing-photos", "plumbing-small", "shipped")


def process_cpu(daemon: Daemon) -> dict[str, float]:
    """CPU seconds (user + system) so far: the service, its model workers, its decoders."""
    assert daemon.proc is not None
    workers = {w["pid"] for w in daemon.health().get("workers", []) if w.get("pid")}
    totals = {"service": sum(cpu_seconds(daemon.proc.pid)), "worker": 0.0, "decoders": 0.0}
    for pid in descendants(daemon.proc.pid):
        try:
            spent = sum(cpu_seconds(pid))
        except FileNotFoundError:
            continue
        totals["worker" if pid in workers else "decoders"] += spent
    return totals


def profile_once(daemon: Daemon, files: list[Path], staging: Path) -> dict[str, float]:
    """One drop of ``files``: milliseconds per file for each stage, process and the wall."""
    before, cpu_before = scrape(daemon.port), process_cpu(daemon)
    wall = drop_and_wait(daemon, files, staging)
    after, cpu_after = scrape(daemon.port), process_cpu(daemon)
    n = len(files)
    row = {"wall": 1000 * wall / n}
    for process, spent in cpu_after.items():
        row[f"cpu_{process}"] = 1000 * (spent - cpu_before[process]) / n
    if 'artd_stage_seconds_count{stage="claim"}' not in after:
        return row  # an earlier revision: no stages
    for stage in STAGES:
        row[stage] = 1000 * delta(before, after, f'artd_stage_seconds_sum{{stage="{stage}"}}') / n
    images = delta(before, after, "artd_batch_size_sum")
    row["model"] = 1000 * delta(before, after, "artd_batch_seconds_sum") / max(images, 1)
    row["batch"] = images / max(delta(before, after, "artd_batch_size_count"), 1)
    return row


def profile(name: str, out: Path, repeats: int, baseline: Path | None) -> dict[str, dict]:
    """Medians of ``repeats`` drops of set ``name`` (after a warm-up drop) into this daemon
    and, when given, the ``baseline`` tree's, taking turns: {"now": ..., "before": ...}."""
    work = out / "stage-profile" / name
    if name == "shipped":
        files = photo_mix(out, 24)
        checkpoint, settings = core.DEFAULT_CHECKPOINT, shipped_settings()
    else:
        files = photo_mix(out, 24) if name == "plumbing-photos" else small_set(out, 64)
        checkpoint, settings = bench_checkpoints(out)[0], {}
    trees = {"now": None} | ({"before": baseline} if baseline else {})
    rows: dict[str, list[dict[str, float]]] = {which: [] for which in trees}
    with contextlib.ExitStack() as stack:
        daemons = {
            which: stack.enter_context(
                Daemon(work / f"root-{which}", checkpoint, "cpu", **settings, **tree_of(tree))
            )
            for which, tree in trees.items()
        }
        for daemon in daemons.values():  # warm-up: every shape seen once
            drop_and_wait(daemon, files, work / "staging")
        for _ in range(repeats):
            for which, daemon in daemons.items():
                rows[which].append(profile_once(daemon, files, work / "staging"))
    return {
        which: {key: median([row[key] for row in got]) for key in got[0]} | {"files": len(files)}
        for which, got in rows.items()
    }


def tree_of(tree: Path | None) -> dict[str, Path]:
    return {} if tree is None else {"tree": tree}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studies.stage_profile", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--set", default=",".join(SETS), help=f"comma-separated: {SETS}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--baseline-rev", default=DEFAULT_REV, help="a git rev, or none")
    args = parser.parse_args()
    wanted = [name for name in args.set.split(",") if name]
    unknown = sorted(set(wanted) - set(SETS))
    if unknown:
        parser.error(f"--set: unknown {unknown}; choose from {SETS}")
    baseline = None if args.baseline_rev == "none" else baseline_tree(args.baseline_rev)[0]
    figures = {name: profile(name, args.out, args.repeats, baseline) for name in wanted}
    columns = ["wall", *STAGES, "model", "cpu_service", "cpu_worker", "cpu_decoders"]
    headers = ["set", "daemon", "files", "batch", *[f"{c} ms" for c in columns]]
    rows = [
        [name, which, int(f["files"]), fmt(f.get("batch", float("nan")))]
        + [fmt(f.get(c, float("nan")), 2) for c in columns]
        for name, both in figures.items()
        for which, f in both.items()
    ]
    print(
        f"### Per-file profile ({args.repeats} drops, medians; stage and model columns are "
        "wall ms per file, cpu columns core-ms per file)\n\n" + table(headers, rows)
    )
    (args.out / "stage-profile.json").write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
