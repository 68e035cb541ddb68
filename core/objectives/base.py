"""The Objective interface every training objective implements, and the registry of them.

An objective is what a run trains the network to do, and everything that follows from it:
how the network sees images (:meth:`Objective.space`), the input/target pair of a training
step (:meth:`Objective.steps`), the loss and its parts' names (``metrics.jsonl`` keys), the
validation figure, the sample grid, what a checkpoint records (:meth:`Objective.meta_fields`,
checked by :meth:`Objective.validate_meta`) and how a checkpoint of it is served
(:meth:`Objective.sampler`). The trainer, the gate, the engine and ``artd generate`` ask the
objective; none of them names one. docs/training.md says which objective suits which
collection.

The base class is a one-pass image-to-image objective: the image, normalised with ImageNet's
statistics, in; :meth:`Objective.target` of it out; MSE plus the VGG16 perceptual term.
Adding an objective is one module with a subclass and one :func:`register` line in
``core/objectives/__init__.py`` (or, for an objective of its own, a call to :func:`register`).

Serving code imports this package, so training modules are imported inside the methods that
need them, never at import time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from loguru import logger
from torch import nn

from core.network.model import ConvDiffusionModel
from core.network.space import ImageSpace, imagenet, uint8_to_pixels
from core.training.figure import Figure

if TYPE_CHECKING:
    from core.checkpoint import CheckpointMeta
    from core.runtime.samplers import Sampler
    from core.training.distributed import Dist
    from core.training.evaluate import KeyedBatch
    from core.training.learner import Learner
    from core.training.loaders import Data
    from core.training.losses import RunLoss
    from core.training.run_folder import RunFolder
    from core.training.settings import TrainSettings


def learner_pixels(batch: torch.Tensor, learner: Learner) -> torch.Tensor:
    """uint8 NHWC from the cache -> 0..1 NCHW pixels on the learner's device and layout
    (``core.training.evaluate.device_pixels``)."""
    return uint8_to_pixels(
        batch.to(learner.device, non_blocking=True), channels_last=learner.channels_last
    )


def sample_pixels(learner: Learner, data: Data) -> torch.Tensor:
    """The sample grid's held-out images as 0..1 NCHW pixels on the learner's device."""
    batch = data.sample_batch.to(learner.device, non_blocking=True)
    return uint8_to_pixels(batch, channels_last=False)


class Steps:
    """What each training step feeds the network and its loss. One-pass: the image in the
    network's space in, ``target(image)`` as the target, nothing drawn (subclasses re-seed
    what they draw at each epoch, from (seed, rank, epoch))."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective

    def start_epoch(self, epoch: int) -> None:
        """Re-seed whatever the steps draw for ``epoch`` (0-based)."""

    def pair(self, batch: torch.Tensor, learner: Learner) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's input and the loss's target for a uint8 NHWC batch."""
        pixels = learner_pixels(batch, learner)
        return learner.space.normalize(pixels), self.objective.target(pixels)

    def loss_args(self, device: torch.device) -> tuple[Any, ...]:
        """What the loss gets after (output, target) this step (style: a style target)."""
        return ()


class Objective:
    """One training objective (module docstring). Subclasses set :attr:`name` and override
    what differs from a one-pass image-to-image objective."""

    name: ClassVar[str] = ""
    # One line for ``--help``.
    summary: ClassVar[str] = ""
    # What the loss returns, total first: the ``metrics.jsonl`` keys of its parts.
    loss_parts: ClassVar[tuple[str, ...]] = ("loss", "mse", "perceptual")
    # Settings only this objective reads; other objectives refuse a non-default value.
    own_settings: ClassVar[frozenset[str]] = frozenset()
    # Whether a checkpoint of it can make images from noise (``artd generate``).
    can_generate: ClassVar[bool] = False
    # What VGG16 is for in this objective's loss (the log line naming its source).
    vgg_use: ClassVar[str] = "perceptual"

    # --- the image space, the checkpoint and serving ---------------------------------------

    def space(self) -> ImageSpace:
        """How the network sees images while training: ImageNet statistics."""
        return imagenet()

    def meta_fields(self, s: TrainSettings) -> dict[str, object]:
        """The checkpoint metadata fields this objective decides (``objective`` at least)."""
        return {"objective": self.name}

    def validate_meta(self, data: Mapping[str, Any]) -> None:
        """Refuse checkpoint metadata (a JSON object) this objective cannot have written;
        raises ValueError naming the field."""
        if data.get("diffusion") is not None:
            raise ValueError(
                f"diffusion is only for denoise checkpoints, got one for {self.name!r}"
            )
        if data.get("guide") is not None:
            raise ValueError(f"guide is only for guided checkpoints, got one for {self.name!r}")

    def sampler(self, meta: CheckpointMeta) -> Sampler:
        """How a checkpoint of this objective is served: one network pass."""
        from core.runtime.samplers import SinglePass

        return SinglePass(ImageSpace.of(meta), meta.objective)

    def figure(self, meta: CheckpointMeta) -> Figure:
        """How a checkpoint's validation figure feeds its network (the gate)."""
        return Figure(ImageSpace.of(meta))

    # --- training ---------------------------------------------------------------------------

    def network(self, s: TrainSettings) -> ConvDiffusionModel:
        """A fresh network for the run: the post's, with the run's decoder."""
        return ConvDiffusionModel(s.decoder)

    def target(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the network should make of 0..1 pixels ``pixels``: the image itself."""
        return pixels

    def vgg_options(self, s: TrainSettings) -> dict[str, Any] | None:
        """Keyword arguments for ``core.training.losses.resolve_vgg_features``, or None when
        the run needs no VGG16."""
        return None if s.perceptual_weight == 0 else {}

    def load_data(self, s: TrainSettings, d: Dist, run: RunFolder) -> Data:
        """The data set and loaders: the collection's two splits."""
        from core.training.loaders import load_collection

        return load_collection(s, d, run)

    def loss(self, s: TrainSettings, d: Dist, vgg: nn.Sequential | None, data: Data) -> RunLoss:
        """MSE plus ``perceptual_weight`` x the VGG16 term, on 0..1 pixels."""
        from core.training.losses import PerceptualLoss, TrainingLoss

        perceptual = PerceptualLoss(vgg) if vgg is not None else None
        return TrainingLoss(perceptual, s.perceptual_weight).to(d.device)

    def steps(self, s: TrainSettings, d: Dist, loss: RunLoss, data: Data) -> Steps:
        """What each of the run's training steps feeds the network and its loss."""
        return Steps(self)

    def run_figure(self, s: TrainSettings, space: ImageSpace) -> Figure:
        """The validation figure of the run's own network (``space`` on its device)."""
        return Figure(space)

    def evaluate(
        self,
        model: nn.Module,
        batches: Iterable[KeyedBatch],
        loss_fn: RunLoss,
        device: torch.device,
        figure: Figure,
        *,
        channels_last: bool = False,
    ) -> dict[str, float]:
        """The validation figures (``val_loss`` first) of ``model`` on held-out ``batches``,
        fed as ``figure`` says; ``{}`` when there are none."""
        return self._validation(model, batches, loss_fn, device, figure, channels_last)

    def _validation(self, model, batches, loss_fn, device, figure, channels_last):
        """:meth:`evaluate`'s work (an objective with other figures overrides this): the loss
        and PSNR against :meth:`target`."""
        from core.training.evaluate import evaluate

        return evaluate(
            model, batches, loss_fn, device, figure=figure, channels_last=channels_last,
            target=self.target,
        )  # fmt: skip

    @torch.no_grad()
    def sample_grid(
        self, learner: Learner, data: Data, s: TrainSettings
    ) -> tuple[torch.Tensor, int]:
        """The sample grid's images row by row and its column count: rows of the held-out
        image | what the network makes of it."""
        space = learner.space
        pixels = sample_pixels(learner, data)
        outputs = space.to_pixels(learner.raw(space.normalize(pixels)))
        pairs = torch.stack([pixels.float().cpu(), outputs.float().cpu()], dim=1)
        return pairs.flatten(0, 1), 2

    def log_epoch(self, done: int, epochs: int, row: Mapping[str, float]) -> None:
        """The epoch's log line."""
        logger.info(
            "epoch {}/{}: loss {:.5f} (mse {:.5f}, perceptual {:.5f}) val_mse {:.5f} "
            "val_psnr {:.2f} dB, {:.1f} images/s",
            done, epochs, row["loss"], row["mse"], row["perceptual"],
            row.get("val_mse", math.nan), row.get("val_psnr", math.nan), row["images_per_s"],
        )  # fmt: skip


# --- the registry ---------------------------------------------------------------------------

_REGISTRY: dict[str, Objective] = {}


class UnknownObjective(ValueError):
    """A name no registered objective has; the message names the choices."""


def register(objective: Objective) -> Objective:
    """Add ``objective`` under its name (refused when the name is taken); returns it."""
    if not objective.name:
        raise ValueError(f"{type(objective).__name__} has no name")
    if objective.name in _REGISTRY:
        raise ValueError(f"an objective named {objective.name!r} is already registered")
    _REGISTRY[objective.name] = objective
    return objective


def unregister(name: str) -> None:
    """Remove the objective ``name`` (tests that register one of their own)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> Objective:
    """The objective registered as ``name``; UnknownObjective names the choices."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownObjective(
            f"unknown objective {name!r}: choose one of {', '.join(names())}"
        ) from None


def names() -> tuple[str, ...]:
    """The registered objectives' names, in registration order."""
    return tuple(_REGISTRY)
