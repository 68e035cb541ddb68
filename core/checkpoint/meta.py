"""What a set of weights is: :class:`CheckpointMeta`, its validation, and the loaded
:class:`Checkpoint`.

The metadata is stored as JSON in the safetensors header (``core.checkpoint.safetensors_format``)
under the field names below; renaming a field changes the on-disk format. ``normalization`` and
``image_space`` drive how the checkpoint's network sees images
(``core.network.space.ImageSpace.of``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from core import __version__
from core.images.colour import PALETTES
from core.network.spec import (
    ARCHITECTURE,
    DECODERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_GUIDE_CHANNELS,
    POST_IMAGE_SPACE,
)

if TYPE_CHECKING:
    import torch

# Bump when the layout changes incompatibly; readers refuse versions newer than they know.
FORMAT_VERSION = 1
# "seed" is POST_IMAGE_SPACE, the post's image space: the on-disk value keeps the old word.
ImageSpaceName = Literal["pixel", "seed"]
IMAGE_SPACES: tuple[str, ...] = ("pixel", POST_IMAGE_SPACE)
RESIZE_POLICIES: tuple[str, ...] = ("fit", "stretch")
# What an objective's name may look like. Which names exist, and the fields each objective
# records (``diffusion`` for denoise), are the objectives' own to check (core.objectives.of):
# the checkpoint layer reads them as data and never asks the registry above it.
OBJECTIVE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")
# Recommended sampler settings a checkpoint may carry
# (core.diffusion.sampler_settings.SamplerSettings' keys).
SAMPLER_KEYS = frozenset({"strength", "steps", "eta", "working_size", "refine"})


class CheckpointError(Exception):
    """A checkpoint cannot be read, written or used; ``str(e)`` names the file and the problem."""

    def __init__(self, problem: str, path: str | os.PathLike[str] | None = None) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def utc_now_iso() -> str:
    """The current time as ISO 8601 in UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def imagenet_normalization() -> dict[str, list[float]]:
    """The ``normalization`` every checkpoint records so far: ImageNet's statistics."""
    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


@dataclass
class CheckpointMeta:
    """What a set of weights is and how it was made. Stored as JSON in the safetensors header."""

    architecture: str = ARCHITECTURE
    image_space: ImageSpaceName = "pixel"
    train_size: int = 256
    resize: str = "fit"
    normalization: dict[str, list[float]] = field(default_factory=imagenet_normalization)
    epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    dataset_hash: str | None = None
    code_version: str = __version__
    created: str = field(default_factory=utc_now_iso)
    settings: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    objective: str = "reconstruct"
    # denoise only: core.diffusion.schedule.Schedule.to_dict(); None for one-pass objectives.
    diffusion: dict[str, Any] | None = None
    # Recommended sampler settings ({"strength": .., "steps": .., "eta": ..}), may be empty.
    sampler: dict[str, float] = field(default_factory=dict)
    # The network's decoder variant (core.network.model.DECODERS); files written before it existed,
    # and every file of the post, are the post's "transpose".
    decoder: str = "transpose"
    # A guided network's guide (core.network.guide.Guide.to_dict()); None for every other.
    # Only ``channels`` is read here (the network's shape); the guided objective checks the rest.
    guide: dict[str, Any] | None = None
    # The output colour its trainer recommends (core.images.colour.PALETTES); None: none, the
    # model's own colours.
    colour: str | None = None

    @property
    def guide_channels(self) -> int:
        """The network's extra input channels (0 without a guide)."""
        return 0 if self.guide is None else int(self.guide["channels"])

    def to_dict(self) -> dict[str, Any]:
        """Every field; ``guide`` and ``colour`` only when set (so every other checkpoint's
        header stays as it was before them)."""
        data = dataclasses.asdict(self)
        for name in ("guide", "colour"):
            if data[name] is None:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointMeta:
        """Validate and build; raises ValueError naming the bad field. Unknown keys are ignored."""
        if not isinstance(data, dict):
            raise ValueError(f"metadata must be a JSON object, got {type(data).__name__}")
        version = _parse_format_version(data.get("format_version"))
        for required in ("architecture", "image_space", "train_size", "resize"):
            if required not in data:
                raise ValueError(f"metadata lacks {required!r}")
        architecture = _expect_str(data, "architecture")
        image_space = _expect_choice(data, "image_space", IMAGE_SPACES)
        train_size = data["train_size"]
        if not is_int(train_size) or train_size <= 0:
            raise ValueError(f"train_size must be a positive integer, got {train_size!r}")
        resize = _expect_choice(data, "resize", RESIZE_POLICIES)
        epoch = data.get("epoch")
        if epoch is not None and (not is_int(epoch) or epoch < 0):
            raise ValueError(f"epoch must be a non-negative integer or null, got {epoch!r}")
        dataset_hash = data.get("dataset_hash")
        if dataset_hash is not None and not isinstance(dataset_hash, str):
            raise ValueError(f"dataset_hash must be a string or null, got {dataset_hash!r}")
        settings = data.get("settings", {})
        if not isinstance(settings, dict):
            raise ValueError(f"settings must be an object, got {type(settings).__name__}")
        objective, diffusion, sampler = _parse_objective(data)
        return cls(
            architecture=architecture,
            image_space=image_space,  # type: ignore[arg-type]
            train_size=train_size,
            resize=resize,
            normalization=_parse_normalization(data.get("normalization", imagenet_normalization())),
            epoch=epoch,
            metrics=_parse_metrics(data.get("metrics", {})),
            dataset_hash=dataset_hash,
            code_version=_expect_str(data, "code_version", default="unknown"),
            created=_expect_str(data, "created", default=""),
            settings=dict(settings),
            format_version=version,
            objective=objective,
            diffusion=diffusion,
            sampler=sampler,
            decoder=_expect_choice(data, "decoder", DECODERS) if "decoder" in data else "transpose",
            guide=_parse_guide(data.get("guide")),
            colour=_expect_choice(data, "colour", PALETTES) if data.get("colour") else None,
        )


