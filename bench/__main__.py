"""The suite's entry point and registry: ``python -m bench [--quick] [--only NAME,...]
[--out DIR] [--device cpu|cuda] [--list]``.

``art`` (bench.suite.art, the art benchmark of bench.art) trains its two models on first
use (16-45 minutes on two cores, cached in build/art-bench by the recipe's hash) and writes
docs/art-bench.md and docs/art-gallery.png; with --quick it trains tiny ones into --out.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.shared.common import DEFAULT_OUT, Run

# Every suite member, in the order they run: bench.suite.NAME, each with bench(run). Order
# matters: "targets" reads the figures the others left in Run.figures.
BENCHES = (
    "floors", "process", "daemon", "shipped", "latency", "memory", "training", "colour",
    "page", "gpu_decode", "art", "targets",
)  # fmt: skip
# gpu_decode is for bench/scripts/gpu.sh; the default run on a CPU machine leaves it out.
DEFAULT_SKIP = {"gpu_decode"}


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line),
            platform.processor(),
        )
    except OSError:
        model = platform.processor()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    cores = len(os.sched_getaffinity(0))
    return (
        f"{model}, {cores} cores ({torch.get_num_threads()} torch threads), GPU {gpu}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer files and repeats (< 5 min)")
    parser.add_argument("--only", default="", help=f"comma-separated: {', '.join(BENCHES)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="data, logs and results")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (our paths and the post's)")
    parser.add_argument("--list", action="store_true", help="print the registry and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name in BENCHES:
            skipped = " (not in the default run)" if name in DEFAULT_SKIP else ""
            print(f"{name}: bench.suite.{name}{skipped}")
        return 0
    names = [n for n in args.only.split(",") if n] or [n for n in BENCHES if n not in DEFAULT_SKIP]
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    run = Run(out=out, quick=args.quick, device=args.device)
    started = time.perf_counter()
    mode = "quick" if args.quick else "full"
    now = datetime.datetime.now().astimezone()
    command = " ".join(sys.argv[1:] if argv is None else argv)
    run.report(
        f"## artd benchmarks ({mode})\n\n- date: {now:%Y-%m-%d %H:%M %Z}\n"
        f"- machine: {machine()}\n- load average at start: {os.getloadavg()[0]:.2f}\n"
        f"- command: `python -m bench {command}`\n"
    )
    failed = []
    for name in names:
        section_started = time.perf_counter()
        try:
            importlib.import_module(f"bench.suite.{name}").bench(run)
        except Exception as exc:  # one broken family must not hide the others' figures
            failed.append(name)
            run.report(f"### {name}: FAILED\n\n`{type(exc).__name__}: {exc}`\n")
        print(f"[{name}: {time.perf_counter() - section_started:.0f} s]", flush=True)
    run.report(f"Load average at the end: {os.getloadavg()[0]:.2f}.")
    run.report(f"Total bench time: {time.perf_counter() - started:.0f} s.\n")
    (out / "results.md").write_text("\n".join(run.sections))
    (out / "results.json").write_text(json.dumps(run.figures, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
