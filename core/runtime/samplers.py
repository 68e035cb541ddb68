"""Samplers: how a checkpoint's network turns a batch of pixels into a batch of pixels.

The engine (core.runtime.engine) calls its sampler on each batch as ``sampler(pixels, network,
seeds, settings)``, where ``network`` is the model in the engine's chosen precision and
memory layout. Which sampler a checkpoint gets is its objective's choice
(``core.objectives.sampler_for``, from the ``objective`` its metadata records):

- :class:`SinglePass`, for one-pass objectives (``reconstruct``, the post's, and ``style``):
  one network pass on the pixels normalised as the checkpoint records. It takes no seeds,
  and sampler settings are ignored with one log line.
- :class:`DiffusionSampler`, for ``denoise`` (and :class:`GuidedSampler`, for ``guided``,
  which hands the network the photo's guide beside x_t): SDEdit img2img through
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
import torch.nn.functional as F
from torch import nn

from core.diffusion.sampler_settings import DEFAULT_SAMPLER_SETTINGS, SamplerSettings
from core.diffusion.schedule import (
    Schedule,
    clean_pixels,
    image_seed,
    noised,
    sample,
    seeded_noise,
    step_count,
)
from core.network.guide import Guide
from core.network.shapes import SIZE_MULTIPLE
from core.network.space import ImageSpace

if TYPE_CHECKING:
    from core.checkpoint import CheckpointMeta

# The network as the engine runs it: the sampler's input for it in, raw output out.
Network = Callable[[torch.Tensor], torch.Tensor]
# The noise level a sampling checkpoint's precision probe denoises from.
PROBE_LEVEL = 0.5


class Sampler(nn.Module):
    """What turns a batch of pixels into a batch of pixels with a checkpoint's network:
    ``sampler(pixels, network, seeds, settings)``. ``objective`` is the checkpoint's, for
    logs and refusals. A module so that ``.to(device)`` moves the image space's statistics
    with the engine."""

    # Whether the network also sees a guide of the images (GuidedSampler): the pixels handed to
    # a generation from noise then matter, as the layout to follow.
    takes_guide = False
    # The precision probe's limit for this sampler (None: the engine's, 1.5/255 for one-pass
    # parity); a sampling sampler's is set from what its art benchmark figures tolerate.
    probe_tolerance: float | None = None

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

    def probe(
        self,
        pixels: torch.Tensor,
        network: Network,
        seeds: Sequence[int] | None,
        settings: SamplerSettings | None,
    ) -> torch.Tensor:
        """What the engine's precision probe compares across precisions: the whole sampler
        for one pass; a sampling sampler overrides it with one of its network calls."""
        return self(pixels, network, seeds, settings)


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
    ``recommended`` is what the checkpoint is served with unless the user overrides it.

    With a working size (``SamplerSettings.working_size``) smaller than the batch's shorter
    side, the sampler runs at that size, where the network draws its texture at the scale it
    learnt it, and the result is brought to the batch's size (bicubic); a ``refine`` strength
    then runs a short second pass at the full size from that result, with noise of its own
    (what "Hires. fix" does). Without one, or at a strength that takes no step, nothing is
    resized: a strength below half a step returns the photo exactly."""

    def __init__(
        self,
        space: ImageSpace,
        schedule: Schedule,
        recommended: SamplerSettings,
        objective: str = "denoise",
    ) -> None:
        super().__init__(space, objective)
        self.schedule = schedule
        self.recommended = recommended

    def _sample(self, pixels, network, seeds, settings) -> torch.Tensor:
        if seeds is None or settings is None:
            raise ValueError(
                f"a {self.objective} checkpoint needs one seed per image and sampler settings"
            )
        # The network maps a NaN input to finite values (oneDNN's ReLU), so a step's NaN would
        # vanish by the last step: remember it per image, on the device (no host sync).
        broken = torch.zeros(len(pixels), dtype=torch.bool, device=pixels.device)
        full = tuple(pixels.shape[-2:])
        working = working_shape(full, settings.working_size)
        if step_count(settings.strength, settings.steps) == 0:
            working = None  # no step is taken: the photo comes back exactly, never resampled
        if working is None:
            result = sample(self._denoiser(network, pixels, broken, 1.0, settings), pixels,
                            seeds, settings, self.schedule)  # fmt: skip
        else:
            small = resize_pixels(pixels, working)
            result = sample(self._denoiser(network, small, broken, 1.0, settings), small,
                            seeds, settings, self.schedule)  # fmt: skip
            result = resize_pixels(result, full)
            if settings.refine > 0:
                refine = dataclasses.replace(settings, strength=settings.refine)
                zoom = min(full) / min(working)
                result = sample(self._denoiser(network, pixels, broken, zoom, refine), result,
                                refine_seeds(seeds), refine, self.schedule)  # fmt: skip
        return result.masked_fill_(broken.view(-1, 1, 1, 1), float("nan"))

    def _denoiser(
        self,
        network: Network,
        source: torch.Tensor,
        broken: torch.Tensor,
        zoom: float,
        settings: SamplerSettings,
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """x_t -> the network's output in 0..1, for images ``source`` (0..1, at x_t's size;
        ``zoom``: how much larger than the working size); marks non-finite outputs."""

        def denoise(x: torch.Tensor) -> torch.Tensor:
            out = self.space.to_pixels(network(x))
            broken.logical_or_(~torch.isfinite(out).all(dim=(1, 2, 3)))
            return out

        return denoise


class GuidedSampler(DiffusionSampler):
    """:class:`DiffusionSampler` for a guided checkpoint: every network call also sees the
    guide of the images being sampled (``core.network.guide.Guide``, computed as training
    computed it, at the sampling size), and with a guidance scale above 1 the prediction
    without it too, in the same call: ``withheld + scale (guided - withheld)``. Settings with
    ``guide`` False withhold it (every channel 0, as dropout did in training)."""

    takes_guide = True
    # One pass differing by up to 4/255 from fp32: the shipped model's bf16 pass differs by
    # 2.1/255 and moves no art-benchmark figure by more than 0.004 at 512 px, for 2.4x the
    # speed (docs/art-benchmark.md, "Precision").
    probe_tolerance = 4.0 / 255

    def __init__(
        self,
        space: ImageSpace,
        schedule: Schedule,
        recommended: SamplerSettings,
        guide: Guide,
        objective: str = "guided",
    ) -> None:
        super().__init__(space, schedule, recommended, objective)
        self.guide = guide

    def probe(self, pixels, network, seeds, settings) -> torch.Tensor:
        """One denoising call at level :data:`PROBE_LEVEL` with seeded noise: the clean
        pixels it predicts. A guided checkpoint's reduced precision is judged per network
        pass, the error each step adds: the whole chain's difference to fp32 is the
        sampler's own noise fed back, and its effect on the picture is the art benchmark's
        to judge (docs/art-benchmark.md). A denoise checkpoint keeps the whole-chain probe
        it was always served with, so it keeps the precision, and the pixels, it had."""
        if seeds is None or settings is None:
            raise ValueError(f"a {self.objective} probe needs seeds and sampler settings")
        noise = seeded_noise(seeds, pixels.shape[1:], pixels.device)
        x_t = noised(pixels.float(), PROBE_LEVEL, noise, self.schedule)
        broken = torch.zeros(len(pixels), dtype=torch.bool, device=pixels.device)
        out = self._denoiser(network, pixels, broken, 1.0, settings)(x_t)
        return clean_pixels(out.float(), x_t, PROBE_LEVEL, self.schedule)

    def _denoiser(self, network, source, broken, zoom, settings):
        present = torch.full((len(source),), settings.guide, dtype=torch.bool)
        guide = self.guide.abstraction_of(source, self.guide.serve_blur * zoom, present)
        scale = self.guide.scale

        def denoise(x: torch.Tensor) -> torch.Tensor:
            given = torch.cat([x, guide.to(x.dtype)], dim=1)
            if scale == 1.0:
                out = self.space.to_pixels(network(given))
            else:
                withheld = torch.cat([x, torch.zeros_like(guide, dtype=x.dtype)], dim=1)
                both = self.space.to_pixels(network(torch.cat([given, withheld])))
                guided, free = both.float().chunk(2)
                out = free.add_(guided.sub_(free), alpha=scale)
            broken.logical_or_(~torch.isfinite(out).all(dim=(1, 2, 3)))
            return out

        return denoise


def working_shape(size: tuple[int, int], working: int) -> tuple[int, int] | None:
    """The (height, width) a batch of ``size`` is sampled at for a working size (shorter
    side) of ``working``: the aspect kept, each side a multiple of 8; None when ``working``
    is 0 or the batch is no larger."""
    if not working or min(size) <= working:
        return None
    scale = working / min(size)
    return tuple(  # type: ignore[return-value]
        max(SIZE_MULTIPLE, round(side * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE) for side in size
    )


def resize_pixels(pixels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """0..1 NCHW pixels at (height, width) ``size``: antialiased bilinear down, bicubic up
    (clamped to 0..1); per image, so an image's result never depends on its batch."""
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    down = size[0] < pixels.shape[-2]
    mode = "bilinear" if down else "bicubic"
    out = F.interpolate(pixels.float(), size=tuple(size), mode=mode, align_corners=False,
                        antialias=down)  # fmt: skip
    return out.clamp_(0.0, 1.0).to(pixels.dtype)


def refine_seeds(seeds: Sequence[int]) -> list[int]:
    """The refining pass's noise seeds: one new 63-bit stream per image seed."""
    return [image_seed(f"refine:{seed}", {}) for seed in seeds]


def recommended_settings(meta: CheckpointMeta) -> SamplerSettings:
    """A denoise checkpoint's recommended settings (``meta.sampler``) over
    ``DEFAULT_SAMPLER_SETTINGS``; a bad recommendation raises ValueError naming it."""
    values = dict(meta.sampler)
    for name in ("steps", "working_size"):
        if name in values and float(values[name]).is_integer():
            values[name] = int(values[name])  # JSON may carry 25 as 25.0
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
