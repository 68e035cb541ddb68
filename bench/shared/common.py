"""Shared by every bench: the run's settings, timing, the bench checkpoint, child processes."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "bench" / "out"


@dataclass
class Run:
    """What one ``python -m bench`` invocation works with."""

    out: Path
    quick: bool
    device: str = "cpu"
    figures: dict[str, Any] = field(default_factory=dict)
    sections: list[str] = field(default_factory=list)

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full

    @property
    def repeats(self) -> int:
        return self.pick(3, 5)

    def report(self, markdown: str) -> None:
        print(markdown, flush=True)
        self.sections.append(markdown)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def alternate(runners: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run A B C A B C ... ``repeats`` times; each runner returns its own measured seconds."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            times[name].append(runner())
    return times


def child_env(**extra: str) -> dict[str, str]:
    """The environment for our subprocesses: no stray ARTD_* settings, the project importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTD_")}
    env.pop("NOTIFY_SOCKET", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_child(args: list[str], log: Path, **env: str) -> tuple[float, str]:
    """Run ``python ARGS`` to completion; (wall seconds, stdout). Raises with the log on failure."""
    started = time.perf_counter()
    with open(log, "ab") as err:
        done = subprocess.run(
            [sys.executable, *args], cwd=ROOT, env=child_env(**env), stdout=subprocess.PIPE,
            stderr=err, check=False,
        )  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} exited {done.returncode}; see {log}")
    return wall, done.stdout.decode()


def last_json_line(text: str) -> dict[str, Any]:
    return json.loads(text.strip().splitlines()[-1])


def seeded_model_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed random ConvDiffusionModel with non-trivial BatchNorm statistics."""
    from core.network.model import ConvDiffusionModel

    torch.manual_seed(seed)
    model = ConvDiffusionModel()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval().state_dict()


def bench_checkpoints(out: Path) -> tuple[Path, Path]:
    """(ours.safetensors, post.pth): the same weights in our format and as the post's state_dict.

    Marked with the post's image space (``POST_IMAGE_SPACE``) so our engine applies the
    post's denormalization and both sides write the same picture.
    """
    from core.checkpoint import CheckpointMeta, save_checkpoint
    from core.network.space import POST_IMAGE_SPACE

    ours, post = out / "bench-model.safetensors", out / "bench-model.pth"
    if not (ours.exists() and post.exists()):
        out.mkdir(parents=True, exist_ok=True)
        state = seeded_model_state()
        meta = CheckpointMeta(image_space=POST_IMAGE_SPACE, train_size=128, resize="stretch")
        save_checkpoint(ours, state, meta)
        torch.save(state, post)
    return ours, post


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"  # NaN check without math import


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
