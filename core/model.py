"""The seed's network, unchanged in shape and parameter names.

Despite its name it is not a diffusion model: one forward pass maps an image to an image
through a three-level convolutional encoder-decoder with additive skips. Keeping the
layer layout identical (``enc1.0.weight``, ``enc1.2.running_mean``, ...) is what lets a
seed ``state_dict`` load with ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from core.shapes import SIZE_MULTIPLE

__all__ = ["ARCHITECTURE", "IMAGENET_MEAN", "IMAGENET_STD", "SIZE_MULTIPLE", "ConvDiffusionModel"]

ARCHITECTURE = "ConvDiffusionModel"
# The seed normalizes inputs with ImageNet statistics; VGG's perceptual loss expects them too.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _encoder(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1),
        nn.ReLU(),
        nn.BatchNorm2d(cout),
        nn.MaxPool2d(kernel_size=2, stride=2),
    )


def _decoder(cin: int, cout: int, last: bool = False) -> nn.Sequential:
    up = nn.ConvTranspose2d(cin, cout, kernel_size=3, stride=2, padding=1, output_padding=1)
    if last:
        return nn.Sequential(up, nn.Sigmoid())
    return nn.Sequential(up, nn.ReLU(), nn.BatchNorm2d(cout))


class ConvDiffusionModel(nn.Module):
    """Encoder-decoder with additive skips; output is a Sigmoid in 0..1."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = _encoder(3, 64)
        self.enc2 = _encoder(64, 128)
        self.enc3 = _encoder(128, 256)
        self.dec1 = _decoder(256, 128)
        self.dec2 = _decoder(128, 64)
        self.dec3 = _decoder(64, 3, last=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc1 = self.enc1(x)
        enc2 = self.enc2(enc1)
        enc3 = self.enc3(enc2)
        dec1 = self.dec1(enc3) + enc2
        dec2 = self.dec2(dec1) + enc1
        return self.dec3(dec2)


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of a fresh model, the reference for validating weights."""
    return {k: tuple(v.shape) for k, v in ConvDiffusionModel().state_dict().items()}
