"""Samplers: how a checkpoint's network turns a batch of pixels into a batch of pixels.

The engine (core.runtime.engine) calls its sampler on each batch as ``sampler(pixels, network,
seeds, settings)``, where ``network`` is the model in the engine's chosen precision and
memory layout. Which sampler a checkpoint gets is its objective's choice
(``core.objectives.sampler_for``, from the ``objective`` its metadata records):

- :class:`SinglePass`, for one-pass objectives (``reconstruct``, the post's, and ``style``):
  one network pass on the pixels normalised as the checkpoint records. It takes no seeds,
  and sampler settings are ignored with one log line.
- :class:`DiffusionSampler`, for ``denoise``: SDEdit img2img through
  ``core.diffusion.schedule.sample`` with one network call per step for the whole batch.
  The checkpoint contract: pixel image space with mean = std = 0.5, so the space's
  normalisation is ``core.diffusion.schedule.to_model`` (the sampler feeds the network x_t as
  is) and its output, the Sigmoid, is the predicted clean image in 0..1.

What the user asks for is a ``SamplerRequest`` (core.diffusion.sampler_settings; any field may
be left unset); the checkpoint's recommended settings fill the rest
(:func:`recommended_settings`, then ``SamplerRequest.resolve``). Each image's noise seed is
``core.diffusion.schedule.image_seed(input sha256, settings)``: the same file with the same
settings gives the same output whatever else shares its batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from core.diffusion.sampler_settings import DEFAULT_SAMPLER_SETTINGS, SamplerSettings
from core.diffusion.schedule import Schedule, image_seed, sample
from core.network.space import ImageSpace

if TYPE_CHECKING:
    from core.checkpoint import CheckpointMeta

# The network as the engine runs it: the sampler's input for it in, raw output out.
Network = Callable[[torch.Tensor], torch.Tensor]


class Sampler(nn.Module):
    """What turns a batch of pixels into a batch of pixels with a checkpoint's network:
    ``sampler(pixels, network, seeds, settings)``. ``objective`` is the checkpoint's, for
    logs and refusals. A module so that ``.to(device)`` moves the image space's statistics
    with the engine."""

    def __init__(self, space: ImageSpace, objective: str) -> None:
        super().__init__()
        self.space = space
        self.objective = objective

    def forward(
        self,
        pixels: torch.Tensor,
        network: Network,
        seeds: Sequence[int] | None = None,
        settings: SamplerSettings | None = None,
    ) -> torch.Tensor:
        """0..1 NCHW pixels in, 0..1 NCHW pixels out; ``seeds`` (one per image) and
        ``settings`` are for samplers that draw noise."""
        return self._sample(pixels, network, seeds, settings)

    def _sample(self, pixels, network, seeds, settings) -> torch.Tensor:
        raise NotImplementedError


class SinglePass(Sampler):
    """The sampler of every one-pass checkpoint (reconstruct, style): normalise, one network
    pass, to pixels; it takes no seeds and ignores sampler settings."""

    def __init__(self, space: ImageSpace, objective: str = "reconstruct") -> None:
        super().__init__(space, objective)

    def _sample(self, pixels, network, seeds, settings) -> torch.Tensor:
        return self.space.to_pixels(network(self.space.normalize(pixels)))


class DiffusionSampler(Sampler):
    """SDEdit img2img on a denoise checkpoint (``core.diffusion.schedule.sample``), the batch
    stepping together: one ``network`` call per step, one noise seed per image.
    ``recommended`` is what the checkpoint is served with unless the user overrides it."""

    def __init__(self, space: ImageSpace, schedule: Schedule, recommended: SamplerSettings) -> None:
        super().__init__(space, "denoise")
        self.schedule = schedule
        self.recommended = recommended

    def _sample(self, pixels, network, seeds, settings) -> torch.Tensor:
        if seeds is None or settings is None:
            raise ValueError("a denoise checkpoint needs one seed per image and sampler settings")
        # The network maps a NaN input to finite values (oneDNN's ReLU), so a step's NaN would
        # vanish by the last step: remember it per image, on the device (no host sync).
        broken = torch.zeros(len(pixels), dtype=torch.bool, device=pixels.device)

        def denoise(x: torch.Tensor) -> torch.Tensor:
            out = self.space.to_pixels(network(x))
            broken.logical_or_(~torch.isfinite(out).all(dim=(1, 2, 3)))
            return out

        result = sample(denoise, pixels, seeds, settings, self.schedule)
        return result.masked_fill_(broken.view(-1, 1, 1, 1), float("nan"))


def recommended_settings(meta: CheckpointMeta) -> SamplerSettings:
    """A denoise checkpoint's recommended settings (``meta.sampler``) over
    ``DEFAULT_SAMPLER_SETTINGS``; a bad recommendation raises ValueError naming it."""
    values = dict(meta.sampler)
    if "steps" in values and float(values["steps"]).is_integer():
        values["steps"] = int(values["steps"])  # JSON may carry 25 as 25.0
    try:
        return dataclasses.replace(DEFAULT_SAMPLER_SETTINGS, **values)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the checkpoint's recommended sampler {meta.sampler}: {exc}") from exc


def seeds_for(sha256s: Iterable[str], settings: SamplerSettings) -> list[int]:
    """One noise seed per input, from its content hash and the effective settings."""
    recorded: Mapping[str, object] = settings.to_dict()
    return [image_seed(sha256, recorded) for sha256 in sha256s]


def content_seeds(batch: torch.Tensor, settings: SamplerSettings) -> list[int]:
    """:func:`seeds_for` with each item's own bytes hashed, for callers that have no file
    hash: a uint8 HWC item hashes as the decoded array it was stacked from."""
    items = batch.detach().cpu()
    return seeds_for(
        (hashlib.sha256(item.contiguous().numpy().tobytes()).hexdigest() for item in items),
        settings,
    )
