"""Study: ``artd process --ray`` losing a node mid-run: every input exactly once as
an output or a reason record, a rerun writes nothing, the driver's memory flat.

    PYTHONPATH=. .venv/bin/python -m bench.studies.ray_process_storm [--files 2000]
        [--broken 20] [--kill-at 0.4] [--size 256] [--actors 2] [--cpus-per-actor 1]
        [--head-cpus 3] [--node2-cpus 2] [--flat-mib 64] [--out DIR]

A two-node cluster as the Ray tests make it (bench.shared.ray_cluster): a head and a second
node, each its own raylet, in a private network namespace (root). It runs ``artd process
--ray`` on ``--files`` textured JPEGs of three sizes plus ``--broken`` broken files (empty,
not an image, cut short), with a small seeded checkpoint on the CPU in fp32 and ``--actors``
model actors of ``--cpus-per-actor`` CPUs each: Ray Data spreads them, one on each node, and
at the defaults the head has room for the one node2 loses (an actor restarts only where its
resources are). Once ``--kill-at`` of the files have settled, the second node's raylet is
``kill -9``ed; the job must go on on the head alone.

Checks (any failure: exit 1):

- exactly one of ``<name>.png`` and ``<name>.png.error.json`` per input, nothing else in the
  output folder but hidden temp files (a write cut short by the kill: counted and shown);
  every broken file has its record, every good one its output; the summary's counts;
- the rerun (on the head alone) exits as the first did and changes nothing (names and mtimes);
- the driver's memory is flat: its resident memory (sampled every 0.25 s) grows by at most
  ``--flat-mib`` from when 10 % of the files had settled to the end.

Prints a markdown table and writes ``ray-process-storm.json`` and the job's logs under
``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.shared.common import DEFAULT_OUT, ROOT, seeded_model_state, table
from bench.shared.ray_cluster import RayCluster

SIZES = ((384, 256), (256, 384), (320, 320))
BROKEN = ("empty_file", "not_an_image", "truncated")
RECORD = ".error.json"
SAMPLE_S = 0.25
MODEL = ("--device", "cpu", "--precision", "fp32")


# --- the cluster ---------------------------------------------------------------------------


# --- the inputs ----------------------------------------------------------------------------


def textured(width: int, height: int, seed: int) -> Image.Image:
    """Smooth gradients plus noise (as the tests' images): real texture, distinct per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            127 + 100 * np.sin(x / (7 + seed % 5)),
            127 + 100 * np.cos(y / (11 + seed % 3)),
            127 + 100 * np.sin((x + y) / (17 + seed % 7)),
        ],
        axis=-1,
    )
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


def make_inputs(folder: Path, files: int, broken: int) -> dict[str, str]:
    """``files`` JPEGs and ``broken`` broken files in ``folder``: name -> the reason expected
    ("" for a good file). Reuses what a run with the same counts left there."""
    manifest = folder.with_name(folder.name + ".json")  # beside: not an input
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved.get("made") == [files, broken]:
            return saved["files"]
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    for i in range(files):
        name = f"img{i:05d}.jpg"
        textured(*SIZES[i % len(SIZES)], seed=i).save(folder / name, quality=90)
        expected[name] = ""
    whole = (folder / "img00000.jpg").read_bytes()
    for i in range(broken):
        reason = BROKEN[i % len(BROKEN)]
        name = f"broken{i:03d}.jpg"
        data = {"empty_file": b"", "not_an_image": b"not a picture " * (i + 1)}.get(
            reason, whole[: len(whole) // 2 - i]
        )
        (folder / name).write_bytes(data)
        expected[name] = reason
    manifest.write_text(json.dumps({"made": [files, broken], "files": expected}))
    return expected


def checkpoint(out: Path) -> Path:
    """A small seeded model in our format (as the tests' ``pixel_checkpoint``)."""
    from core.checkpoint import CheckpointMeta, save_checkpoint

    path = out / "storm-model.safetensors"
    if not path.exists():
        save_checkpoint(path, seeded_model_state(0), CheckpointMeta(epoch=1))
    return path


# --- the run -------------------------------------------------------------------------------


def visible(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if not p.name.startswith(".")] if out.exists() else []


@dataclass
class Samples:
    """The driver's resident memory against the files settled, sampled while it runs."""

    times: list[float] = field(default_factory=list)
    settled: list[int] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)

    def at(self, fraction: float, total: int) -> float:
        """Resident memory when ``fraction`` of ``total`` had settled (NaN: never)."""
        for settled, rss in zip(self.settled, self.rss_mib, strict=True):
            if settled >= fraction * total:
                return rss
        return float("nan")


