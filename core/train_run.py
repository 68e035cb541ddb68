"""The run folder: everything a training run leaves on disk, and the state to resume it.

``OUT/run-<UTC timestamp>/`` holds ``settings.json``, ``manifest.jsonl``, ``rejected.jsonl``,
``metrics.jsonl``, ``loss.png``, ``samples/epoch-NNN.png``, ``checkpoints/epoch-NNN.safetensors``
(the last ``keep_last``), ``checkpoints/best.safetensors`` and ``last.pt`` (resume state).
Only rank 0 of a distributed run creates any of it.
"""

from __future__ import annotations

import io
import json
import random
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger
from torchvision.utils import make_grid

from core import imaging
from core.checkpoint import CheckpointMeta, atomic_write_bytes, save_checkpoint

LAST_STATE = "last.pt"
BEST = "best.safetensors"
_EPOCH_FILE = re.compile(r"epoch-(\d+)\.safetensors")


def create_run_dir(out: Path) -> Path:
    """A fresh ``run-<UTC timestamp>`` folder (``-2``, ``-3``... when started in one second)."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("run-%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):
        run = out / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            run.mkdir()
        except FileExistsError:
            continue
        (run / "checkpoints").mkdir()
        (run / "samples").mkdir()
        return run
    raise RuntimeError(f"cannot create a run folder in {out}")


def find_resume_state(out: Path, spec: str) -> Path:
    """``latest`` = newest run under ``out`` with a ``last.pt``; else a run folder or a file."""
    if spec == "latest":
        runs = sorted(p for p in out.glob("run-*") if (p / LAST_STATE).is_file())
        if not runs:
            raise FileNotFoundError(f"--resume latest: no run with a {LAST_STATE} under {out}")
        return runs[-1] / LAST_STATE
    path = Path(spec)
    path = path / LAST_STATE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"--resume {spec}: {path} does not exist")
    return path


# --- resume state -------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every RNG the loop touches, as tensors and lists so ``weights_only`` loading accepts it."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached_gaussian": cached,
        },
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_training_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


# --- files written every epoch ------------------------------------------------------------------


def write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(
        path, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode()
    )


def append_metrics(run: Path, row: dict[str, float]) -> None:
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(run: Path) -> list[dict[str, float]]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run: Path, last_epoch: int) -> None:
    """Drop rows past ``last_epoch``: an interrupted epoch is trained again on resume."""
    rows = [r for r in read_metrics(run) if r["epoch"] <= last_epoch]
    atomic_write_bytes(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())


def plot_losses(run: Path) -> None:
    """``loss.png``: training and validation curves so far (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run)
    if not rows:
        return
    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key, label in [
        ("loss", "train loss"),
        ("mse", "train MSE"),
        ("perceptual", "train perceptual"),
        ("val_loss", "val loss"),
        ("val_mse", "val MSE"),
    ]:
        values = [r.get(key) for r in rows]
        if all(v is not None and v > 0 for v in values):
            ax.plot(epochs, values, label=label, marker="." if len(rows) < 30 else None)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_title(run.name)
    ax.grid(alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(run / "loss.png", buffer.getvalue())


def save_samples(path: Path, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """A grid of rows ``input | output`` (0..1 pixels, NCHW) as PNG; returns the grid (CHW)."""
    pairs = torch.stack([inputs.float().cpu(), outputs.float().cpu()], dim=1).flatten(0, 1)
    grid = make_grid(pairs, nrow=2, padding=2, pad_value=1.0)
    atomic_write_bytes(path, imaging.encode(imaging.from_tensor(grid), "png"))
    return grid


# --- checkpoints --------------------------------------------------------------------------------


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_epoch_checkpoint(
    run: Path, state_dict: dict[str, torch.Tensor], meta: CheckpointMeta, keep_last: int
) -> Path:
    """``checkpoints/epoch-NNN.safetensors``, then drop all but the newest ``keep_last``."""
    folder = run / "checkpoints"
    path = save_checkpoint(folder / f"epoch-{meta.epoch:03d}.safetensors", state_dict, meta)
    kept = sorted(
        (p for p in folder.iterdir() if _EPOCH_FILE.fullmatch(p.name)),
        key=lambda p: int(_EPOCH_FILE.fullmatch(p.name).group(1)),
    )
    for old in kept[:-keep_last]:
        old.unlink()
        logger.debug("retention: removed {}", old)
    return path


def save_best_checkpoint(run: Path, state_dict: dict[str, torch.Tensor], meta: CheckpointMeta):
    return save_checkpoint(run / "checkpoints" / BEST, state_dict, meta)


class TensorBoard:
    """Scalars and sample images when ``torch.utils.tensorboard`` imports; silent otherwise."""

    def __init__(self, run: Path, enabled: bool) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self.writer = SummaryWriter(log_dir=str(run / "tensorboard"))

    def scalars(self, row: dict[str, float], epoch: int) -> None:
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, epoch)

    def image(self, tag: str, grid_chw: torch.Tensor, epoch: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, grid_chw, epoch)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
