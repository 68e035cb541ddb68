"""The guide: the abstraction of an image that a guided network paints over.

A guided checkpoint's network sees, beside the noised image, an abstraction of the clean
image (Palette / SR3-style conditioning): training computes it from the collection's own
images, serving from the photo, both through :meth:`Guide.abstraction`, so the two can never
drift apart. What it keeps is recorded in the checkpoint (``meta.guide``, :meth:`Guide.to_dict`):

- ``abstraction``: ``luminance`` (Rec. 601 luma, one channel) or ``colour`` (RGB, three);
- ``blur``: the Gaussian blur's standard deviation in pixels, drawn per image from
  ``[blur_min, blur_max]`` while training and ``serve_blur`` when serving (at the sampling
  size, where the network's pixels are the training pixels);
- ``dropout``: the share of training images whose guide was withheld (classifier-free
  guidance, Ho and Salimans 2022), and ``scale``, the guidance scale served (1 = the guided
  prediction alone, one network pass per step; above 1, two).

The network's extra input is the abstraction in -1..1 plus one *presence* channel (1 where a
guide is given, 0 where it is withheld), so a withheld guide is never mistaken for a flat
grey picture. ``channels`` counts both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

ABSTRACTIONS: dict[str, int] = {"luminance": 1, "colour": 3}
# Rec. 601 luma weights on sRGB values, the luminance every JPEG decoder uses.
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Guide:
    """What a guided network's guide keeps (module docstring); invalid values raise
    ValueError naming the field."""

    abstraction: str = "luminance"
    blur_min: float = 1.5
    blur_max: float = 4.0
    serve_blur: float = 2.5
    dropout: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.abstraction not in ABSTRACTIONS:
            raise ValueError(
                f"guide.abstraction must be one of {', '.join(ABSTRACTIONS)}, "
                f"got {self.abstraction!r}"
            )
        for name in ("blur_min", "blur_max", "serve_blur", "dropout", "scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"guide.{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"guide.{name} must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.blur_min > self.blur_max:
            raise ValueError(
                f"guide.blur_min {self.blur_min} is above guide.blur_max {self.blur_max}"
            )
        if self.dropout >= 1:
            raise ValueError(f"guide.dropout must be below 1, got {self.dropout}")
        if self.scale < 1:
            raise ValueError(f"guide.scale must be at least 1, got {self.scale}")

    @property
    def channels(self) -> int:
        """The network's extra input channels: the abstraction's, plus presence."""
        return ABSTRACTIONS[self.abstraction] + 1

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``guide`` record (``channels`` included, for the weights' check)."""
        return {**asdict(self), "channels": self.channels}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Guide:
        """The guide a checkpoint records; ValueError names a missing or bad field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"guide must be an object, got {data!r}")
        fields = ("abstraction", "blur_min", "blur_max", "serve_blur", "dropout", "scale")
        missing = [name for name in fields if name not in data]
        if missing:
            raise ValueError(f"guide lacks {', '.join(missing)}")
        guide = cls(**{name: data[name] for name in fields})
        if data.get("channels") != guide.channels:
            raise ValueError(
                f"guide.channels must be {guide.channels} for a {guide.abstraction} guide, "
                f"got {data.get('channels')!r}"
            )
        return guide

    def abstraction_of(
        self, pixels: torch.Tensor, blur: torch.Tensor | float, present: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The network's guide channels for 0..1 NCHW ``pixels``: the abstraction blurred by
        ``blur`` (one sigma per image, or one for all) in -1..1, then presence; images where
        ``present`` (bool, one per image) is False get zeros in every channel."""
        image = pixels.float()
        if self.abstraction == "luminance":
            weights = image.new_tensor(LUMA).view(1, 3, 1, 1)
            image = (image * weights).sum(dim=1, keepdim=True)
        n = image.shape[0]
        sigmas = torch.as_tensor(blur, dtype=torch.float32).reshape(-1).expand(n)
        out = torch.cat([gaussian_blur(image, sigmas).mul_(2).sub_(1), image.new_ones(n, 1,
                        *image.shape[2:])], dim=1)  # fmt: skip
        if present is not None:
            out = out * present.to(out.device, out.dtype).view(-1, 1, 1, 1)
        return out


def gaussian_blur(image: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Each image of ``image`` (N, C, H, W) blurred by its own standard deviation in pixels
    (``sigmas``, N values; below 0.3 an image is left as it is), separable, borders
    reflected. Each image's result depends on it and its sigma only, never on its batch."""
    out = torch.empty_like(image)
    for i, sigma in enumerate(sigmas.tolist()):
        out[i] = _blur_one(image[i : i + 1], float(sigma))[0]
    return out


def _blur_one(image: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma < 0.3:
        return image.clone()
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=image.device)
    kernel = torch.exp(-(x * x) / (2 * sigma * sigma))
    kernel /= kernel.sum()
    c, (h, w) = image.shape[1], image.shape[2:]
    # Reflect padding needs the pad below the side; a tiny image is replicated instead.
    mode = "reflect" if radius < min(h, w) else "replicate"
    rows = kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    cols = kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    image = F.conv2d(F.pad(image, (radius, radius, 0, 0), mode=mode), rows, groups=c)
    return F.conv2d(F.pad(image, (0, 0, radius, radius), mode=mode), cols, groups=c)