def rss_mib(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_job(
    cluster: RayCluster, argv: list[str], log: Path, out: Path, total: int, kill_at: float | None
) -> tuple[int, float, Samples, dict[str, Any]]:
    """``artd process`` in the cluster's namespace, sampled; the node2 raylet killed once
    ``kill_at`` of ``total`` files settled. (exit status, seconds, samples, the kill)."""
    samples, kill = Samples(), {}
    started = time.monotonic()
    with open(log, "w") as handle:
        job = cluster.namespace.popen(
            [sys.executable, "-m", "daemon.cli", *argv], env=cluster.env, cwd=ROOT,
            stdin=subprocess.DEVNULL, stdout=handle, stderr=handle,
        )  # fmt: skip
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            settled = len(visible(out))
            samples.times.append(time.monotonic() - started)
            samples.settled.append(settled)
            samples.rss_mib.append(rss_mib(job.pid))
            if kill_at is not None and not kill and settled >= kill_at * total:
                workers = {
                    name: [p.name for p in procs if p.name.startswith("ray::")]
                    for name, procs in cluster.pids().items()
                }
                raylet = cluster.kill_node2_raylet()
                kill.update(
                    settled=settled, at_s=time.monotonic() - started, raylet_pid=raylet.pid,
                    workers=workers,
                )  # fmt: skip
            stop.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        code = job.wait(timeout=7200)
    finally:
        stop.set()
        sampler.join()
    return code, time.monotonic() - started, samples, kill


def ledger(out: Path, expected: dict[str, str]) -> dict[str, Any]:
    """Each input exactly once as an output or a reason record (with the reason expected)."""
    problems: list[str] = []
    names = set(visible(out))
    wanted: set[str] = set()
    for name, reason in expected.items():
        output, record = f"{name}.png", f"{name}.png{RECORD}"
        has = (output in names, record in names)
        if has not in ((True, False), (False, True)):
            problems.append(f"{name}: output {has[0]}, record {has[1]}")
            continue
        wanted.add(output if has[0] else record)
        got = "" if has[0] else json.loads((out / record).read_text())["reason"]
        if got != reason:
            problems.append(f"{name}: {got or 'output'} instead of {reason or 'output'}")
    problems += [f"unexpected {name}" for name in sorted(names - wanted)]
    temps = [p.name for p in out.iterdir() if p.name.startswith(".")] if out.exists() else []
    return {
        "outputs": sum(1 for n in names if not n.endswith(RECORD)),
        "records": sum(1 for n in names if n.endswith(RECORD)),
        "temps_left": len(temps),
        "problems": problems[:50],
    }


def mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir()}


