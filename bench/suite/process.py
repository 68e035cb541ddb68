"""Suite member ``process``: ``artd process`` end to end (a subprocess) against the post's loop.

The same files for both.

Both run as fresh processes, alternating. Two ratios: end to end (wall clock of each process,
start-up included) and steady state (the post's own loop timer against our wall clock minus
our start-up, itself measured as ``artd process`` on an empty folder in the same rotation).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from bench.post.run import post_loop
from bench.shared.common import Run, alternate, bench_checkpoints, fmt, median, run_child, table
from bench.shared.datasets import photo_mix, small_set

# 2/255: the bound on how far our outputs may drift from the fp32 post result.
PARITY_LIMIT = 2


def artd_process(inputs: Path, out: Path, checkpoint: Path, log: Path, device: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    args = ["-m", "daemon.cli", "process", str(inputs), "--out", str(out)]
    args += ["--checkpoint", str(checkpoint), "--resize", "stretch", "--size", "128"]
    return run_child([*args, "--device", device], log)[0]


def max_difference(post_out: Path, our_out: Path) -> int:
    """Largest per-channel difference (0..255) between the post's PNGs and ours."""
    worst = 0
    for ours in our_out.iterdir():
        theirs = post_out / ours.name  # both are named <input>.jpg.png
        a = np.asarray(Image.open(ours).convert("RGB"), dtype=np.int16)
        b = np.asarray(Image.open(theirs).convert("RGB"), dtype=np.int16)
        worst = max(worst, int(np.abs(a - b).max()))
    return worst


def bench(run: Run) -> None:
    ours_ckpt, post_ckpt = bench_checkpoints(run.out)
    work, log = run.out / "process", run.out / "process.log"
    (work / "empty").mkdir(parents=True, exist_ok=True)
    sets = {
        "photos": photo_mix(run.out, run.pick(24, 200)),
        "small": small_set(run.out, run.pick(64, 300)),
    }
    runners = {}
    post_runs: dict[str, list[dict]] = {name: [] for name in sets}
    for name, files in sets.items():
        inputs = files[0].parent

        def post(name: str = name, inputs: Path = inputs) -> float:
            out = work / f"post-{name}"
            post_runs[name].append(post_loop(inputs, out, post_ckpt, log, run.device))
            return post_runs[name][-1]["process_s"]

        runners[f"post-{name}"] = post
        runners[f"artd-{name}"] = lambda name=name, inputs=inputs: artd_process(
            inputs, work / f"artd-{name}", ours_ckpt, log, run.device
        )
    # Start-up (interpreter, torch, model, precision probe) on an empty folder, same rotation.
    runners["startup"] = lambda: artd_process(
        work / "empty", work / "artd-empty", ours_ckpt, log, run.device
    )
    times = alternate(runners, run.repeats)
    startup = median(times["startup"])
    rows = []
    for name, files in sets.items():
        n = len(files)
        r = {
            "images": n,
            "post_e2e_ips": n / median(times[f"post-{name}"]),
            "artd_e2e_ips": n / median(times[f"artd-{name}"]),
            "post_loop_ips": n / median([s["loop_s"] for s in post_runs[name]]),
            "artd_steady_ips": n / (median(times[f"artd-{name}"]) - startup),
            "artd_startup_s": startup,
            "startup_share": startup / median(times[f"artd-{name}"]),
            "max_diff_255": max_difference(work / f"post-{name}", work / f"artd-{name}"),
        }
        r["ratio_e2e"] = r["artd_e2e_ips"] / r["post_e2e_ips"]
        r["ratio_steady"] = r["artd_steady_ips"] / r["post_loop_ips"]
        run.figures[f"process.{name}"] = r
        rows.append(
            [name, n, fmt(r["post_loop_ips"]), fmt(r["artd_steady_ips"]),
             f"**{r['ratio_steady']:.2f}x**", fmt(r["post_e2e_ips"]), fmt(r["artd_e2e_ips"]),
             f"{r['ratio_e2e']:.2f}x", f"{fmt(startup, 2)} ({r['startup_share']:.0%})",
             r["max_diff_255"]]
        )  # fmt: skip
    headers = ["set", "files", "post loop img/s", "artd steady img/s", "ratio", "post e2e img/s",
               "artd e2e img/s", "e2e ratio", "start-up s (share)", "max diff /255"]  # fmt: skip
    run.report(f"### `artd process` vs the post's loop ({run.repeats} alternating repeats, "
               f"medians)\n\n{table(headers, rows)}\n")  # fmt: skip
