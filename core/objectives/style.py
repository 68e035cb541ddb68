"""The ``style`` objective: photos in the collection's manner, in one pass (Johnson et al. 2016).

The network gets a content photo (ImageNet-normalised, like reconstruct) and is trained with
``core.training.losses.StyleLoss`` against the collection's Gram statistics; the content
photos are ``--content-data`` (default: the collection) and the collection's training split
is the style images. The training parts (the Gram target, the per-step style draw, the
validation figure) are ``core.training.style``; docs/training.md describes the settings.
Served in one pass (``SinglePass``), like reconstruct.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from loguru import logger
from torch import nn

from core.objectives.base import Objective, Steps

if TYPE_CHECKING:
    from core.training.distributed import Dist
    from core.training.loaders import Data
    from core.training.losses import RunLoss
    from core.training.run_folder import RunFolder
    from core.training.settings import TrainSettings
    from core.training.style import StyleDraw


class StyleSteps(Steps):
    """A style run's steps: the photo in, the photo as the content target, and with
    ``--style-target sample`` one style image's Gram matrices per step."""

    def __init__(self, objective: Objective, draw: StyleDraw | None) -> None:
        super().__init__(objective)
        self.draw = draw

    def start_epoch(self, epoch: int) -> None:
        if self.draw is not None:
            self.draw.start_epoch(epoch)

    def loss_args(self, device: torch.device) -> tuple[Any, ...]:
        return () if self.draw is None else (self.draw.target(device),)


class Style(Objective):
    """Photo in, the photo in the collection's manner out."""

    name = "style"
    summary = "style (photos in the collection's manner; needs VGG16 weights)"
    loss_parts = ("loss", "content", "style", "tv")
    own_settings = frozenset({"content_data"})
    vgg_use = "style"

    def vgg_options(self, s: TrainSettings) -> dict[str, Any] | None:
        """VGG16 whatever ``--perceptual-weight`` says; missing weights point at denoise."""
        from core.training.losses import WITHOUT_VGG_STYLE

        return {"without": WITHOUT_VGG_STYLE}

    def load_data(self, s: TrainSettings, d: Dist, run: RunFolder) -> Data:
        """The content photos' splits, and the collection's training split as style images."""
        from core.training.loaders import load_style_data

        return load_style_data(s, d, run)

    def loss(self, s: TrainSettings, d: Dist, vgg: nn.Sequential | None, data: Data) -> RunLoss:
        """The style loss against the collection's mean Gram matrices."""
        from core.training.losses import StyleFeatures
        from core.training.style import build_style_loss

        assert data.style_set is not None  # load_data
        return build_style_loss(s, d, StyleFeatures(vgg), data.style_set)

    def steps(self, s: TrainSettings, d: Dist, loss: RunLoss, data: Data) -> Steps:
        from core.training.style import style_draw

        return StyleSteps(self, style_draw(s, d, loss, data.style_set))

    def _validation(self, model, batches, loss_fn, device, figure, channels_last):
        """Content and style loss on the held-out photos
        (``core.training.style.evaluate_style``)."""
        from core.training.style import evaluate_style

        return evaluate_style(
            model, batches, loss_fn, device, figure.space, channels_last=channels_last
        )

    def log_epoch(self, done: int, epochs: int, row: Mapping[str, float]) -> None:
        logger.info(
            "epoch {}/{}: loss {:.5f} (content {:.5f}, style {:.5g}, tv {:.5f}) val_loss {:.5f} "
            "(val_content {:.5f}, val_style {:.5g}), {:.1f} images/s",
            done, epochs, row["loss"], row["content"], row["style"], row["tv"],
            row.get("val_loss", math.nan), row.get("val_content", math.nan),
            row.get("val_style", math.nan), row["images_per_s"],
        )  # fmt: skip
