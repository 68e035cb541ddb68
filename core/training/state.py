"""The resume state: ``last.pt``, the exact point a run can go on from.

It holds the model, optimizer and scheduler state, the epoch, the best validation loss,
every RNG the loop touches and the settings, saved last in each epoch so a crash redoes an
epoch, never skips one. It is loaded with ``weights_only=True`` (tensors, lists and plain
values only), which is why the RNG states are stored as tensors and lists.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.durable import write_atomic

LAST_STATE = "last.pt"


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
    """Put every RNG back where :func:`rng_state` found it."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to memory, then one atomic write: a crash leaves the previous state."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue())


def load_training_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)
