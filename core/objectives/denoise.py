"""The ``denoise`` objective: the network recovers the clean image from a noised one.

The input is the image noised to a random level t, ``x_t = noised(pixels, t, noise,
schedule)`` (``core.diffusion.schedule``); the target is the clean image (``x0``) or ``v``
(``--parameterisation``). Its checkpoints record ``normalization`` mean = std = 0.5, so
``ImageSpace.normalize(p) == to_model(p) == 2p - 1`` and serving feeds the network ``x_t``
exactly as training did, the schedule (``diffusion``) and the recommended sampler; they are
served by the multi-step ``DiffusionSampler`` and can generate from noise. docs/training.md
explains the settings.

Randomness of a denoise run (:class:`TrainingNoise`): levels and noise come from generators
of their own, re-seeded at the start of every epoch from (seed, rank, epoch), the way the
``DistributedSampler`` shuffles by (seed, epoch). The resume state (``last.pt``) is saved at an
epoch's end with the settings and the epoch, so a resumed run draws exactly the noise an
uninterrupted one would, on every rank, without saving each rank's generator.

A low-noise prior (:class:`LowNoisePrior`, ``--low-noise-prior dead-leaves``): a model that has
seen only its collection redraws a photo in the collection's tones even at a faint noise
level, so a low strength does not give the photo back. With the prior, a share of the images
drawn at a level below ``--low-noise-below`` are swapped for dead-leaves images
(``core.synthetic.dead_leaves``), whose statistics are a photograph's: there the network learns
to denoise like a denoiser of photographs, while above it the collection alone decides. The
swap is drawn from the levels' generator, so a resumed run swaps exactly as before.

The validation figure judges every held-out image at fixed levels with fixed noise
(``core.training.figure``); the sample grid samples each held-out image at
:data:`SAMPLE_STRENGTHS` and adds a row from pure noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from loguru import logger
from torch import nn

from core.diffusion.sampler_settings import SamplerSettings
from core.diffusion.schedule import (
    DENOISE_NORMALIZATION,
    Schedule,
    noised,
    sample,
    sample_levels,
    target,
)
from core.network.space import ImageSpace
from core.objectives.base import Objective, Steps, learner_pixels, sample_pixels
from core.training.figure import Figure, objective_seed

if TYPE_CHECKING:
    from core.checkpoint import CheckpointMeta
    from core.runtime.samplers import Sampler
    from core.training.distributed import Dist
    from core.training.learner import Learner
    from core.training.loaders import Data
    from core.training.losses import RunLoss
    from core.training.settings import TrainSettings

# The sample grids' strengths.
SAMPLE_STRENGTHS = (0.3, 0.5, 0.7)
LOW_NOISE_PRIORS = ("none", "dead-leaves")
PRIOR_POOL = 1024  # dead-leaves images drawn once per run


@dataclass(frozen=True)
class LowNoisePrior:
    """Images that replace a ``share`` of the training images drawn below level ``below``."""

    images: torch.Tensor  # (N, 3, H, W) 0..1 pixels, on the training device
    below: float
    share: float

    def mix(self, pixels: torch.Tensor, t: torch.Tensor, generator: torch.Generator):
        """``pixels`` with the chosen images swapped; the same draws whatever is swapped."""
        n = pixels.shape[0]
        swap = (t < self.below) & (torch.rand(n, generator=generator) < self.share)
        pick = torch.randint(0, self.images.shape[0], (n,), generator=generator)
        rows = swap.nonzero().flatten()
        if rows.numel() == 0:
            return pixels
        out = pixels.clone()  # keeps the batch's memory format (channels_last on CUDA)
        out[rows.to(out.device)] = self.images[pick[rows].to(self.images.device)].to(out)
        return out


def low_noise_prior(
    kind: str, below: float, share: float, seed: int, size: int, device: torch.device
) -> LowNoisePrior | None:
    """The run's :class:`LowNoisePrior` (None for ``none``): :data:`PRIOR_POOL` dead-leaves
    images at the training size, the same on every rank for the run's seed."""
    if kind == "none":
        return None
    if kind != "dead-leaves":
        raise ValueError(f"low-noise prior must be one of {', '.join(LOW_NOISE_PRIORS)}")
    from core.synthetic.dead_leaves import dead_leaves_batch

    pool = dead_leaves_batch(objective_seed("low-noise-prior", seed=seed), PRIOR_POOL, size)
    images = torch.from_numpy(pool).permute(0, 3, 1, 2).contiguous().to(device)
    return LowNoisePrior(images.float().div_(255), below, share)


