"""Study: what decoding in the daemon's decoder processes costs ``artd process``, against the
revision whose ``artd process`` decoded in its own I/O threads, measured side by side in one
run, alternating, medians.

    python -m bench.studies.process_ab [--inputs plumbing shipped] [--baseline-rev c3af0e3]
        [--repeats 3] [--warmup 1] [--plumbing-files 200] [--shipped-files 24]
        [--device cpu] [--data bench/out] [--out bench/out/process-ab]

(run as ``PYTHONPATH=. .venv/bin/python -m ...`` where the venv's install points elsewhere).
Writes OUT/process_ab.json; each run's outputs under OUT/runs/SIDE/SET, each side's log in
OUT/runs/SIDE.log. The inputs and the bench checkpoint are the suite's, cached under DATA
(default bench/out, the suite's own ``--out``: a suite run already made them).

``artd process`` of this checkout (its files decoded in daemon.decoders.DecoderPool, worker
processes forked from a forkserver: a decoder crash costs one file, not the run) against that
of ``--baseline-rev`` (default c3af0e3, the last one that decoded in the I/O threads),
extracted once with ``git archive`` into ``build/baseline-REV``. Each run is
``python -m daemon.cli process INPUTS --out DIR ...`` as a fresh subprocess, with its tree as
cwd and ``PYTHONPATH`` (as bench.shared.daemon_harness.Daemon runs a tree's daemon), timed by
its wall clock, exit 0 required (no file rejected). Two input sets (``--inputs``):

- **plumbing**: the photo mix (bench.shared.datasets.photo_mix: 4032x3024 .. 800x600 JPEGs,
  ``--plumbing-files``, default 200) with the suite's settings (bench.suite.process:
  ``--resize stretch --size 128``, the seeded bench checkpoint of
  bench.shared.common.bench_checkpoints): decode-heavy, the model cheap;
- **shipped**: scikit-image's photos as JPEG q90 (``--shipped-files``, default 24, cycled as
  bench.studies.worker_overhead.skimage_files makes them) at the shipped defaults (no size or
  resize flags; the shipped model, this checkout's ``core/assets/default.safetensors``).

Each set also runs on an empty folder with the same flags: the start-up (interpreter, torch,
the model worker and its model). Not the decoders' start: this checkout starts its pool in the
background, and with nothing to decode exits before the forkserver is up, so that start falls
in the full run and shows as a fixed cost in both rates (compare a run of a few files, say
``--plumbing-files 8``, against the default 200: a fixed cost stays, a per-file one grows).
Per tree and set: img/s end to end (files / median wall) and steady state (files / (median
wall - median empty run)), and the ratios this checkout / baseline (above 1: this checkout is
faster). Then parity: the last turn's outputs of the two trees, the same set of names, and
the largest per-channel difference (0..255) between their pixels (not their bytes: each
output records its creation time in its metadata).

A turn runs, per set, the empty run of each tree then the full run of each tree (this checkout
first); ``--warmup`` untimed turns come first (the page cache holds the inputs and the
interpreter, each tree has written its bytecode, unless ``PYTHONDONTWRITEBYTECODE`` is set:
then every run of either tree compiles its own modules, as the JSON records), then
``--repeats`` timed ones.

Held equal: the checkpoint files (passed to both trees with ``--checkpoint``; the JSON records
whether the baseline's own shipped model is the same bytes), the flags, every other setting
at its default (I/O threads, torch threads, batch, output format), the device, the inputs
and their order, an emptied output folder per run, and the machine's load (one run at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import core
from bench.shared.baseline import baseline_tree, run_header
from bench.shared.common import (
    DEFAULT_OUT,
    ROOT,
    alternate,
    bench_checkpoints,
    child_env,
    fmt,
    median,
    table,
)
from bench.shared.datasets import photo_mix
from bench.studies.worker_overhead import same_bytes, skimage_files
from bench.suite.process import max_difference

OUT = ROOT / "bench" / "out" / "process-ab"
# The last revision whose `artd process` decoded in its I/O threads.
THREAD_DECODE_REV = "c3af0e3"
SETS = ("plumbing", "shipped")
SIDES = ("this checkout", "baseline")


# -- one run ------------------------------------------------------------------------------


def tree_env(tree: Path) -> dict[str, str]:
    """child_env with ``tree``'s packages first on ``PYTHONPATH`` (this checkout's dropped)."""
    env = child_env()
    tree = tree.resolve()
    if tree != ROOT:
        inherited = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        kept = [p for p in inherited if p and Path(p).resolve() != ROOT]
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *kept])
    return env


def artd_process(tree: Path, inputs: Path, out: Path, flags: list[str], log: Path) -> float:
    """``tree``'s ``artd process INPUTS --out OUT FLAGS`` (OUT emptied first, untimed): its
    wall seconds. Raises, pointing at ``log``, unless it exits 0 (no input rejected)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "daemon.cli", "process", str(inputs), "--out", str(out)]
    started = time.perf_counter()
    with open(log, "ab") as err:
        done = subprocess.run(
            [*command, *flags], cwd=tree, env=tree_env(tree), stdout=err, stderr=err,
            check=False,
        )  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"artd process {inputs} ({tree}) exited {done.returncode}; see {log}")
    return wall


