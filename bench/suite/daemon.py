"""Suite member ``daemon``: the daemon end to end against the post's loop on the same files.

Files are dropped into the inbox until every output is committed, every durability step on
(the product's defaults).

A drop is a rename from a staging folder on the same filesystem (instant and complete, as a
well-behaved uploader does), so the clock measures the daemon, not our copying.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench.post.run import post_loop
from bench.shared.common import ROOT, Run, alternate, bench_checkpoints, fmt, median, table
from bench.shared.daemon_harness import Daemon, drop_and_wait, shipped_settings
from bench.shared.datasets import photo_mix, small_set


def bench(run: Run) -> None:
    ours_ckpt, post_ckpt = bench_checkpoints(run.out)
    work, log = run.out / "daemon", run.out / "daemon.log"
    rows = []
    sets = {
        "photos": photo_mix(run.out, run.pick(24, 200)),
        "small": small_set(run.out, run.pick(64, 300)),
    }
    for name, files in sets.items():
        # Staging must share the root's filesystem for the rename; it sits beside the root.
        root = work / f"root-{name}"
        with Daemon(root, ours_ckpt, run.device) as daemon:
            times = alternate(
                {
                    "post": lambda files=files: post_loop(
                        files[0].parent, work / "post-out", post_ckpt, log, run.device
                    )["loop_s"],
                    "daemon": lambda files=files, d=daemon: drop_and_wait(
                        d, files, work / "staging"
                    ),
                },
                run.pick(2, run.repeats),  # the post's loop dominates this family's time
            )
        n = len(files)
        r = {"images": n, "post_loop_ips": n / median(times["post"])}
        r["daemon_ips"] = n / median(times["daemon"])
        r["ratio"] = r["daemon_ips"] / r["post_loop_ips"]
        run.figures[f"daemon.{name}"] = r
        rows.append(
            [name, n, fmt(r["post_loop_ips"]), fmt(r["daemon_ips"]), f"**{r['ratio']:.2f}x**"]
        )
    headers = ["set", "files", "post loop img/s", "daemon img/s (drop -> all committed)", "ratio"]
    repeats = run.pick(2, run.repeats)
    run.report(
        f"### Daemon end to end vs the post's loop ({repeats} alternating repeats, medians; "
        "fsyncs on, originals archived)\n\n" + table(headers, rows) + "\n"
    )
    bench_shipped(run)


# The shipped model before the guided one (git blob of core/assets/default.safetensors at
# 4030f2a): today's path measured beside the new default in the same run.
PREVIOUS_DEFAULT_BLOB = "f4c51afea84546579848b13d7874ec2e0e71958a"


def previous_default(out: Path) -> Path | None:
    """The previous shipped model, read from git into ``out`` (None outside a clone)."""
    target = out / "previous-default.safetensors"
    if target.exists():
        return target
    done = subprocess.run(
        ["git", "cat-file", "blob", PREVIOUS_DEFAULT_BLOB], cwd=ROOT, capture_output=True,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return None
    target.write_bytes(done.stdout)
    return target


def passes_per_image(checkpoint: Path) -> tuple[int, dict[str, object], str]:
    """Network passes per image at the checkpoint's recommended settings, the settings, and
    its objective (a sampling checkpoint: one pass per step, refine steps included)."""
    from core.checkpoint import load_checkpoint
    from core.diffusion.schedule import step_count
    from core.objectives import sampler_for
    from core.runtime.samplers import DiffusionSampler, recommended_settings

    meta = load_checkpoint(checkpoint).meta
    if not isinstance(sampler_for(meta), DiffusionSampler):
        return 1, {}, meta.objective
    s = recommended_settings(meta)
    passes = step_count(s.strength, s.steps) + (step_count(s.refine, s.steps) if s.refine else 0)
    return max(1, passes), s.to_dict(), meta.objective


def bench_shipped(run: Run) -> None:
    """The model users actually run: the shipped checkpoint at the daemon's own defaults
    (output size, its recommended settings), on the photo mix, against the previous shipped
    model (today's path before the guided model) on the same files, alternating, medians.
    Reported per image and per network pass, since a sampling model's cost is its passes."""
    import core

    settings = shipped_settings()
    models = {"shipped": core.DEFAULT_CHECKPOINT}
    previous = previous_default(run.out)
    if previous is not None:
        models = {"previous": previous, **models}
    files = photo_mix(run.out, run.pick(8, 48))
    work = run.out / "daemon-shipped"
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(run.pick(1, 2)):
        for name, checkpoint in models.items():
            with Daemon(work / f"root-{name}", checkpoint, run.device, **settings) as daemon:
                seconds[name].append(drop_and_wait(daemon, files, work / "staging"))
    n, rows = len(files), []
    for name, checkpoint in models.items():
        passes, sampler, objective = passes_per_image(checkpoint)
        r = {"images": n, "size": settings["size"], "passes": passes, "objective": objective}
        r |= {"ips": n / median(seconds[name]), "sampler": sampler}
        r["s_per_image"] = 1 / r["ips"]
        r["passes_per_s"] = r["ips"] * passes
        run.figures[f"daemon.{name}"] = r
        rows.append([name, objective, json.dumps(sampler), passes, fmt(r["ips"], 2),
                     fmt(r["s_per_image"], 3), fmt(r["passes_per_s"], 1)])  # fmt: skip
    if previous is not None:
        ratio = run.figures["daemon.shipped"]["ips"] / run.figures["daemon.previous"]["ips"]
        run.figures["daemon.shipped"]["speedup_vs_previous"] = ratio
        rows.append(["shipped / previous", "", "", "", f"**{ratio:.2f}x**", "", ""])
    headers = ["model", "objective", "sampler", "passes per image", "images/s", "s per image",
               "network passes/s"]  # fmt: skip
    run.report(
        f"### The shipped model at the daemon's defaults ({settings['size']} px fit, each "
        f"model's recommended sampler; {n} photos, drop -> all committed, medians)\n\n"
        + table(headers, rows)
        + "\n"
    )
