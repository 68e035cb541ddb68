"""Study: what a torch-free service changes at start, against the revision whose service
imported torch, measured side by side in one run, alternating, medians.

    python -m bench.studies.service_start [--baseline-rev fbb928c] [--repeats 5] [--warmup 1]
        [--device cpu] [--out bench/out/service-start]

(run as ``PYTHONPATH=. .venv/bin/python -m ...`` where the venv's install points elsewhere).
Writes OUT/service_start.json; the input is cached under OUT/data, each daemon's root and log
under OUT/runs.

The daemon of this checkout (the service imports no torch; only its model worker does)
against the daemon of ``--baseline-rev`` (default fbb928c, the last one whose service imported
torch), extracted once with ``git archive`` into ``build/baseline-REV`` and run from there (cwd
and ``PYTHONPATH``). Each turn starts one daemon on an empty root and measures:

- **ready_s**: from launching ``python -m daemon`` to ``/healthz`` answering 200 (the service
  serves HTTP only once its model worker has loaded the model), polled every 0.1 s by the
  harness (bench.shared.daemon_harness.Daemon);
- **first_output_s**: one scikit-image photo (astronaut, JPEG q90) renamed into the inbox of
  the ready daemon, until its output is committed to the outbox (polled every 0.02 s);
- then, with that output committed: the VmRSS of the service process (the daemon's own pid),
  of its model worker (the pid /healthz reports) and of all its descendants summed (model
  worker, resource tracker, decoders' forkserver and decoders: a sum of RSS, so pages shared
  between them count more than once), and whether ``libtorch`` is mapped in the service and
  in the worker (their ``/proc/PID/maps``);
- **stop_s**: SIGTERM to the service's exit; the next turn begins once every process of this
  one is gone.

The two daemons take turns (``--repeats`` each) after ``--warmup`` untimed turns each (the
page cache fills, and each tree's first start writes its bytecode, unless
``PYTHONDONTWRITEBYTECODE`` is set: then every start of either tree compiles its own modules,
as the JSON records). Reports medians per tree and the ratio of ready_s, baseline / this
checkout.

Held equal: the checkpoint file (this checkout's ``core/assets/default.safetensors``; the JSON
records whether the baseline's is the same bytes), the settings (the daemon's own size and
resize, ``shipped_settings()``, every other setting at its default, torch threads included),
the device, the input, an empty root per turn, and the machine's load (one daemon runs at a
time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import core
from bench.shared.baseline import baseline_tree, run_header
from bench.shared.common import ROOT, alternate, fmt, median, table
from bench.shared.daemon_harness import Daemon, drop_and_wait, shipped_settings
from bench.studies.reload_memory import rss_mib
from bench.studies.worker_overhead import same_bytes, skimage_files

OUT = ROOT / "bench" / "out" / "service-start"
# The last revision whose service process imported torch (the one before the service lost it).
TORCH_SERVICE_REV = "fbb928c"
MEASURES = ("ready_s", "first_output_s", "stop_s", "service_rss_mib", "worker_rss_mib",
            "children_rss_mib")  # fmt: skip


# -- /proc --------------------------------------------------------------------------------


def maps_libtorch(pid: int) -> bool:
    """Whether a ``libtorch`` shared object is mapped in ``pid`` (its /proc/PID/maps)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, found by scanning /proc for each process's PPid."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("PPid:"):
                parents.setdefault(int(line.split()[1]), []).append(int(entry.name))
                break
    found, level = [], [pid]
    while level:
        level = [child for parent in level for child in parents.get(parent, [])]
        found += level
    return found


def command_line(pid: int, limit: int = 160) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:limit]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return not any(line.startswith("State:\tZ") for line in status.splitlines())


def wait_gone(pids: list[int], timeout_s: float = 60.0) -> list[int]:
    """Wait until none of ``pids`` is alive; those still alive at the end."""
    deadline = time.monotonic() + timeout_s
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if alive(p)]
    return left


# -- one turn -----------------------------------------------------------------------------


