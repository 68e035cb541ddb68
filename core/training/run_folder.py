"""The run folder: everything a training run leaves on disk.

``OUT/run-<UTC timestamp>/`` holds ``settings.json``, ``manifest.jsonl``, ``rejected.jsonl``,
``train.log``, ``metrics.jsonl``, for a style run with ``--content-data`` also
``content-manifest.jsonl`` and ``content-rejected.jsonl``, ``loss.png``, ``samples/epoch-NNN.png``,
``checkpoints/epoch-NNN.safetensors`` (the last ``keep_last``),
``checkpoints/best.safetensors``, ``last.pt`` (the resume state, ``core.training.state``),
``gate.json`` after a promotion gate and ``tensorboard/`` when TensorBoard is installed.

Only rank 0 writes. On the other ranks a :class:`RunFolder` has no path and every method
returns at once, so the trainer calls them on every rank without asking which one it is.
Every file but the appended ``metrics.jsonl`` and the log is written atomically.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import torch
from loguru import logger

from core.checkpoint import CheckpointMeta, save_checkpoint
from core.durable import write_atomic
from core.training.data import PreparedData
from core.training.pictures import image_grid, loss_plot_png, sample_grid
from core.training.state import LAST_STATE, save_training_state

BEST = "best.safetensors"
_EPOCH_FILE = re.compile(r"epoch-(\d+)\.safetensors")
P = ParamSpec("P")
R = TypeVar("R")


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


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())


def _main_only(
    method: Callable[Concatenate[RunFolder, P], R],
) -> Callable[Concatenate[RunFolder, P], R | None]:
    """Skip the call where there is no folder (ranks other than 0): they write nothing."""

    @functools.wraps(method)
    def call(self: RunFolder, *args: P.args, **kwargs: P.kwargs) -> R | None:
        return None if self.path is None else method(self, *args, **kwargs)

    return call


class RunFolder:
    """One run's folder on rank 0, a silent stand-in elsewhere; a context manager that adds
    the ``train.log`` sink on entry and closes it (and TensorBoard) on exit."""

    def __init__(self, path: Path | None, *, tensorboard: bool = False) -> None:
        self.path = path
        self._sink: int | None = None
        self._tensorboard = _summary_writer(path, tensorboard) if path is not None else None

    @classmethod
    def start(
        cls, out: Path, *, resume_state: Path | None, main: bool, tensorboard: bool
    ) -> RunFolder:
        """Rank 0: the resumed run's folder (the one holding ``resume_state``) or a fresh one
        under ``out``; other ranks: the stand-in."""
        if not main:
            return cls(None)
        path = resume_state.parent if resume_state is not None else create_run_dir(out)
        return cls(path, tensorboard=tensorboard)

    def __enter__(self) -> RunFolder:
        if self.path is not None:
            self._sink = logger.add(self.path / "train.log", level="INFO")
            logger.info("run folder {}", self.path)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._sink is not None:
            logger.remove(self._sink)
            self._sink = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    @_main_only
    def write_json(self, name: str, data: Any) -> None:
        write_json(self.path / name, data)

    @_main_only
    def write_inputs(self, settings: dict[str, Any], data: PreparedData) -> None:
        """What the run was given: ``settings.json``, ``manifest.jsonl``, ``rejected.jsonl``."""
        self.write_json("settings.json", settings)
        write_atomic(self.path / "manifest.jsonl", data.manifest_bytes())
        write_atomic(self.path / "rejected.jsonl", data.rejected_bytes())

    @_main_only
    def write_content_inputs(self, data: PreparedData) -> None:
        """A style run's content photos: ``content-manifest.jsonl``, ``content-rejected.jsonl``."""
        write_atomic(self.path / "content-manifest.jsonl", data.manifest_bytes())
        write_atomic(self.path / "content-rejected.jsonl", data.rejected_bytes())

    # --- metrics ---------------------------------------------------------------------------

    @_main_only
    def log_metrics(self, row: dict[str, float]) -> None:
        """One epoch's row: a line of ``metrics.jsonl`` and TensorBoard scalars."""
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tensorboard is not None:
            for key, value in row.items():
                if key != "epoch":
                    self._tensorboard.add_scalar(key, value, row["epoch"])

    def read_metrics(self) -> list[dict[str, float]]:
        path = self.path / "metrics.jsonl" if self.path is not None else None
        if path is None or not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    @_main_only
    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop rows past ``last_epoch``: an interrupted epoch is trained again on resume."""
        rows = [r for r in self.read_metrics() if r["epoch"] <= last_epoch]
        lines = "".join(json.dumps(r) + "\n" for r in rows)
        write_atomic(self.path / "metrics.jsonl", lines.encode())

    @_main_only
    def plot_losses(self) -> None:
        """``loss.png``: training and validation curves so far."""
        rows = self.read_metrics()
        if rows:
            write_atomic(self.path / "loss.png", loss_plot_png(rows, self.path.name))

    @_main_only
    def save_samples(self, epoch: int, inputs: torch.Tensor, outputs: torch.Tensor) -> None:
        """``samples/epoch-NNN.png``: rows of ``input | output`` (also to TensorBoard)."""
        self._write_grid(epoch, *sample_grid(inputs, outputs))

    @_main_only
    def save_sample_grid(self, epoch: int, images: torch.Tensor, columns: int) -> None:
        """``samples/epoch-NNN.png``: ``images`` row by row, ``columns`` to a row."""
        self._write_grid(epoch, *image_grid(images, columns))

    def _write_grid(self, epoch: int, png: bytes, grid: torch.Tensor) -> None:
        write_atomic(self.path / "samples" / f"epoch-{epoch:03d}.png", png)
        if self._tensorboard is not None:
            self._tensorboard.add_image("samples", grid, epoch)

    # --- checkpoints and the resume state --------------------------------------------------

    @property
    def best(self) -> Path | None:
        """Where the best checkpoint is (it may not exist yet)."""
        return self.path / "checkpoints" / BEST if self.path is not None else None

    @_main_only
    def save_best(self, weights: dict[str, torch.Tensor], meta: CheckpointMeta) -> None:
        save_checkpoint(self.path / "checkpoints" / BEST, weights, meta)

    @_main_only
    def save_epoch(
        self, weights: dict[str, torch.Tensor], meta: CheckpointMeta, keep_last: int
    ) -> None:
        """``checkpoints/epoch-NNN.safetensors``, then drop all but the newest ``keep_last``."""
        folder = self.path / "checkpoints"
        save_checkpoint(folder / f"epoch-{meta.epoch:03d}.safetensors", weights, meta)
        kept = sorted(
            (p for p in folder.iterdir() if _EPOCH_FILE.fullmatch(p.name)),
            key=lambda p: int(_EPOCH_FILE.fullmatch(p.name).group(1)),
        )
        for old in kept[:-keep_last]:
            old.unlink()
            logger.debug("retention: removed {}", old)

    @_main_only
    def save_state(self, state: dict[str, Any]) -> None:
        save_training_state(self.path / LAST_STATE, state)


def _summary_writer(run: Path, enabled: bool):  # -> SummaryWriter | None (an optional import)
    """A TensorBoard writer when asked for and ``torch.utils.tensorboard`` imports; else None."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run / "tensorboard"))
