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
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import core
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
    workers = {w["pid"] for w in daemon.health()["workers"] if w.get("pid")}
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
    for stage in STAGES:
        row[stage] = 1000 * delta(before, after, f'artd_stage_seconds_sum{{stage="{stage}"}}') / n
    images = delta(before, after, "artd_batch_size_sum")
    row["model"] = 1000 * delta(before, after, "artd_batch_seconds_sum") / max(images, 1)
    row["batch"] = images / max(delta(before, after, "artd_batch_size_count"), 1)
    for process, spent in cpu_after.items():
        row[f"cpu_{process}"] = 1000 * (spent - cpu_before[process]) / n
    return row


def profile(name: str, out: Path, repeats: int) -> dict[str, float]:
    """Medians of ``repeats`` drops of set ``name`` (after a warm-up drop)."""
    work = out / "stage-profile" / name
    if name == "shipped":
        files = photo_mix(out, 24)
        checkpoint, settings = core.DEFAULT_CHECKPOINT, shipped_settings()
    else:
        files = photo_mix(out, 24) if name == "plumbing-photos" else small_set(out, 64)
        checkpoint, settings = bench_checkpoints(out)[0], {}
    with Daemon(work / "root", checkpoint, "cpu", **settings) as daemon:
        drop_and_wait(daemon, files, work / "staging")  # warm-up: every shape seen once
        rows = [profile_once(daemon, files, work / "staging") for _ in range(repeats)]
    return {key: median([row[key] for row in rows]) for key in rows[0]} | {"files": len(files)}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studies.stage_profile", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--set", default=",".join(SETS), help=f"comma-separated: {SETS}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    wanted = [name for name in args.set.split(",") if name]
    unknown = sorted(set(wanted) - set(SETS))
    if unknown:
        parser.error(f"--set: unknown {unknown}; choose from {SETS}")
    figures = {name: profile(name, args.out, args.repeats) for name in wanted}
    columns = ["wall", *STAGES, "model", "cpu_service", "cpu_worker", "cpu_decoders"]
    headers = ["set", "files", "batch", *[f"{c} ms" for c in columns]]
    rows = [
        [name, int(f["files"]), fmt(f["batch"]), *[fmt(f[c], 2) for c in columns]]
        for name, f in figures.items()
    ]
    print(
        f"### Per-file profile ({args.repeats} drops, medians; stage and model columns are "
        "wall ms per file, cpu columns core-ms per file)\n\n" + table(headers, rows)
    )
    (args.out / "stage-profile.json").write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