def one_start(
    name: str, tree: Path, photo: Path, work: Path, device: str, settings: dict[str, object]
) -> dict[str, Any]:
    """Start ``tree``'s daemon on an empty root, drop ``photo``, read /proc, stop it."""
    root, staging = work / "root", work / "staging"
    shutil.rmtree(root, ignore_errors=True)  # emptied here, not inside the timed start
    daemon = Daemon(root, core.DEFAULT_CHECKPOINT, device, tree=tree, **settings)
    started = time.perf_counter()
    with daemon:
        ready = time.perf_counter() - started
        assert daemon.proc is not None
        pid = daemon.proc.pid
        first = drop_and_wait(daemon, [photo], staging)
        workers = [w["pid"] for w in daemon.health().get("workers", []) if w.get("pid")]
        children = descendants(pid)
        processes = [
            {"pid": p, "rss_mib": rss_mib(p), "libtorch": maps_libtorch(p),
             "model_worker": p in workers, "command": command_line(p)}
            for p in children
        ]  # fmt: skip
        mapped = [p for p in processes if p["rss_mib"] is not None]  # not gone meanwhile
        row: dict[str, Any] = {
            "ready_s": ready,
            "first_output_s": first,
            "service_rss_mib": daemon.status("VmRSS") / 1024,
            "worker_rss_mib": sum(p["rss_mib"] for p in mapped if p["model_worker"]),
            "children_rss_mib": sum(p["rss_mib"] for p in mapped),
            "service_libtorch": maps_libtorch(pid),
            "worker_libtorch": any(p["libtorch"] for p in processes if p["model_worker"]),
            "model_workers": len(workers),
            "processes": processes,
        }
        stopping = time.perf_counter()  # leaving the block: SIGTERM, wait for the exit
    stop = time.perf_counter() - stopping
    row |= {"stop_s": stop, "exit_code": daemon.proc.returncode}
    left = wait_gone(children)
    if left:
        print(f"  warning: {name}: processes {left} still alive 60 s after the service exited")
    row["left_alive"] = left
    print(
        f"  {name}: ready {ready:.2f} s, first output {first:.2f} s, service "
        f"{row['service_rss_mib']:.0f} MiB (libtorch {row['service_libtorch']}), worker "
        f"{row['worker_rss_mib']:.0f} MiB, all children {row['children_rss_mib']:.0f} MiB, "
        f"stop {stop:.2f} s",
        flush=True,
    )
    return row


def service_start(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """This checkout's daemon against the baseline rev's, turn by turn; medians, ratio."""
    tree, commit = baseline_tree(args.baseline_rev)
    checkpoint = core.DEFAULT_CHECKPOINT
    identical = same_bytes(checkpoint, tree / "core" / "assets" / "default.safetensors")
    photo = skimage_files(out, 1)[0]
    settings = shipped_settings()
    print(f"{photo.name} at {settings} on {args.device}, baseline {commit[:12]} ({tree}), "
          f"checkpoint identical in both trees: {identical}", flush=True)  # fmt: skip
    sides = {"this checkout": ROOT, "baseline": tree}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}

    def runner(name: str, timed: bool) -> Callable[[], float]:
        def run() -> float:
            where = out / "runs" / name.replace(" ", "-")
            row = one_start(name, sides[name], photo, where, args.device, settings)
            if timed:
                rows[name].append(row)
            return row["ready_s"]

        return run

    if args.warmup:
        print(f"warm-up ({args.warmup} untimed turn(s) each)", flush=True)
        alternate({name: runner(name, False) for name in sides}, args.warmup)
    alternate({name: runner(name, True) for name in sides}, args.repeats)
    medians = {
        name: {key: median([r[key] for r in turns]) for key in MEASURES}
        | {key: all(r[key] for r in turns) for key in ("service_libtorch", "worker_libtorch")}
        for name, turns in rows.items()
    }
    ready = {name: m["ready_s"] for name, m in medians.items()}
    return {
        "baseline_rev": commit,
        "baseline_tree": str(tree),
        "checkpoint": str(checkpoint),
        "checkpoint_identical": identical,
        "input": str(photo),
        "settings": settings,
        "device": args.device,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "turns": rows,
        "medians": medians,
        "ready_ratio_baseline_over_new": ready["baseline"] / ready["this checkout"],
    }


def report(fig: dict[str, Any]) -> str:
    rows = []
    for name, m in fig["medians"].items():
        dirty = " + changes" if fig["head_dirty"] else ""
        rev = fig["baseline_rev"][:12] if name == "baseline" else fig["head"][:12] + dirty
        rows.append([
            name, rev, fmt(m["ready_s"], 2), fmt(m["first_output_s"], 2),
            fmt(m["service_rss_mib"], 0), "yes" if m["service_libtorch"] else "no",
            fmt(m["worker_rss_mib"], 0), fmt(m["children_rss_mib"], 0), fmt(m["stop_s"], 2),
        ])  # fmt: skip
    headers = ["daemon", "rev", "ready s", "first output s", "service MiB",
               "libtorch in service", "worker MiB", "all children MiB", "stop s"]  # fmt: skip
    return (
        f"### Service start: the shipped model on {fig['device']}, median of {fig['repeats']} "
        f"alternating turns\n\n"
        + table(headers, rows)
        + f"\n\nready_s baseline / this checkout = {fig['ready_ratio_baseline_over_new']:.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studies.service_start", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--baseline-rev", default=TORCH_SERVICE_REV)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed turns each, first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = run_header()
    figures |= service_start(args, out)
    figures["loadavg_after"] = os.getloadavg()
    print("\n" + report(figures))
    path = out / "service_start.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nfigures: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
