"""The validation figure's inputs: how a checkpoint's network is fed the held-out images.

A :class:`Figure` feeds a network through its image space; with a noise schedule (denoise)
it judges every image at the fixed levels :data:`VAL_LEVELS`, with noise from
``core.diffusion.schedule.seeded_noise`` seeded by the image's content hash and the level, so
two nights (and the gate's two checkpoints) see the same noisy inputs. Which figure a
checkpoint gets is its objective's choice (``Objective.figure`` in core/objectives/base.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from core.diffusion.schedule import Schedule, clean_pixels, image_seed, noised, seeded_noise
from core.network.guide import Guide
from core.network.space import ImageSpace

# The levels every validation image is judged at (denoise).
VAL_LEVELS = (0.25, 0.5, 0.75)


def objective_seed(label: str, **values: object) -> int:
    """A stable seed for one purpose (``core.diffusion.schedule.image_seed`` over a label)."""
    return image_seed(label, values)


@dataclass(frozen=True)
class Figure:
    """How a checkpoint's validation figure feeds its network: through its image space, and
    with a schedule at each of :data:`VAL_LEVELS` with noise seeded by image and level."""

    space: ImageSpace
    schedule: Schedule | None = None
    # A guided network's guide: each input gets the clean image's guide at its served blur.
    guide: Guide | None = None

    def to(self, device: torch.device) -> Figure:
        return Figure(self.space.to(device), self.schedule, self.guide)

    def inputs(
        self, pixels: torch.Tensor, keys: Sequence[str]
    ) -> Iterator[tuple[torch.Tensor, float | None]]:
        """The network inputs for one batch of 0..1 pixels whose images are ``keys`` (content
        hashes), each with its level: one (level None) without a schedule, one per
        validation level with one."""
        if self.schedule is None:
            yield self.space.normalize(pixels), None
            return
        if len(keys) != pixels.shape[0]:
            raise ValueError(f"need one key per image: {len(keys)} keys, {pixels.shape[0]} images")
        guide = None
        if self.guide is not None:
            guide = self.guide.abstraction_of(pixels, self.guide.serve_blur).to(pixels.dtype)
        for level in VAL_LEVELS:
            seeds = [objective_seed("validation", image=key, level=level) for key in keys]
            noise = seeded_noise(seeds, pixels.shape[1:], pixels.device).to(pixels.dtype)
            x_t = noised(pixels, level, noise, self.schedule)
            yield (x_t if guide is None else torch.cat([x_t, guide], dim=1)), level

    def clean(
        self, output: torch.Tensor, inputs: torch.Tensor, level: float | None
    ) -> torch.Tensor:
        """The predicted clean pixels from the network's ``output`` for ``inputs`` at ``level``
        (what the figure judges, so checkpoints of either parameterisation compare alike)."""
        pixels = self.space.to_pixels(output.float())
        if self.schedule is None or level is None:
            return pixels
        return clean_pixels(pixels, inputs[:, :3], level, self.schedule)
