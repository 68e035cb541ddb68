"""Batches onto the device, and the validation metrics every epoch and the gate report.

A batch from the training cache is uint8 NHWC; the network gets it normalised the way its
image space says (``core.space``) and the loss compares 0..1 pixels, whatever the space.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from core.losses import TrainingLoss
from core.space import ImageSpace, imagenet, uint8_to_pixels


def batch_to_device(
    batch: torch.Tensor, device: torch.device, space: ImageSpace, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NHWC from the cache -> (the network's input, 0..1 pixel target), NCHW.

    ``space`` must be on ``device``. Permuting NHWC gives channels_last strides for free."""
    pixels = uint8_to_pixels(batch.to(device, non_blocking=True), channels_last=channels_last)
    return space.normalize(pixels), pixels


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    loss_fn: TrainingLoss,
    device: torch.device,
    *,
    space: ImageSpace | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """Mean ``val_loss``, ``val_mse``, ``val_perceptual`` and per-image ``val_psnr`` (fp32),
    with the model seeing images in ``space`` (default: pixel space, ImageNet statistics,
    what the trainer trains); ``{}`` when there are no batches."""
    was_training = model.training
    model.eval()
    space = (space if space is not None else imagenet()).to(device)
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    for batch in batches:
        inputs, target = batch_to_device(batch, device, space, channels_last)
        output = space.to_pixels(model(inputs).float())
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
