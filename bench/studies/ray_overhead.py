"""Study: the daemon's model on a Ray cluster against its local worker, on the same files.

    .venv/bin/python -m bench.studies.ray_overhead [--model shipped|bench] [--files 24]
        [--repeats 3] [--out DIR]

A real two-node cluster on this machine (bench.shared.ray_cluster: a head and a second node,
each its own raylet, in a private network namespace; root), and three daemons on three data
roots, started once and then taking turns on the same drop of ``--files`` photo-mix JPEGs
(medians of ``--repeats``): the local worker; Ray with one model actor; Ray with two actors,
one per node. Reports seconds per image, the Ray paths' overhead per image against the local
worker, and per batch (the daemon's own ``artd_batch_seconds`` over ``artd_batch_size``).
On one 2-core machine two nodes share the same cores: this measures what Ray costs, not
what a second machine would add (docs/benchmarks.md, "Ray").
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

from bench.shared.common import DEFAULT_OUT, alternate, fmt, median, table
from bench.shared.daemon_harness import Daemon, daemon_model, drop_and_wait
from bench.shared.datasets import photo_mix
from bench.shared.ray_cluster import RayCluster
from bench.shared.scrape import delta, scrape

# Half a CPU an actor: the one-actor pool and the two-actor pool fit on two 1-CPU nodes at once.
CPUS_PER_ACTOR = 0.5


def configurations(address: str) -> dict[str, dict[str, object]]:
    """Each daemon's extra settings, by name."""
    ray = {"ray_address": address, "ray_cpus_per_actor": CPUS_PER_ACTOR}
    return {
        "local worker": {},
        "Ray, 1 actor": ray | {"ray_actors": 1},
        "Ray, 2 actors (2 nodes)": ray | {"ray_actors": 2},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studies.ray_overhead", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", choices=("shipped", "bench"), default="shipped")
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    out = args.out.absolute()
    files = photo_mix(out, -(-args.files // 4) * 4)
    checkpoint, settings = daemon_model(out, args.model)
    work = out / "ray-overhead"
    per_batch: dict[str, list[float]] = {}
    with RayCluster(head_cpus=1, node2_cpus=1) as cluster, cluster.namespace.entered():
        daemons = {
            name: Daemon(work / str(i) / "root", checkpoint, "cpu", **settings, **extra)
            for i, (name, extra) in enumerate(configurations(cluster.address).items())
        }
        with contextlib.ExitStack() as running:
            for daemon in daemons.values():
                running.enter_context(daemon)
            for name, daemon in daemons.items():  # warm-up: every shape seen once
                drop_and_wait(daemon, files, work / "staging")
                per_batch[name] = []

            def runner(name: str, daemon: Daemon) -> float:
                before = scrape(daemon.port)
                seconds = drop_and_wait(daemon, files, work / "staging")
                after = scrape(daemon.port)
                batches = delta(before, after, "artd_batch_size_count")
                per_batch[name].append(delta(before, after, "artd_batch_seconds_sum") / batches)
                print(f"  {name}: {seconds / len(files):.4f} s/image", flush=True)
                return seconds

            times = alternate(
                {name: lambda n=name, d=daemon: runner(n, d) for name, daemon in daemons.items()},
                args.repeats,
            )
    n = len(files)
    local = median(times["local worker"]) / n
    local_batch = median(per_batch["local worker"])
    figures = {
        name: {
            "s_per_image": median(values) / n,
            "overhead_ms_per_image": 1000 * (median(values) / n - local),
            "s_per_batch": median(per_batch[name]),
            "overhead_ms_per_batch": 1000 * (median(per_batch[name]) - local_batch),
        }
        for name, values in times.items()
    }
    rows = [
        [name, fmt(f["s_per_image"], 4), fmt(f["overhead_ms_per_image"], 1),
         fmt(f["s_per_batch"], 4), fmt(f["overhead_ms_per_batch"], 1)]
        for name, f in figures.items()
    ]  # fmt: skip
    print(
        f"### The model on Ray against the local worker ({n} photo-mix files, {args.model} "
        f"model at {settings or 'the post loop settings'}, {args.repeats} alternating "
        "repeats, medians)\n\n"
        + table(["daemon", "s/image", "overhead ms/image", "s/batch", "overhead ms/batch"], rows)
    )
    (out / "ray-overhead.json").write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