def imported_from(tree: Path) -> str:
    """Where ``tree``'s environment (tree_env, cwd) imports ``daemon`` from."""
    done = subprocess.run(
        [sys.executable, "-c", "import daemon; print(daemon.__file__)"], cwd=tree,
        env=tree_env(tree), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


# -- parity -------------------------------------------------------------------------------


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


def parity(new: Path, old: Path) -> dict[str, Any]:
    """The two trees' outputs of one set: the same names, the largest difference /255."""
    ours, theirs = names(new), names(old)
    return {
        "outputs": len(ours),
        "same_names": ours == theirs,
        "only_this_checkout": sorted(ours - theirs),
        "only_baseline": sorted(theirs - ours),
        "max_diff_255": max_difference(old, new) if ours == theirs else None,
    }


# -- the study ----------------------------------------------------------------------------


def input_sets(args: argparse.Namespace) -> dict[str, tuple[list[Path], list[str]]]:
    """(files, flags) of each set asked for: the suite's inputs and settings, or the shipped."""
    device = ["--device", args.device]
    sets: dict[str, tuple[list[Path], list[str]]] = {}
    if "plumbing" in args.inputs:
        checkpoint = bench_checkpoints(args.data)[0]
        flags = ["--checkpoint", str(checkpoint), "--resize", "stretch", "--size", "128"]
        sets["plumbing"] = (photo_mix(args.data, args.plumbing_files), flags + device)
    if "shipped" in args.inputs:
        flags = ["--checkpoint", str(core.DEFAULT_CHECKPOINT)]
        sets["shipped"] = (skimage_files(args.data, args.shipped_files), flags + device)
    return sets


def process_ab(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Both trees' ``artd process`` on each set and on an empty folder, turn by turn."""
    tree, commit = baseline_tree(args.baseline_rev)
    trees = dict(zip(SIDES, (ROOT, tree), strict=True))
    sets = input_sets(args)
    empty = out / "empty"
    shutil.rmtree(empty, ignore_errors=True)
    empty.mkdir(parents=True)
    runs = out / "runs"
    runs.mkdir(exist_ok=True)
    code = {side: imported_from(where) for side, where in trees.items()}
    pools = {
        side: "DecoderPool" in (where / "daemon" / "oneshot.py").read_text()
        for side, where in trees.items()
    }
    shipped_identical = same_bytes(
        core.DEFAULT_CHECKPOINT, tree / "core" / "assets" / "default.safetensors"
    )
    print(f"baseline {commit[:12]} ({tree}); daemon imported from {code}; decoder processes "
          f"{pools}; shipped model identical in both trees: {shipped_identical}",
          flush=True)  # fmt: skip
    for side, where in trees.items():
        if not Path(code[side]).resolve().is_relative_to(where.resolve()):
            raise RuntimeError(f"{side}: daemon imported from {code[side]}, not {where}")

    def runner(side: str, name: str, run_empty: bool) -> Callable[[], float]:
        files, flags = sets[name]
        label = f"{name}-empty" if run_empty else name
        inputs = empty if run_empty else files[0].parent
        where = runs / side.replace(" ", "-")

        def run() -> float:
            where.mkdir(exist_ok=True)
            seconds = artd_process(
                trees[side], inputs, where / label, flags, where.with_suffix(".log")
            )
            count = 0 if run_empty else len(files)
            rate = f", {count / seconds:.2f} img/s" if count else ""
            print(f"  {side}: {label} {count} files {seconds:.2f} s{rate}", flush=True)
            return seconds

        return run

    runners = {
        f"{side}|{name}|{label}": runner(side, name, label == "empty")
        for name in sets
        for label in ("empty", "full")
        for side in SIDES
    }
    for name, (files, flags) in sets.items():
        print(f"{name}: {len(files)} files in {files[0].parent}, flags {flags}", flush=True)
    if args.warmup:
        print(f"warm-up ({args.warmup} untimed turn(s))", flush=True)
        alternate(runners, args.warmup)
    times = alternate(runners, args.repeats)
    figures: dict[str, Any] = {}
    for name, (files, flags) in sets.items():
        n = len(files)
        per: dict[str, Any] = {}
        for side in SIDES:
            walls, empties = times[f"{side}|{name}|full"], times[f"{side}|{name}|empty"]
            wall, startup = median(walls), median(empties)
            per[side] = {
                "wall_s": walls, "empty_s": empties, "median_wall_s": wall,
                "median_empty_s": startup, "e2e_ips": n / wall, "steady_ips": n / (wall - startup),
            }  # fmt: skip
        new, old = per["this checkout"], per["baseline"]
        figures[name] = {
            "files": n,
            "inputs": str(files[0].parent),
            "flags": flags,
            "sides": per,
            "ratio_e2e_new_over_baseline": new["e2e_ips"] / old["e2e_ips"],
            "ratio_steady_new_over_baseline": new["steady_ips"] / old["steady_ips"],
            "parity": parity(runs / "this-checkout" / name, runs / "baseline" / name),
        }
    return {
        "baseline_rev": commit,
        "baseline_tree": str(tree),
        "daemon_imported_from": code,
        "decoder_processes": pools,
        "shipped_model_identical": shipped_identical,
        "device": args.device,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "sets": figures,
    }


def report(fig: dict[str, Any]) -> str:
    dirty = " + changes" if fig["head_dirty"] else ""
    revs = {"this checkout": fig["head"][:12] + dirty, "baseline": fig["baseline_rev"][:12]}
    decode = {True: "decoder processes", False: "I/O threads"}
    rows, notes = [], []
    for name, s in fig["sets"].items():
        for side, m in s["sides"].items():
            rows.append([
                name if side == "this checkout" else "", s["files"] if side == "this checkout"
                else "", f"{side} ({revs[side]})", decode[fig["decoder_processes"][side]],
                fmt(m["median_empty_s"], 2), fmt(m["median_wall_s"], 2), fmt(m["e2e_ips"], 2),
                fmt(m["steady_ips"], 2),
            ])  # fmt: skip
        rows.append([
            "", "", "**this checkout / baseline**", "", "", "",
            f"**{s['ratio_e2e_new_over_baseline']:.3f}x**",
            f"**{s['ratio_steady_new_over_baseline']:.3f}x**",
        ])  # fmt: skip
        p = s["parity"]
        same = "same names" if p["same_names"] else (
            f"names differ ({len(p['only_this_checkout'])} only here, "
            f"{len(p['only_baseline'])} only in the baseline)"
        )  # fmt: skip
        diff = "n/a" if p["max_diff_255"] is None else p["max_diff_255"]
        notes.append(f"{name}: {p['outputs']} outputs, {same}, max difference {diff}/255")
    headers = ["set", "files", "artd process", "decodes in", "empty run s", "wall s",
               "e2e img/s", "steady img/s"]  # fmt: skip
    return (
        f"### `artd process`: decoder processes against I/O threads on {fig['device']}, median "
        f"of {fig['repeats']} alternating turns\n\n" + table(headers, rows)
        + "\n\nParity (the last turn's outputs):\n\n" + "\n".join(f"- {n}" for n in notes)
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studies.process_ab", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--inputs", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--baseline-rev", default=THREAD_DECODE_REV)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed turns, first")
    parser.add_argument("--plumbing-files", type=int, default=200, help="a multiple of 4")
    parser.add_argument("--shipped-files", type=int, default=24)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=DEFAULT_OUT, help="the suite's --out")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.data = args.data.resolve()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = run_header()
    figures |= process_ab(args, out)
    figures["loadavg_after"] = os.getloadavg()
    print("\n" + report(figures))
    path = out / "process_ab.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nfigures: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