def summary_line(log: Path) -> str:
    """The job's summary: ``N written, M rejected, K skipped (...)``."""
    found = re.findall(r"\d+ written, \d+ rejected, .*", log.read_text(errors="replace"))
    return found[-1] if found else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studies.ray_process_storm", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--broken", type=int, default=20)
    parser.add_argument("--kill-at", type=float, default=0.4, help="fraction of files settled")
    parser.add_argument("--size", default="256")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--head-cpus", type=int, default=3, help="room for node2's actor")
    parser.add_argument("--node2-cpus", type=int, default=2)
    parser.add_argument("--flat-mib", type=float, default=64.0, help="allowed driver growth")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "ray-process-storm")
    args = parser.parse_args(argv)
    base: Path = args.out.resolve()
    base.mkdir(parents=True, exist_ok=True)
    expected = make_inputs(base / f"inputs-{args.files}-{args.broken}", args.files, args.broken)
    inputs = base / f"inputs-{args.files}-{args.broken}"
    total = len(expected)
    out = base / "out"
    shutil.rmtree(out, ignore_errors=True)
    model = checkpoint(base)
    cluster = RayCluster(head_cpus=args.head_cpus, node2_cpus=args.node2_cpus)
    try:
        cluster.start()
        common = [
            "process", str(inputs), "--out", str(out), "--checkpoint", str(model), *MODEL,
            "--size", args.size, "--ray", cluster.address, "--ray-actors", str(args.actors),
            "--ray-cpus-per-actor", str(args.cpus_per_actor),
        ]  # fmt: skip
        code, took, samples, kill = run_job(
            cluster, common, base / "run.log", out, total, args.kill_at
        )
        first = ledger(out, expected)
        before = mtimes(out)
        code2, took2, samples2, _ = run_job(cluster, common, base / "rerun.log", out, total, None)
        rerun_changed = sorted(
            name
            for name in set(before) | set(mtimes(out))
            if before.get(name) != mtimes(out).get(name)
        )
    finally:
        cluster.stop()
    growth = max(samples.rss_mib, default=0.0) - samples.at(0.1, total)
    good = sum(1 for reason in expected.values() if not reason)
    checks = {
        "exit status 2 (broken files rejected)": code == 2 or (code == 0 and not args.broken),
        "killed mid-run": bool(kill) and kill["settled"] < total,
        "an actor on node2 at the kill": any(
            n.startswith("ray::MapWorker") for n in kill.get("workers", {}).get("node2", [])
        ),
        "exactly once": not first["problems"],
        "outputs = good files": first["outputs"] == good,
        f"summary says {good} written": summary_line(base / "run.log").startswith(
            f"{good} written, {total - good} rejected"
        ),
        "rerun exits alike": code2 == code,
        "rerun changes nothing": not rerun_changed,
        f"driver grows <= {args.flat_mib:g} MiB after 10 %": growth <= args.flat_mib,
    }
    result = {
        "files": args.files,
        "broken": args.broken,
        "actors": args.actors,
        "size": args.size,
        "seconds": round(took, 1),
        "files_per_s": round(total / took, 1),
        "rerun_seconds": round(took2, 1),
        "kill": kill,
        "ledger": first,
        "rerun_changed": rerun_changed[:20],
        "driver_rss_mib": {
            "at_10%": round(samples.at(0.1, total), 1),
            "at_50%": round(samples.at(0.5, total), 1),
            "at_90%": round(samples.at(0.9, total), 1),
            "peak": round(max(samples.rss_mib, default=0.0), 1),
            "growth_after_10%": round(growth, 1),
            "rerun_peak": round(max(samples2.rss_mib, default=0.0), 1),
        },
        "summary": summary_line(base / "run.log"),
        "rerun_summary": summary_line(base / "rerun.log"),
        "checks": checks,
        "samples": asdict(samples),
    }
    (base / "ray-process-storm.json").write_text(json.dumps(result, indent=2))
    rss = result["driver_rss_mib"]
    memory = f"{rss['at_10%']}/{rss['at_50%']}/{rss['at_90%']}, {rss['peak']}"
    headers = ["files", "s", "files/s", "killed at", "outputs", "records", "temps",
               "driver RSS at 10/50/90 %, peak (MiB)", "rerun s"]  # fmt: skip
    row = [str(total), f"{took:.1f}", f"{total / took:.1f}", str(kill.get("settled", "-")),
           str(first["outputs"]), str(first["records"]), str(first["temps_left"]), memory,
           f"{took2:.1f}"]  # fmt: skip
    print(table(headers, [row]))
    for name, ok in checks.items():
        print(f"- [{'x' if ok else ' '}] {name}")
    for problem in first["problems"]:
        print(f"  {problem}")
    print(f"summary: {result['summary']}\nrerun:   {result['rerun_summary']}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
