"""Image spaces: how a checkpoint's network sees images and how its output becomes pixels.

This is the one place that normalises and denormalises (the way diffusers lets one image
processor own it). Pixels are float NCHW in 0..1 everywhere outside this module.

- ``pixel`` (artd's own training): the input is normalised with the checkpoint's recorded
  ``normalization`` (ImageNet statistics so far); the output *is* the image (the network's
  Sigmoid, 0..1).
- ``seed`` (:data:`POST_IMAGE_SPACE`, a checkpoint trained with the post's script): the post
  trained against normalised targets and "denormalised" the Sigmoid's output at inference
  (docs/post.md); its checkpoints only look right with exactly that post-processing, clamped
  to 0..1.

The VGG perceptual loss always sees ImageNet-normalised copies (:func:`imagenet`), whatever
the checkpoint records: those are the statistics VGG was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from core.network.spec import IMAGENET_MEAN, IMAGENET_STD, POST_IMAGE_SPACE


class ImageSpace(nn.Module):
    """Normalisation on the way in, the space's post-processing on the way out.

    A module so that ``.to(device)`` moves its statistics with the model it serves."""

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        *,
        post_output: bool = False,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.post_output = post_output

    @classmethod
    def of(cls, meta: object) -> ImageSpace:
        """The space a checkpoint records (a ``CheckpointMeta``: its ``image_space`` and
        ``normalization``)."""
        normalization = meta.normalization  # type: ignore[attr-defined]
        return cls(
            normalization["mean"],
            normalization["std"],
            post_output=meta.image_space == POST_IMAGE_SPACE,  # type: ignore[attr-defined]
        )

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """0..1 pixels -> the network's input."""
        return (pixels - self.mean) / self.std

    def to_pixels(self, output: torch.Tensor) -> torch.Tensor:
        """The network's output -> 0..1 pixels."""
        if not self.post_output:
            return output
        return (output * self.std + self.mean).clamp_(0, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.normalize(pixels)


def imagenet() -> ImageSpace:
    """The ImageNet statistics VGG expects (used by the perceptual loss)."""
    return ImageSpace()


def uint8_to_pixels(batch: torch.Tensor, *, channels_last: bool = True) -> torch.Tensor:
    """uint8 NHWC (the decoders' and the training cache's layout) -> float NCHW 0..1.

    The permute leaves the result channels_last in memory for free; ``channels_last=False``
    makes it contiguous NCHW. A float batch is taken as already NCHW 0..1."""
    if batch.dtype != torch.uint8:
        return batch.float()
    pixels = batch.permute(0, 3, 1, 2).float().div_(255)
    return pixels if channels_last else pixels.contiguous()
