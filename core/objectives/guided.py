"""The ``guided`` objective: the collection's manner painted over a guide of the image.

Denoising as in ``denoise``, but the network also sees an abstraction of the clean image (its
guide: ``core.network.guide``), concatenated to the noised image (Palette / SR3-style
conditioning, Saharia et al. 2022). Trained self-supervised on the collection alone, with no
pairs: noise an image, hand the network its blurred luminance (or colours), predict the clean
image. The network learns to put the collection's marks onto a given layout; served, the guide
is computed from the photo exactly as training computed it, so the photo's layout, and faces,
survive every strength, and the manner is the collection's. docs/training.md says how to
choose the guide's settings.

Randomness of a run: the noise as in ``denoise`` (:class:`~core.objectives.denoise.TrainingNoise`);
each image's blur and whether its guide is withheld (``guide_dropout``) come from a generator
of their own, re-seeded per epoch from (seed, rank, epoch), so a resumed run draws exactly
what an uninterrupted one would. Its checkpoints record the guide (``meta.guide``) and the
recommended working size (``meta.sampler.working_size``, 2.5 x the training size unless the
run says otherwise: the network learnt its texture at the training size's pixels).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from core.diffusion.sampler_settings import MIN_WORKING, SamplerSettings
from core.diffusion.schedule import DENOISE_NORMALIZATION, Schedule
from core.network.guide import Guide
from core.network.model import ConvDiffusionModel
from core.network.shapes import SIZE_MULTIPLE
from core.network.space import ImageSpace
from core.objectives.base import Steps, learner_pixels, sample_pixels
from core.objectives.denoise import SAMPLE_STRENGTHS, Denoise, TrainingNoise
from core.training.figure import Figure, objective_seed

if TYPE_CHECKING:
    from core.checkpoint import CheckpointMeta
    from core.runtime.samplers import Sampler
    from core.training.distributed import Dist
    from core.training.learner import Learner
    from core.training.loaders import Data
    from core.training.losses import RunLoss
    from core.training.settings import TrainSettings

# The recommended working size over the training size (module docstring).
WORKING_OVER_TRAINING = 2.5


def run_guide(s: TrainSettings) -> Guide:
    """The guide a run trains with, from its ``guide_*`` settings."""
    serve = s.guide_blur_min if s.guide_serve_blur is None else s.guide_serve_blur
    return Guide(
        abstraction=s.guide_abstraction,
        blur_min=s.guide_blur_min,
        blur_max=s.guide_blur_max,
        serve_blur=serve,
        dropout=s.guide_dropout,
        scale=s.guidance_scale,
    )


class GuideDraws:
    """A guided run's per-image blur and withholding, re-seeded per epoch (module docstring)."""

    def __init__(self, guide: Guide, seed: int, rank: int) -> None:
        self.guide, self.seed, self.rank = guide, seed, rank
        self._generator = torch.Generator()
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        self._generator.manual_seed(
            objective_seed("train-guide", seed=self.seed, rank=self.rank, epoch=epoch)
        )

    def guide_of(self, pixels: torch.Tensor) -> torch.Tensor:
        """The guide channels of a batch of clean 0..1 pixels, each image drawn its own blur
        and, with the run's dropout share, withheld."""
        n, g = pixels.shape[0], self.guide
        blur = g.blur_min + (g.blur_max - g.blur_min) * torch.rand(n, generator=self._generator)
        present = torch.rand(n, generator=self._generator) >= g.dropout
        return g.abstraction_of(pixels, blur, present).to(pixels.dtype)


class GuidedSteps(Steps):
    """A guided run's steps: the noised batch and its guide in, the denoise target out."""

    def __init__(self, objective: Guided, noise: TrainingNoise, draws: GuideDraws) -> None:
        super().__init__(objective)
        self.noise, self.draws = noise, draws

    def start_epoch(self, epoch: int) -> None:
        self.noise.start_epoch(epoch)
        self.draws.start_epoch(epoch)

    def pair(self, batch: torch.Tensor, learner: Learner) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = learner_pixels(batch, learner)
        x_t, target = self.noise.pair(pixels)
        return torch.cat([x_t, self.draws.guide_of(pixels)], dim=1), target


