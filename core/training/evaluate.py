"""Batches onto the device, and the validation metrics every epoch and the gate report.

A batch from the training cache is uint8 NHWC; the network gets it normalised the way its
image space says (``core.network.space``) and the loss compares 0..1 pixels, whatever the space.
Validation batches come with their images' keys (content hashes): a denoise checkpoint's
figure noises each image with noise seeded by its key (``core.training.figure.Figure``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from core.network.space import ImageSpace, imagenet, uint8_to_pixels
from core.training.figure import Figure
from core.training.losses import TrainingLoss

# One validation batch: uint8 NHWC pixels and each image's key (its content hash).
KeyedBatch = tuple[torch.Tensor, Sequence[str]]


def batch_to_device(
    batch: torch.Tensor, device: torch.device, space: ImageSpace, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NHWC from the cache -> (the network's input, 0..1 pixel target), NCHW.

    ``space`` must be on ``device``."""
    pixels = device_pixels(batch, device, channels_last)
    return space.normalize(pixels), pixels


def device_pixels(batch: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 NHWC from the cache -> 0..1 NCHW pixels on ``device`` (permuting NHWC gives
    channels_last strides for free)."""
    return uint8_to_pixels(batch.to(device, non_blocking=True), channels_last=channels_last)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[KeyedBatch],
    loss_fn: TrainingLoss,
    device: torch.device,
    *,
    figure: Figure | None = None,
    channels_last: bool = False,
    target: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Mean ``val_loss``, ``val_mse``, ``val_perceptual`` and per-image ``val_psnr`` (fp32),
    with the model fed as ``figure`` says (default: pixel space, ImageNet statistics, what
    the reconstruct trainer trains; a denoise figure averages over its levels) and its
    output compared with ``target(image)`` (default: the image); ``{}`` when there are no
    batches."""
    was_training = model.training
    model.eval()
    figure = (figure if figure is not None else Figure(imagenet())).to(device)
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    for batch, keys in batches:
        pixels = device_pixels(batch, device, channels_last)
        wanted = pixels if target is None else target(pixels)
        for inputs, level in figure.inputs(pixels, keys):
            output = figure.clean(model(inputs), inputs, level)
            sums += _sums(output, wanted, loss_fn)
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


def _sums(output: torch.Tensor, target: torch.Tensor, loss_fn: TrainingLoss) -> torch.Tensor:
    """One batch's (loss, mse, perceptual, PSNR) summed over images, and the image count."""
    loss, mse, perceptual = loss_fn(output, target)
    per_image_mse = (output - target).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    n = target.shape[0]
    return torch.stack(
        [
            loss.double() * n,
            mse.double() * n,
            perceptual.double() * n,
            (-10 * torch.log10(per_image_mse)).sum().double(),
            torch.tensor(n, dtype=torch.float64, device=target.device),
        ]
    )
