"""Study: where the daemon's CPU goes per file, the main process (intake, claims, engine, encode,
commit) against its decoder processes, user and system time, over repeated drops.

    .venv/bin/python -m bench.studies.daemon_cpu [photos|small] [--rounds N]

Needs the data and model of a full run (``python -m bench --only process --out bench/out-full``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from bench.shared.common import ROOT
from bench.shared.daemon_harness import Daemon, drop_and_wait

DATA = {"photos": "photos-200", "small": "small-300"}


def descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        listed = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True
        ).stdout.split()
        children = [int(child) for child in listed]
        found += children
        queue += children
    return found


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) seconds of one process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def snapshot(pid: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """(main process, sum of its descendants: the forkserver and the decoder workers)."""
    user = system = 0.0
    for child in descendants(pid):
        try:
            u, s = cpu_seconds(child)
        except FileNotFoundError:
            continue
        user, system = user + u, system + s
    return cpu_seconds(pid), (user, system)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studies.daemon_cpu", description=__doc__.splitlines()[0]
    )
    parser.add_argument("set", nargs="?", choices=sorted(DATA), default="photos")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    out = ROOT / "bench" / "out-full"
    files = sorted((out / "data" / DATA[args.set]).glob("*.jpg"))
    if not files:
        raise SystemExit(f"no inputs in {out / 'data' / DATA[args.set]}: run a full bench first")
    work = out / "daemon-cpu"
    with Daemon(work / "root", out / "bench-model.safetensors") as daemon:
        assert daemon.proc is not None
        for _ in range(args.rounds):
            (mu0, ms0), (wu0, ws0) = snapshot(daemon.proc.pid)
            seconds = drop_and_wait(daemon, files, work / "staging")
            (mu1, ms1), (wu1, ws1) = snapshot(daemon.proc.pid)
            per = 1000 / len(files)
            print(
                f"{len(files) / seconds:.1f} img/s; core-ms per file: main process "
                f"user {(mu1 - mu0) * per:.1f} sys {(ms1 - ms0) * per:.1f}, decoders user "
                f"{(wu1 - wu0) * per:.1f} sys {(ws1 - ws0) * per:.1f}; "
                f"{(mu1 - mu0 + ms1 - ms0 + wu1 - wu0 + ws1 - ws0) / seconds:.2f} cores busy"
            )


if __name__ == "__main__":
    main()
