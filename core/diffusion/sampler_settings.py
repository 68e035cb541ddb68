"""Sampler settings: the img2img strength, steps, eta and seed, asked for and resolved.

Two names, two meanings, and the defaults in one place (importable without torch):

- :class:`SamplerSettings`: the settings a denoise sampler runs with, every field set and
  validated. Its field defaults are artd's defaults (:data:`DEFAULT_SAMPLER_SETTINGS`), the
  fallback for whatever a checkpoint does not recommend.
- :class:`SamplerRequest`: what a user asked for (flags, a preset, a sidecar); any field may
  be ``None``, left to the checkpoint's recommendation. :meth:`SamplerRequest.resolve` turns
  a request into :class:`SamplerSettings`.

"Sampler" alone is the module that samples (core.runtime.samplers); a checkpoint's
recommended settings, as recorded, are the plain dict ``meta.sampler``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

# The smallest working size (shorter side, pixels) the sampler accepts.
MIN_WORKING = 32


@dataclass(frozen=True)
class SamplerSettings:
    """Resolved img2img settings; invalid values raise ValueError naming the field.
    ``seed`` is not read by core.diffusion.schedule.sample (which takes one seed per image):
    it feeds core.diffusion.schedule.image_seed."""

    strength: float = 0.5
    steps: int = 25
    eta: float = 1.0
    seed: int | None = None
    # The working scale (core.runtime.samplers.DiffusionSampler): sample with the shorter side
    # at this many pixels, then bring the result to the output size; 0 = at the output size.
    working_size: int = 0
    # Then a refining pass at the output size from that result, at this strength (0 = none).
    refine: float = 0.0
    # A guided checkpoint: False samples with the guide withheld (``artd generate`` without
    # a guide image); other checkpoints have none to withhold.
    guide: bool = True

    def __post_init__(self) -> None:
        for name in ("strength", "eta", "refine"):
            value = getattr(self, name)
            ok = not isinstance(value, bool) and isinstance(value, int | float)
            if not ok or not 0.0 <= value <= 1.0:  # NaN fails the range test too
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
            object.__setattr__(self, name, float(value))  # 1 and 1.0 hash to one seed
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        if not isinstance(self.guide, bool):
            raise ValueError(f"guide must be true or false, got {self.guide!r}")
        size = self.working_size
        if isinstance(size, bool) or not isinstance(size, int) or (size and size < MIN_WORKING):
            raise ValueError(
                f"working_size must be 0 (the output size) or an integer >= {MIN_WORKING}, "
                f"got {size!r}"
            )

    def to_dict(self) -> dict[str, object]:
        """Plain values, for provenance metadata and core.diffusion.schedule.image_seed.
        ``working_size``, ``refine`` and ``guide`` only when not their defaults, so settings
        from before they existed hash to the same noise seeds."""
        data = asdict(self)
        for name in ("working_size", "refine"):
            if not data[name]:
                del data[name]
        if data["guide"]:
            del data["guide"]
        return data


# What a denoise checkpoint is served with when it recommends nothing, and the trainer's
# default recommendation: the one place these numbers live.
DEFAULT_SAMPLER_SETTINGS = SamplerSettings()


@dataclass(frozen=True)
class SamplerRequest:
    """The sampler settings a user asked for; ``None`` leaves a field to the checkpoint's
    recommendation, then to :data:`DEFAULT_SAMPLER_SETTINGS`. Invalid values raise
    ValueError naming the field (``strength``, ``steps``, ``eta``, ``seed``,
    ``working_size``, ``refine`` or ``guide``), as
    :class:`SamplerSettings` words it."""

    strength: float | None = None
    steps: int | None = None
    eta: float | None = None
    seed: int | None = None
    working_size: int | None = None
    refine: float | None = None
    guide: bool | None = None

    def __post_init__(self) -> None:
        self.resolve(DEFAULT_SAMPLER_SETTINGS)  # validates every set field

    @property
    def is_set(self) -> bool:
        """Whether any field was given."""
        return any(value is not None for value in asdict(self).values())

    def given(self) -> dict[str, object]:
        """Only the fields that were set."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def resolve(self, recommended: SamplerSettings) -> SamplerSettings:
        """The effective settings: the given fields over ``recommended``."""
        return dataclasses.replace(recommended, **self.given())  # type: ignore[arg-type]
