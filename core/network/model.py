"""The post's network, unchanged in shape and parameter names.

One forward pass maps an image to an image through a three-level convolutional
encoder-decoder with additive skips. Keeping the layer layout identical (``enc1.0.weight``,
``enc1.2.running_mean``, ...) is what lets the post's ``state_dict`` load with ``strict=True``.

One variant, recorded in a checkpoint's ``decoder`` metadata (docs/training.md): ``upsample``
replaces each stride-2 transposed convolution of the decoder by nearest-neighbour 2x
upsampling and a 3x3 convolution, which cannot leave the checkerboard a transposed
convolution paints when each output pixel sees an uneven share of the kernel (Odena,
Dumoulin and Olah, "Deconvolution and Checkerboard Artifacts", 2016). The parameter names
stay the same; the decoder's weights are (out, in, 3, 3) instead of (in, out, 3, 3). It
costs about four times the transposed convolution's multiply-adds in the decoder.

A second variant, ``upsample-full``, gives the ``upsample`` network the full-resolution
level a U-Net has and the post lacks (its finest features are at half resolution, so it
must repaint every pixel from them; docs/art-benchmark.md). ``fine`` (a 3x3 convolution of
the input at full resolution) is added to ``dec3``, which now upsamples to ``FULL_WIDTH``
channels instead of the image's 3; ``mix`` (3x3) and ``out`` (3x3 to 3 channels, then the
Sigmoid) follow. The post's names keep their meaning and shapes but for ``dec3``'s outputs.

A guided network (``guide_channels`` > 0, recorded in a checkpoint's ``guide``:
core/network/guide.py) takes the guide's channels after the image's: only the convolutions
that read the input (``enc1.0``, and ``fine.0`` in ``upsample-full``) grow, every other
shape and name is the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.network.shapes import SIZE_MULTIPLE
from core.network.spec import (
    ARCHITECTURE,
    DECODERS,
    FULL_WIDTH,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_GUIDE_CHANNELS,
)

__all__ = [
    "ARCHITECTURE",
    "DECODERS",
    "FULL_WIDTH",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_GUIDE_CHANNELS",
    "SIZE_MULTIPLE",
    "ConvDiffusionModel",
    "UpsampleConv2d",
]


def _block(cin: int, cout: int) -> nn.Sequential:
    """The post's ``conv -> ReLU -> BN`` at one resolution (3x3, padding 1)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1), nn.ReLU(), nn.BatchNorm2d(cout)
    )


def _encoder(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(*_block(cin, cout), nn.MaxPool2d(kernel_size=2, stride=2))


class UpsampleConv2d(nn.Conv2d):
    """Nearest-neighbour 2x upsampling, then a 3x3 convolution (padding 1)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.interpolate(x, scale_factor=2, mode="nearest"))


def _decoder(cin: int, cout: int, decoder: str, last: bool = False) -> nn.Sequential:
    up: nn.Module
    if decoder != "transpose":
        up = UpsampleConv2d(cin, cout)
    else:
        up = nn.ConvTranspose2d(cin, cout, kernel_size=3, stride=2, padding=1, output_padding=1)
    if last:
        return nn.Sequential(up, nn.Sigmoid())
    return nn.Sequential(up, nn.ReLU(), nn.BatchNorm2d(cout))


class ConvDiffusionModel(nn.Module):
    """Encoder-decoder with additive skips; output is a Sigmoid in 0..1. ``decoder`` is one
    of :data:`DECODERS` (module docstring); the default is the post's. ``guide_channels``:
    extra input channels after the image's (a guided network; module docstring)."""

    def __init__(self, decoder: str = "transpose", guide_channels: int = 0) -> None:
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}: {decoder!r}")
        if isinstance(guide_channels, bool) or not isinstance(guide_channels, int):
            raise ValueError(f"guide_channels must be an integer, got {guide_channels!r}")
        if not 0 <= guide_channels <= MAX_GUIDE_CHANNELS:
            raise ValueError(f"guide_channels must be 0..{MAX_GUIDE_CHANNELS}: {guide_channels}")
        self.decoder = decoder
        self.guide_channels = guide_channels
        cin = 3 + guide_channels
        self.enc1 = _encoder(cin, 64)
        self.enc2 = _encoder(64, 128)
        self.enc3 = _encoder(128, 256)
        self.dec1 = _decoder(256, 128, decoder)
        self.dec2 = _decoder(128, 64, decoder)
        self.full = decoder == "upsample-full"
        if self.full:
            self.fine = _block(cin, FULL_WIDTH)
            self.dec3 = _decoder(64, FULL_WIDTH, decoder)
            self.mix = _block(FULL_WIDTH, FULL_WIDTH)
            last = nn.Conv2d(FULL_WIDTH, 3, kernel_size=3, padding=1)
            self.out = nn.Sequential(last, nn.Sigmoid())
        else:
            self.dec3 = _decoder(64, 3, decoder, last=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc1 = self.enc1(x)
        enc2 = self.enc2(enc1)
        enc3 = self.enc3(enc2)
        dec1 = self.dec1(enc3) + enc2
        dec2 = self.dec2(dec1) + enc1
        if self.full:
            return self.out(self.mix(self.dec3(dec2) + self.fine(x)))
        return self.dec3(dec2)


def expected_shapes(
    decoder: str = "transpose", guide_channels: int = 0
) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of a fresh model, the reference for validating weights."""
    model = ConvDiffusionModel(decoder, guide_channels)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
