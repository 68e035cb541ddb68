"""Style-transfer training parts: the Gram target, the per-step style draw, the style figure.

The ``style`` objective (``core.objectives.style``) trains photos into the collection's manner,
in one pass.

Johnson, Alahi and Fei-Fei, "Perceptual Losses for Real-Time Style Transfer" (2016), as in
pytorch/examples ``fast_neural_style``: the network gets a content photo (ImageNet-normalised,
like reconstruct) and is trained with ``core.training.losses.StyleLoss``: relu2_2 of its
output against relu2_2 of the photo, the Gram matrices of its output at relu1_2, relu2_2 and
relu3_3 against the collection's, and total variation.

- **The style target** (:func:`mean_grams`): every training-split image of the collection
  (``--data``) through VGG once, in the split's order, its Gram matrices averaged in float64.
  It is computed on rank 0 and handed to the others, so every rank and every resumed run
  holds the same bits. With ``--style-target sample`` each step uses one training image's
  Gram matrices instead (:class:`StyleDraw`, re-seeded per epoch from (seed, rank, epoch)
  like a denoise run's noise, so a resumed run draws what an uninterrupted one would).
- **The validation figure** (:func:`evaluate_style`): on the held-out content photos, with
  the mean target whatever ``--style-target`` says and the run's weights:
  ``val_loss = content_weight x val_content + style_weight x val_style``; no randomness.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from core.diffusion.schedule import image_seed
from core.network.space import ImageSpace
from core.training.data import CachedImages
from core.training.distributed import Dist, share_from_main
from core.training.evaluate import KeyedBatch, device_pixels
from core.training.losses import STYLE_LAYERS, StyleFeatures, StyleLoss
from core.training.settings import TrainSettings


@torch.no_grad()
def mean_grams(
    features: StyleFeatures, images: CachedImages, device: torch.device, batch_size: int
) -> dict[str, torch.Tensor]:
    """The collection's mean Gram matrix per layer, (1, C, C) fp32 on the CPU: ``images`` in
    order, batch by batch, summed in float64."""
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, len(images), batch_size):
        indices = list(range(start, min(start + batch_size, len(images))))
        pixels = device_pixels(images.__getitems__(indices), device, False)
        for name, g in features.grams(pixels).items():
            total = g.double().sum(0, keepdim=True)
            sums[name] = sums[name] + total if name in sums else total
    if not sums:
        raise RuntimeError("no style images to compute the collection's Gram statistics from")
    return {name: (sums[name] / len(images)).float().cpu() for name, _ in STYLE_LAYERS}


def build_style_loss(
    s: TrainSettings, d: Dist, features: StyleFeatures, style_set: CachedImages
) -> StyleLoss:
    """The run's :class:`~core.training.losses.StyleLoss`: the target computed once on rank 0
    (on its device) and shared, the weights from the settings."""
    features = features.to(d.device)
    target = share_from_main(d, lambda: mean_grams(features, style_set, d.device, s.batch_size))
    loss = StyleLoss(
        features, target, content_weight=s.content_weight, style_weight=s.style_weight,
        tv_weight=s.tv_weight,
    )  # fmt: skip
    return loss.to(d.device)


class StyleDraw:
    """``--style-target sample``: one style image's Gram matrices per step, the image drawn
    by a generator re-seeded at each epoch from (seed, rank, epoch)."""

    def __init__(self, images: CachedImages, features: StyleFeatures, seed: int, rank: int) -> None:
        self.images, self.features = images, features
        self.seed, self.rank = seed, rank
        self._pick = torch.Generator()
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        """Re-seed the draw for ``epoch`` (0-based)."""
        where = {"seed": self.seed, "rank": self.rank, "epoch": epoch}
        self._pick.manual_seed(image_seed("style-draw", where))

    def target(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The next style image's Gram matrices, (1, C, C) per layer."""
        index = int(torch.randint(len(self.images), (1,), generator=self._pick))
        pixels = device_pixels(self.images.__getitems__([index]), device, False)
        return self.features.grams(pixels)


def style_draw(
    s: TrainSettings, d: Dist, loss: StyleLoss, style_set: CachedImages | None
) -> StyleDraw | None:
    """The style run's :class:`StyleDraw` when it samples a style image per step, else
    None."""
    if style_set is None or s.style_target != "sample":
        return None
    return StyleDraw(style_set, loss.features, s.seed, d.rank)


@torch.no_grad()
def evaluate_style(
    model: nn.Module,
    batches: Iterable[KeyedBatch],
    loss_fn: StyleLoss,
    device: torch.device,
    space: ImageSpace,
    *,
    channels_last: bool = False,
) -> dict[str, float]:
    """Mean ``val_loss``, ``val_content``, ``val_style`` and ``val_tv`` over the held-out
    content photos (fp32, the mean Gram target, the model fed through ``space``); ``{}``
    when there are none."""
    was_training = model.training
    model.eval()
    space = space.to(device)
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for batch, _keys in batches:
        photos = device_pixels(batch, device, channels_last)
        output = space.to_pixels(model(space.normalize(photos)).float())
        _, content, style, tv = loss_fn(output, photos)
        n = photos.shape[0]
        sums += torch.stack([content.double() * n, style.double() * n, tv.double() * n,
                             torch.tensor(n, dtype=torch.float64, device=device)])  # fmt: skip
    model.train(was_training)
    content, style, tv, count = sums.tolist()
    if count == 0:
        return {}
    content, style, tv = content / count, style / count, tv / count
    return {
        "val_loss": loss_fn.content_weight * content + loss_fn.style_weight * style,
        "val_content": content,
        "val_style": style,
        "val_tv": tv,
    }
