"""The promotion gate that guards the served model.

The gate evaluates the run's best checkpoint and the currently served one on the *current*
validation split with the same loss, each in the image space its metadata records
(``core.space.ImageSpace.of``: a served seed-space checkpoint is judged by the seed's own
post-processing), and moves the pointer (atomically, via ``core.checkpoint.promote``) only
when the new loss is at most ``served x (1 + tolerance)``.

The pointer is a symlink into the run folder, so a run must be kept while it is served.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from loguru import logger

from core.checkpoint import Checkpoint, CheckpointError, build_model, load_checkpoint, promote
from core.losses import TrainingLoss
from core.space import ImageSpace
from core.training.evaluate import evaluate

# The trainer's exit status when it trained but the gate kept the served model.
EXIT_NOT_PROMOTED = 3


@dataclass
class GateResult:
    """The verdict, as written to the run's ``gate.json``."""

    promoted: bool
    reason: str
    candidate: str
    candidate_loss: float
    served: str | None = None
    served_loss: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def val_loss(
    checkpoint: Checkpoint,
    batches: list[torch.Tensor],
    loss_fn: TrainingLoss,
    device: torch.device,
) -> float:
    """A checkpoint's validation loss, its network seeing images in its recorded space."""
    model = build_model(checkpoint).to(device)
    space = ImageSpace.of(checkpoint.meta)
    return evaluate(model, batches, loss_fn, device, space=space)["val_loss"]


def promotion_gate(
    pointer: Path,
    candidate: Path,
    val_batches: Iterable[torch.Tensor],
    loss_fn: TrainingLoss,
    device: torch.device,
    tolerance: float,
) -> GateResult:
    """Evaluate candidate and served model; promote the candidate when it is not worse."""
    batches = list(val_batches)
    new = load_checkpoint(candidate)
    new_loss = val_loss(new, batches, loss_fn, device)
    result = GateResult(False, "", str(candidate), new_loss)
    served = _served(pointer)
    if served is None:
        result.promoted, result.reason = True, "nothing usable is served yet"
    elif served.path == new.path.resolve():
        result.promoted, result.reason = True, "already served"
        return result
    else:
        result.served = served.version
        result.served_loss = val_loss(served, batches, loss_fn, device)
        limit = result.served_loss * (1 + tolerance)
        result.promoted = math.isfinite(new_loss) and new_loss <= limit
        comparison = "<=" if result.promoted else ">"
        result.reason = (
            f"new val loss {new_loss:.6g} {comparison} served {result.served_loss:.6g} "
            f"x (1 + {tolerance}) = {limit:.6g}"
        )
    if result.promoted:
        pointer.parent.mkdir(parents=True, exist_ok=True)
        promote(pointer, candidate)
        logger.info("gate: promoted {} -> {} ({})", pointer, candidate, result.reason)
    else:
        logger.warning("gate: kept {} ({})", served.version if served else pointer, result.reason)
    return result


def _served(pointer: Path) -> Checkpoint | None:
    """The checkpoint the pointer names, or None when there is none or it is unusable."""
    if not os.path.lexists(pointer):
        return None
    try:
        return load_checkpoint(pointer)
    except CheckpointError as exc:
        logger.warning("gate: the served model is unusable ({}); replacing it", exc)
        return None
