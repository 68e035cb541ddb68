"""What a run trains the network to do, and how its validation figure and samples are made.

``style`` (issue 13) has a module of its own, ``core.training.style``; here it only names its
loss's parts (:func:`loss_parts`) and, like reconstruct, sees photos in ImageNet statistics.

``reconstruct`` (the seed's): the input is the image, normalised with ImageNet's statistics;
the target is the image. ``denoise`` (issue 12, ``core.diffusion.schedule``): the input is the image
noised to a random level t, ``x_t = noised(pixels, t, noise, schedule)``; the target is the
clean image, which the network's Sigmoid predicts in 0..1. Its checkpoints record
``normalization`` mean = std = 0.5, so ``ImageSpace.normalize(p) == to_model(p) == 2p - 1``
and serving feeds the network ``x_t`` exactly as training did.

Randomness of a denoise run (:class:`TrainingNoise`): levels and noise come from generators
of their own, re-seeded at the start of every epoch from (seed, rank, epoch), the way the
``DistributedSampler`` shuffles by (seed, epoch). The resume state (``last.pt``) is saved at an
epoch's end with the settings and the epoch, so a resumed run draws exactly the noise an
uninterrupted one would, on every rank, without saving each rank's generator.

A low-noise prior (:class:`LowNoisePrior`, ``--low-noise-prior dead-leaves``): a model that has
seen only its collection redraws a photo in the collection's tones even at a faint noise
level, so a low strength does not give the photo back. With the prior, a share of the images
drawn at a level below ``--low-noise-below`` are swapped for dead-leaves images
(``core.synthetic.dead_leaves``), whose statistics are a photograph's: there the network learns to
denoise like a denoiser of photographs, while above it the collection alone decides. The
swap is drawn from the levels' generator, so a resumed run swaps exactly as before.

The validation figure (:class:`Figure`) is deterministic: every validation image is judged
at the fixed levels :data:`VAL_LEVELS`, with noise from ``core.diffusion.schedule.seeded_noise``
seeded
by the image's content hash and the level, so two nights (and the gate's two checkpoints)
see the same noisy inputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from core.checkpoint import CheckpointMeta
from core.diffusion.schedule import (
    DENOISE_NORMALIZATION,
    SamplerSettings,
    Schedule,
    clean_pixels,
    image_seed,
    noised,
    sample,
    sample_levels,
    seeded_noise,
    target,
)
from core.network.space import ImageSpace, imagenet

# The levels every validation image is judged at (denoise), and the sample grids' strengths.
VAL_LEVELS = (0.25, 0.5, 0.75)
SAMPLE_STRENGTHS = (0.3, 0.5, 0.7)


def loss_parts(objective: str) -> tuple[str, ...]:
    """The names of what the objective's loss returns, total first (``metrics.jsonl`` keys)."""
    if objective == "style":
        return ("loss", "content", "style", "tv")
    return ("loss", "mse", "perceptual")


def schedule_for(objective: str, parameterisation: str = "x0") -> Schedule | None:
    """The noise schedule a run of ``objective`` trains with (None: no noise)."""
    return Schedule(parameterisation=parameterisation) if objective == "denoise" else None


def space_for(objective: str) -> ImageSpace:
    """How the network sees images: ImageNet statistics (reconstruct, style) or 2p - 1
    (denoise)."""
    if objective == "denoise":
        return ImageSpace(DENOISE_NORMALIZATION["mean"], DENOISE_NORMALIZATION["std"])
    return imagenet()


def objective_meta(
    objective: str, strength: float, steps: int, eta: float, parameterisation: str = "x0"
) -> dict[str, object]:
    """The checkpoint metadata fields that depend on the objective: ``objective``,
    ``normalization``, ``diffusion`` (the schedule) and ``sampler`` (the recommendation)."""
    schedule = schedule_for(objective, parameterisation)
    if schedule is None:
        return {"objective": objective}
    return {
        "objective": objective,
        "normalization": {k: list(v) for k, v in DENOISE_NORMALIZATION.items()},
        "diffusion": schedule.to_dict(),
        "sampler": {"strength": strength, "steps": steps, "eta": eta},
    }


