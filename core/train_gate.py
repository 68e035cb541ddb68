"""Validation metrics and the promotion gate that guards the served model.

The gate evaluates the run's best checkpoint and the currently served one on the *current*
validation split with the same loss, and moves the pointer (atomically, via
``core.checkpoint.promote``) only when the new loss is at most ``served x (1 + tolerance)``.
A served seed-space checkpoint is judged in its own space: its output is denormalized the way
the seed's inference does before being compared with the pixels.

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
from torch import nn

from core.checkpoint import CheckpointError, build_model, load_checkpoint, promote
from core.losses import ImageNetNormalize, TrainingLoss
from core.model import IMAGENET_MEAN, IMAGENET_STD

EXIT_NOT_PROMOTED = 3


def batch_to_device(
    batch: torch.Tensor, device: torch.device, normalize: nn.Module, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NHWC from the cache -> (ImageNet-normalized input, 0..1 pixel target), NCHW.

    Permuting NHWC gives channels_last strides for free; ``contiguous`` undoes it when unwanted.
    """
    pixels = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    if not channels_last:
        pixels = pixels.contiguous()
    return normalize(pixels), pixels


def seed_output_to_pixels(output: torch.Tensor) -> torch.Tensor:
    """The seed's inference post-processing: x * std + mean, clamped to 0..1."""
    mean = torch.tensor(IMAGENET_MEAN, device=output.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=output.device).view(1, 3, 1, 1)
    return (output * std + mean).clamp(0, 1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    loss_fn: TrainingLoss,
    device: torch.device,
    *,
    image_space: str = "pixel",
    channels_last: bool = False,
) -> dict[str, float]:
    """Mean ``val_loss``, ``val_mse``, ``val_perceptual`` and per-image ``val_psnr`` (fp32)."""
    was_training = model.training
    model.eval()
    normalize = ImageNetNormalize().to(device)
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    for batch in batches:
        inputs, target = batch_to_device(batch, device, normalize, channels_last)
        output = model(inputs).float()
        if image_space == "seed":
            output = seed_output_to_pixels(output)
        loss, mse, perceptual = loss_fn(output, target)
        per_image_mse = (output - target).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        n = target.shape[0]
        sums += torch.stack(
            [
                loss.double() * n,
                mse.double() * n,
                perceptual.double() * n,
                (-10 * torch.log10(per_image_mse)).sum().double(),
                torch.tensor(n, dtype=torch.float64, device=device),
            ]
        )
    model.train(was_training)
    loss, mse, perceptual, psnr, count = sums.tolist()
    if count == 0:
        return {}
    return {
        "val_loss": loss / count,
        "val_mse": mse / count,
        "val_perceptual": perceptual / count,
        "val_psnr": psnr / count,
    }


@dataclass
class GateResult:
    promoted: bool
    reason: str
    candidate: str
    candidate_loss: float
    served: str | None = None
    served_loss: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


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
    new_loss = evaluate(build_model(new).to(device), batches, loss_fn, device)["val_loss"]
    result = GateResult(False, "", str(candidate), new_loss)
    served = None
    if os.path.lexists(pointer):
        try:
            served = load_checkpoint(pointer)
        except CheckpointError as exc:
            logger.warning("gate: the served model is unusable ({}); replacing it", exc)
    if served is None:
        result.promoted, result.reason = True, "nothing usable is served yet"
    elif served.path == new.path.resolve():
        result.promoted, result.reason = True, "already served"
        return result
    else:
        served_model = build_model(served).to(device)
        metrics = evaluate(
            served_model, batches, loss_fn, device, image_space=served.meta.image_space
        )
        result.served, result.served_loss = served.version, metrics["val_loss"]
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
