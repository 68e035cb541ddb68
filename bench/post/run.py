"""The post's baselines run as fresh subprocesses, so nothing the bench did to torch leaks in.

:func:`post_loop` runs ``bench.post.loop`` (the post's inference loop) on a folder,
:func:`post_epoch_s` ``bench.post.train`` (its training loop); each returns what the child
printed as its last JSON line.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.shared.common import Run, last_json_line, run_child


def post_loop(inputs: Path, out: Path, checkpoint: Path, log: Path, device: str) -> dict:
    """The post's loop on ``inputs`` into ``out``: its JSON line plus the process's wall time."""
    shutil.rmtree(out, ignore_errors=True)
    args = ["-m", "bench.post.loop", str(checkpoint), str(inputs), str(out), "--device", device]
    wall, stdout = run_child(args, log)
    return {**last_json_line(stdout), "process_s": wall}


def post_epoch_s(run: Run, data: Path, vgg: Path, perceptual: str, epochs: int) -> float:
    """Seconds of the last of ``epochs`` epochs of the post's training loop on ``data``."""
    args = ["-m", "bench.post.train", str(data), str(vgg), "--epochs", str(epochs)]
    args += ["--perceptual", perceptual, "--device", run.device]
    _, stdout = run_child(args, run.out / "training.log")
    return last_json_line(stdout)["epoch_s"][-1]  # the last epoch: warm caches and kernels
