"""Suite member ``shipped``: the model users actually run, at the daemon's own defaults,
beside the previous shipped model on the same files (the speed targets of the guided model:
at most 0.5 s per 512 px image and at least 5x the previous path)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench.shared.common import ROOT, Run, fmt, median, table
from bench.shared.daemon_harness import Daemon, drop_and_wait, shipped_settings
from bench.shared.datasets import photo_mix

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


def bench(run: Run) -> None:
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