class TrainingNoise:
    """A denoise run's levels and noise, re-seeded per epoch from (seed, rank, epoch), and
    its :class:`LowNoisePrior` if it has one.

    Levels are drawn on the CPU (``core.diffusion.schedule.sample_levels``); the noise on the
    training device, from a generator there (no host-to-device copy per step)."""

    def __init__(
        self,
        schedule: Schedule,
        seed: int,
        rank: int,
        device: torch.device,
        prior: LowNoisePrior | None = None,
    ) -> None:
        self.schedule, self.prior = schedule, prior
        self.seed, self.rank, self.device = seed, rank, device
        self._levels = torch.Generator()
        self._noise = torch.Generator(device=device)
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        """Re-seed both generators for ``epoch`` (0-based)."""
        where = {"seed": self.seed, "rank": self.rank, "epoch": epoch}
        self._levels.manual_seed(objective_seed("train-levels", **where))
        self._noise.manual_seed(objective_seed("train-noise", **where))

    def pair(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's input and target for a batch of 0..1 pixels, each image at its own
        level (``core.diffusion.schedule.noised`` and ``core.diffusion.schedule.target``)."""
        t = sample_levels(pixels.shape[0], self._levels)
        if self.prior is not None:
            pixels = self.prior.mix(pixels, t, self._levels)
        noise = torch.randn(
            pixels.shape, generator=self._noise, device=pixels.device, dtype=pixels.dtype
        )
        return noised(pixels, t, noise, self.schedule), target(pixels, t, noise, self.schedule)


class NoisySteps(Steps):
    """A denoise run's steps: each clean batch noised by the run's :class:`TrainingNoise`."""

    def __init__(self, objective: Objective, noise: TrainingNoise) -> None:
        super().__init__(objective)
        self.noise = noise

    def start_epoch(self, epoch: int) -> None:
        self.noise.start_epoch(epoch)

    def pair(self, batch: torch.Tensor, learner: Learner) -> tuple[torch.Tensor, torch.Tensor]:
        return self.noise.pair(learner_pixels(batch, learner))


@torch.no_grad()
def denoise_samples(
    model: nn.Module,
    space: ImageSpace,
    schedule: Schedule,
    pixels: torch.Tensor,
    keys: Sequence[str],
    steps: int,
    eta: float,
) -> tuple[torch.Tensor, int]:
    """The denoise sample grid's images, row by row: each held-out image, then it sampled at
    :data:`SAMPLE_STRENGTHS` (``core.diffusion.schedule.sample``, fixed seeds), then one row
    from pure noise (strength 1). Returns the (rows x columns, 3, H, W) pixels and the column
    count."""

    def denoise(x: torch.Tensor) -> torch.Tensor:
        return space.to_pixels(model(x))

    def run(images: torch.Tensor, seeds: list[int], strength: float) -> torch.Tensor:
        settings = SamplerSettings(strength=strength, steps=steps, eta=eta)
        return sample(denoise, images, seeds, settings, schedule)

    was_training = model.training
    model.eval()
    try:
        seeds = [objective_seed("samples", image=key) for key in keys]
        columns = [pixels, *(run(pixels, seeds, s) for s in SAMPLE_STRENGTHS)]
        width = len(columns)
        blank = pixels.new_zeros((width, *pixels.shape[1:]))
        noise_seeds = [objective_seed("samples-from-noise", index=i) for i in range(width)]
        from_noise = run(blank, noise_seeds, 1.0)
    finally:
        model.train(was_training)
    rows = torch.stack(columns, dim=1).flatten(0, 1)
    return torch.cat([rows, from_noise]), width


class Denoise(Objective):
    """The clean image (or v) from a noised one; served by the multi-step sampler."""

    name = "denoise"
    summary = "denoise (diffusion)"
    own_settings = frozenset(
        {"parameterisation", "low_noise_prior", "sample_working_size", "sample_refine"}
    )
    can_generate = True

    def space(self) -> ImageSpace:
        """2p - 1: mean = std = 0.5 (``DENOISE_NORMALIZATION``)."""
        return ImageSpace(DENOISE_NORMALIZATION["mean"], DENOISE_NORMALIZATION["std"])

    def schedule(self, s: TrainSettings) -> Schedule:
        """The noise schedule the run trains with."""
        return Schedule(parameterisation=s.parameterisation)

    def meta_fields(self, s: TrainSettings) -> dict[str, object]:
        """``objective``, ``normalization``, ``diffusion`` (the schedule) and ``sampler`` (the
        recommended img2img settings, the run's ``sample_*``)."""
        return {
            "objective": self.name,
            "normalization": {k: list(v) for k, v in DENOISE_NORMALIZATION.items()},
            "diffusion": self.schedule(s).to_dict(),
            "sampler": self.recommended(s),
        }

    def recommended(self, s: TrainSettings) -> dict[str, float]:
        """The recommended sampler settings (``meta.sampler``): the run's ``sample_*``; the
        working size and refine strength only when set."""
        sampler = {"strength": s.sample_strength, "steps": s.sample_steps, "eta": s.sample_eta}
        working = self.working_size(s)
        if working:
            sampler["working_size"] = working
        if s.sample_refine:
            sampler["refine"] = s.sample_refine
        return sampler

    def working_size(self, s: TrainSettings) -> int:
        """The recommended working size: the run's ``sample_working_size`` (0: none)."""
        return s.sample_working_size or 0

    def validate_meta(self, data: Mapping[str, Any]) -> None:
        diffusion = data.get("diffusion")
        if not isinstance(diffusion, dict):
            raise ValueError(
                f"diffusion must be an object for a {self.name} checkpoint, got {diffusion!r}"
            )
        self.validate_guide(data.get("guide"))

    def validate_guide(self, guide: object) -> None:
        """A denoise checkpoint has no guide."""
        if guide is not None:
            raise ValueError(f"guide is only for guided checkpoints, got one for {self.name!r}")

    def sampler(self, meta: CheckpointMeta) -> Sampler:
        """SDEdit img2img (``DiffusionSampler``) with the checkpoint's schedule and
        recommended settings; refuses a checkpoint whose contract is broken."""
        from core.runtime.samplers import DiffusionSampler, recommended_settings

        if meta.image_space != "pixel" or meta.normalization != DENOISE_NORMALIZATION:
            raise ValueError(
                "a denoise checkpoint must record image_space 'pixel' and normalization "
                f"{DENOISE_NORMALIZATION}, got {meta.image_space!r} and {meta.normalization}"
            )
        if meta.diffusion is None:
            raise ValueError("a denoise checkpoint must record its diffusion schedule")
        schedule = Schedule.from_dict(meta.diffusion)
        return DiffusionSampler(ImageSpace.of(meta), schedule, recommended_settings(meta))

    def figure(self, meta: CheckpointMeta) -> Figure:
        """At the fixed validation levels, with the checkpoint's schedule."""
        assert meta.diffusion is not None  # validate_meta
        return Figure(ImageSpace.of(meta), Schedule.from_dict(meta.diffusion))

    def steps(self, s: TrainSettings, d: Dist, loss: RunLoss, data: Data) -> Steps:
        """Noise per image at a random level, re-seeded per epoch; with the low-noise prior
        when the run asks for it."""
        prior = low_noise_prior(s.low_noise_prior, s.low_noise_below, s.low_noise_share,
                                s.seed, s.image_size, d.device)  # fmt: skip
        if prior is not None:
            logger.info("low-noise prior: {} {} images swapped in for {:.0%} of those below "
                        "level {}", prior.images.shape[0], s.low_noise_prior,
                        s.low_noise_share, s.low_noise_below)  # fmt: skip
        noise = TrainingNoise(self.schedule(s), s.seed, d.rank, d.device, prior)
        return NoisySteps(self, noise)

    def run_figure(self, s: TrainSettings, space: ImageSpace) -> Figure:
        return Figure(space, self.schedule(s))

    @torch.no_grad()
    def sample_grid(
        self, learner: Learner, data: Data, s: TrainSettings
    ) -> tuple[torch.Tensor, int]:
        """Each held-out image, sampled at a few strengths, plus a row from pure noise."""
        return denoise_samples(
            learner.raw, learner.space, self.schedule(s), sample_pixels(learner, data),
            data.sample_keys,
            s.sample_steps, s.sample_eta,
        )  # fmt: skip