class Guided(Denoise):
    """Denoising over a guide of the image (module docstring); served by ``GuidedSampler``."""

    name = "guided"
    summary = "guided (diffusion over the image's guide)"
    own_settings = frozenset(
        {
            "parameterisation",
            "guide_abstraction",
            "guide_blur_min",
            "guide_blur_max",
            "guide_serve_blur",
            "guide_dropout",
            "guidance_scale",
            "sample_working_size",
            "sample_refine",
        }
    )

    def network(self, s: TrainSettings) -> ConvDiffusionModel:
        """The post's network with the guide's channels after the image's."""
        return ConvDiffusionModel(s.decoder, run_guide(s).channels)

    def meta_fields(self, s: TrainSettings) -> dict[str, object]:
        """Denoise's fields, plus ``guide``."""
        return {**super().meta_fields(s), "guide": run_guide(s).to_dict()}

    def working_size(self, s: TrainSettings) -> int:
        """The run's ``sample_working_size``, else 2.5 x its training size (a multiple of 8,
        at least the smallest working size a sampler takes)."""
        if s.sample_working_size is not None:
            return s.sample_working_size
        ratio = WORKING_OVER_TRAINING * s.image_size / SIZE_MULTIPLE
        return max(MIN_WORKING, round(ratio) * SIZE_MULTIPLE)

    def validate_guide(self, guide: object) -> None:
        """A guided checkpoint records a guide :class:`Guide` can read."""
        if guide is None:
            raise ValueError("a guided checkpoint must record its guide (meta.guide)")
        Guide.from_dict(guide)  # type: ignore[arg-type]

    def sampler(self, meta: CheckpointMeta) -> Sampler:
        """SDEdit over the photo's guide (``GuidedSampler``)."""
        from core.runtime.samplers import GuidedSampler, recommended_settings

        self._check_contract(meta)
        assert meta.diffusion is not None and meta.guide is not None  # validate_meta
        return GuidedSampler(
            ImageSpace.of(meta), Schedule.from_dict(meta.diffusion), recommended_settings(meta),
            Guide.from_dict(meta.guide),
        )  # fmt: skip

    def _check_contract(self, meta: CheckpointMeta) -> None:
        if meta.image_space != "pixel" or meta.normalization != DENOISE_NORMALIZATION:
            raise ValueError(
                f"a {self.name} checkpoint must record image_space 'pixel' and normalization "
                f"{DENOISE_NORMALIZATION}, got {meta.image_space!r} and {meta.normalization}"
            )

    def figure(self, meta: CheckpointMeta) -> Figure:
        """At the fixed validation levels, each input with its image's served guide."""
        assert meta.diffusion is not None and meta.guide is not None  # validate_meta
        return Figure(
            ImageSpace.of(meta), Schedule.from_dict(meta.diffusion), Guide.from_dict(meta.guide)
        )

    def run_figure(self, s: TrainSettings, space: ImageSpace) -> Figure:
        return Figure(space, self.schedule(s), run_guide(s))

    def steps(self, s: TrainSettings, d: Dist, loss: RunLoss, data: Data) -> Steps:
        """Noise per image at a random level, and each image's guide."""
        noise = TrainingNoise(self.schedule(s), s.seed, d.rank, d.device)
        return GuidedSteps(self, noise, GuideDraws(run_guide(s), s.seed, d.rank))

    @torch.no_grad()
    def sample_grid(
        self, learner: Learner, data: Data, s: TrainSettings
    ) -> tuple[torch.Tensor, int]:
        """Rows: each held-out image, then it sampled over its own guide at a few strengths
        and at strength 1 (from noise, the guide alone keeping the layout)."""
        from core.runtime.samplers import GuidedSampler

        pixels = sample_pixels(learner, data)
        settings = SamplerSettings(strength=1.0, steps=s.sample_steps, eta=s.sample_eta)
        sampler = GuidedSampler(learner.space, self.schedule(s), settings, run_guide(s))
        seeds = [objective_seed("samples", image=key) for key in data.sample_keys]
        was_training = learner.raw.training
        learner.raw.eval()
        try:
            columns = [pixels] + [
                sampler(pixels, learner.raw, seeds, SamplerSettings(strength=strength,
                        steps=s.sample_steps, eta=s.sample_eta)).float()
                for strength in (*SAMPLE_STRENGTHS, 1.0)
            ]  # fmt: skip
        finally:
            learner.raw.train(was_training)
        return torch.stack([c.cpu() for c in columns], dim=1).flatten(0, 1), len(columns)
