"""The promotion gate that guards the served model.

The gate evaluates the run's best checkpoint and the currently served one on the *current*
validation split with the same loss, each by its objective's figure (``core.objectives``:
``Objective.figure`` and ``Objective.evaluate``) in the image space its metadata records
(``core.network.space.ImageSpace.of``: a served checkpoint in the post's image space is judged by
the post's own post-processing), and moves the pointer (atomically, via
``core.checkpoint.promote``) only when the new loss is at most ``served x (1 + tolerance)``.

A style run's candidate is judged by its own figure (``core.training.style.evaluate_style``:
style and content loss on the held-out content photos, the collection's mean Gram target),
and so is a served style checkpoint.

Two checkpoints of different objectives (``reconstruct``, ``denoise``, ``style``) are never
compared: their figures measure different things. The gate then keeps the served model, says
so in ``gate.json`` and the log, and the trainer exits 3. To switch the served model's objective on
purpose, run the trainer with ``--promote-across-objectives`` (the candidate is promoted
without a comparison), or promote the run's best checkpoint by hand::

    python -c "from core.checkpoint import promote; promote('checkpoints/current',
               'checkpoints/run-.../checkpoints/best.safetensors')"

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
from core.objectives import get as objective
from core.objectives import of as objective_of
from core.training.evaluate import KeyedBatch
from core.training.losses import RunLoss

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
    candidate_objective: str = "reconstruct"
    served_objective: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def val_loss(
    checkpoint: Checkpoint,
    batches: list[KeyedBatch],
    loss_fn: RunLoss,
    device: torch.device,
) -> float:
    """A checkpoint's validation loss, its network fed as its metadata says (its image space;
    for denoise its schedule, at the fixed validation levels and noise), judged by its
    objective's figure."""
    model = build_model(checkpoint).to(device)
    judge = objective_of(checkpoint.meta)  # refuses metadata its objective cannot have written
    return judge.evaluate(model, batches, loss_fn, device, judge.figure(checkpoint.meta))[
        "val_loss"
    ]


def promotion_gate(
    pointer: Path,
    candidate: Path,
    val_batches: Iterable[KeyedBatch],
    loss_fn: RunLoss,
    device: torch.device,
    tolerance: float,
    *,
    across_objectives: bool = False,
) -> GateResult:
    """Evaluate candidate and served model; promote the candidate when it is not worse.
    A served model of another objective is kept unless ``across_objectives``."""
    batches = list(val_batches)
    new = load_checkpoint(candidate)
    new_loss = val_loss(new, batches, loss_fn, device)
    result = GateResult(False, "", str(candidate), new_loss, candidate_objective=new.meta.objective)
    served = _served(pointer)
    if served is None:
        result.promoted, result.reason = True, "nothing usable is served yet"
    elif served.path == new.path.resolve():
        result.promoted, result.reason = True, "already served"
        return result
    else:
        result.served, result.served_objective = served.version, served.meta.objective
        if objective(served.meta.objective) is not objective(new.meta.objective):
            _across(result, across_objectives)
        else:
            _compare(result, val_loss(served, batches, loss_fn, device), tolerance)
    if result.promoted:
        pointer.parent.mkdir(parents=True, exist_ok=True)
        promote(pointer, candidate)
        logger.info("gate: promoted {} -> {} ({})", pointer, candidate, result.reason)
    else:
        logger.warning("gate: kept {} ({})", served.version if served else pointer, result.reason)
    return result


def _compare(result: GateResult, served_loss: float, tolerance: float) -> None:
    """Same objective: promote when the candidate's loss is within the tolerance."""
    result.served_loss = served_loss
    limit = served_loss * (1 + tolerance)
    new_loss = result.candidate_loss
    result.promoted = math.isfinite(new_loss) and new_loss <= limit
    comparison = "<=" if result.promoted else ">"
    result.reason = (
        f"new val loss {new_loss:.6g} {comparison} served {served_loss:.6g} "
        f"x (1 + {tolerance}) = {limit:.6g}"
    )


def _across(result: GateResult, allowed: bool) -> None:
    """Different objectives: their losses are not comparable, so none is compared."""
    change = f"served {result.served_objective}, candidate {result.candidate_objective}"
    result.promoted = allowed
    if allowed:
        result.reason = f"objectives differ ({change}); promoted by --promote-across-objectives"
    else:
        result.reason = (
            f"objectives differ ({change}): not compared, not promoted; promote by hand "
            "(core.checkpoint.promote) or train with --promote-across-objectives"
        )


def _served(pointer: Path) -> Checkpoint | None:
    """The checkpoint the pointer names, or None when there is none or it is unusable."""
    if not os.path.lexists(pointer):
        return None
    try:
        served = load_checkpoint(pointer)
        objective_of(served.meta)  # an objective this version knows, with its own fields
    except (CheckpointError, ValueError) as exc:
        logger.warning("gate: the served model is unusable ({}); replacing it", exc)
        return None
    return served