@dataclass(frozen=True)
class ModelIdentity:
    """Which weights made an output, without the weights: what its provenance records
    (core.outputs.provenance) and what a model worker reports of the checkpoint it loaded, so
    that a process that never loads the weights (the daemon's service) can label results
    computed elsewhere."""

    version: str
    sha256: str
    objective: str
    epoch: int | None
    image_space: str
    # The output colour the checkpoint recommends (meta.colour): what ``colour = auto`` serves.
    colour: str | None = None

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> ModelIdentity:
        meta = checkpoint.meta
        return cls(
            version=checkpoint.version,
            sha256=checkpoint.sha256,
            objective=meta.objective,
            epoch=meta.epoch,
            image_space=meta.image_space,
            colour=meta.colour,
        )


@dataclass
class Checkpoint:
    """Loaded weights. ``path`` is the real file (after following ``current``)."""

    path: Path
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    meta: CheckpointMeta
    sha256: str

    @property
    def version(self) -> str:
        """Short human id, e.g. ``epoch-050.safetensors@1a2b3c4d5e6f``."""
        return f"{self.path.name}@{self.sha256[:12]}"

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity.of(self)


def is_int(value: object) -> bool:
    """An int that is not a bool (JSON's ``true`` parses as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse_format_version(version: object) -> int:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"format_version {version} is newer than this artd understands "
            f"(up to {FORMAT_VERSION}); upgrade artd to read it"
        )
    return version


def _expect_str(data: dict[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {value!r}")
    return value


def _expect_choice(data: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = _expect_str(data, key)
    if value not in choices:
        raise ValueError(f"{key} must be one of {choices}, got {value!r}")
    return value


def _parse_normalization(value: object) -> dict[str, list[float]]:
    if not isinstance(value, dict):
        raise ValueError(f"normalization must be an object with mean and std, got {value!r}")
    parsed: dict[str, list[float]] = {}
    for key in ("mean", "std"):
        numbers = value.get(key)
        if (
            not isinstance(numbers, list)
            or len(numbers) != 3
            or not all(_is_finite_number(x) for x in numbers)
        ):
            raise ValueError(f"normalization.{key} must be 3 finite numbers, got {numbers!r}")
        parsed[key] = [float(x) for x in numbers]
    if any(s <= 0 for s in parsed["std"]):
        raise ValueError(f"normalization.std must be positive, got {parsed['std']}")
    return parsed


def _parse_metrics(value: object) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError(f"metrics must be an object, got {type(value).__name__}")
    bad = {k: v for k, v in value.items() if not _is_finite_number(v)}
    if bad:
        raise ValueError(f"metrics must be finite numbers, got {bad!r}")
    return {str(k): float(v) for k, v in value.items()}


def _parse_objective(data: dict[str, Any]) -> tuple[str, dict[str, Any] | None, dict[str, float]]:
    """``objective``, ``diffusion`` and ``sampler``; metadata written before they existed is
    ``reconstruct`` with neither."""
    objective = data.get("objective", "reconstruct")
    if not isinstance(objective, str) or not OBJECTIVE_NAME.fullmatch(objective):
        raise ValueError(f"objective must be a name like 'denoise', got {objective!r}")
    diffusion = data.get("diffusion")
    if diffusion is not None and not isinstance(diffusion, dict):
        raise ValueError(f"diffusion must be an object or absent, got {diffusion!r}")
    sampler = data.get("sampler", {})
    if not isinstance(sampler, dict) or not set(sampler) <= SAMPLER_KEYS:
        raise ValueError(f"sampler must be an object with keys among {sorted(SAMPLER_KEYS)}")
    bad = {k: v for k, v in sampler.items() if not _is_finite_number(v)}
    if bad:
        raise ValueError(f"sampler values must be finite numbers, got {bad!r}")
    return objective, (dict(diffusion) if diffusion is not None else None), dict(sampler)


def _parse_guide(value: object) -> dict[str, Any] | None:
    """``guide``: absent, or an object whose ``channels`` the network can take."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"guide must be an object or absent, got {value!r}")
    channels = value.get("channels")
    if not is_int(channels) or not 1 <= channels <= MAX_GUIDE_CHANNELS:
        raise ValueError(
            f"guide.channels must be an integer 1..{MAX_GUIDE_CHANNELS}, got {channels!r}"
        )
    return dict(value)