def _seed(label: str, **values: object) -> int:
    """A stable seed for one purpose (``core.diffusion.schedule.image_seed`` over a label)."""
    return image_seed(label, values)


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

    pool = dead_leaves_batch(_seed("low-noise-prior", seed=seed), PRIOR_POOL, size)
    images = torch.from_numpy(pool).permute(0, 3, 1, 2).contiguous().to(device)
    return LowNoisePrior(images.float().div_(255), below, share)


class TrainingNoise:
    """A denoise run's levels and noise, re-seeded per epoch from (seed, rank, epoch), and
    its :class:`LowNoisePrior` if it has one.

    Levels are drawn on the CPU (``core.diffusion.schedule.sample_levels``); the noise on the
    training
    device, from a generator there (no host-to-device copy per step)."""

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
        self._levels.manual_seed(_seed("train-levels", **where))
        self._noise.manual_seed(_seed("train-noise", **where))

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


def training_noise(
    objective: str,
    seed: int,
    rank: int,
    device: torch.device,
    parameterisation: str = "x0",
    prior: LowNoisePrior | None = None,
) -> TrainingNoise | None:
    """The run's :class:`TrainingNoise`, or None for a one-pass objective."""
    schedule = schedule_for(objective, parameterisation)
    return None if schedule is None else TrainingNoise(schedule, seed, rank, device, prior)


@dataclass(frozen=True)
class Figure:
    """How a checkpoint's validation figure feeds its network: through its image space, and
    for denoise at each of :data:`VAL_LEVELS` with noise seeded by image and level."""

    space: ImageSpace
    schedule: Schedule | None = None

    @classmethod
    def of(cls, meta: CheckpointMeta) -> Figure:
        """The figure a checkpoint's metadata calls for (its space, objective, schedule)."""
        schedule = Schedule.from_dict(meta.diffusion) if meta.objective == "denoise" else None
        return cls(ImageSpace.of(meta), schedule)

    def to(self, device: torch.device) -> Figure:
        return Figure(self.space.to(device), self.schedule)

    def inputs(
        self, pixels: torch.Tensor, keys: Sequence[str]
    ) -> Iterator[tuple[torch.Tensor, float | None]]:
        """The network inputs for one batch of 0..1 pixels whose images are ``keys`` (content
        hashes), each with its level: one (level None) for reconstruct, one per validation
        level for denoise."""
        if self.schedule is None:
            yield self.space.normalize(pixels), None
            return
        if len(keys) != pixels.shape[0]:
            raise ValueError(f"need one key per image: {len(keys)} keys, {pixels.shape[0]} images")
        for level in VAL_LEVELS:
            seeds = [_seed("validation", image=key, level=level) for key in keys]
            noise = seeded_noise(seeds, pixels.shape[1:], pixels.device).to(pixels.dtype)
            yield noised(pixels, level, noise, self.schedule), level

    def clean(
        self, output: torch.Tensor, inputs: torch.Tensor, level: float | None
    ) -> torch.Tensor:
        """The predicted clean pixels from the network's ``output`` for ``inputs`` at ``level``
        (what the figure judges, so checkpoints of either parameterisation compare alike)."""
        pixels = self.space.to_pixels(output.float())
        if self.schedule is None or level is None:
            return pixels
        return clean_pixels(pixels, inputs, level, self.schedule)


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
    :data:`SAMPLE_STRENGTHS` (``core.diffusion.schedule.sample``, fixed seeds), then one row from
    pure
    noise (strength 1). Returns the (rows x columns, 3, H, W) pixels and the column count."""

    def denoise(x: torch.Tensor) -> torch.Tensor:
        return space.to_pixels(model(x))

    def run(images: torch.Tensor, seeds: list[int], strength: float) -> torch.Tensor:
        settings = SamplerSettings(strength=strength, steps=steps, eta=eta)
        return sample(denoise, images, seeds, settings, schedule)

    was_training = model.training
    model.eval()
    try:
        seeds = [_seed("samples", image=key) for key in keys]
        columns = [pixels, *(run(pixels, seeds, s) for s in SAMPLE_STRENGTHS)]
        width = len(columns)
        blank = pixels.new_zeros((width, *pixels.shape[1:]))
        from_noise = run(blank, [_seed("samples-from-noise", index=i) for i in range(width)], 1.0)
    finally:
        model.train(was_training)
    rows = torch.stack(columns, dim=1).flatten(0, 1)
    return torch.cat([rows, from_noise]), width
