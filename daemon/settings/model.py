"""The model, its device and its sampler (``ModelSettings``): what every command that runs a
model shares, the daemon, ``artd process`` and ``artd generate``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings

import core
from core.config import check_device
from core.diffusion.sampler_settings import MIN_WORKING, SamplerRequest
from core.network.precision import PRECISIONS

if TYPE_CHECKING:
    from core.runtime.engine import Engine
    from daemon.workers.interface import EngineOptions

# A seed is hashed into each image's noise seed (core.diffusion.schedule.image_seed): any size
# works, this bound keeps it a 64-bit signed integer everywhere it is recorded.
MAX_SEED = 2**63 - 1
MAX_STEPS = 1000
MAX_WORKING = 8192


def sampler_request(s: Any) -> SamplerRequest:
    """The sampler settings asked for by settings ``s`` (``ModelSettings`` or a job's view
    of them): unset fields, and ``working_size`` auto, are the model's choice."""
    working = getattr(s, "working_size", "auto")
    return SamplerRequest(
        strength=s.strength,
        steps=s.steps,
        eta=s.eta,
        seed=s.seed,
        working_size=None if working == "auto" else working,
        refine=getattr(s, "refine", None),
    )


class ModelSettings(BaseSettings):
    """The model, where it runs and how its sampler is driven: shared by the daemon,
    ``artd process`` and ``artd generate``. The sampler settings (``strength``, ``steps``,
    ``eta``, ``seed``, ``working_size``, ``refine``) are read by a denoise checkpoint; unset,
    each is the checkpoint's recommendation (else
    core.diffusion.sampler_settings.DEFAULT_SAMPLER_SETTINGS); a one-pass checkpoint ignores
    them and says so in one log line."""

    checkpoint: Path = Field(
        core.DEFAULT_CHECKPOINT, description="model file, or a `current` pointer to follow"
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    precision: Literal[("auto", *PRECISIONS)] = "auto"  # type: ignore[valid-type]
    max_batch: int = Field(
        0, ge=0, le=1024, description="images per model call, at most (0: 4 on CPU, 32 on CUDA)"
    )
    compile: bool = Field(
        False, description="torch.compile the model: faster, 10-15 s per new input shape"
    )
    strength: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="denoise models: how far from the input, 0..1 (unset: the model's choice)",
    )
    steps: int | None = Field(
        None,
        ge=1,
        le=MAX_STEPS,
        description="denoise models: sampling steps at strength 1 (unset: the model's choice)",
    )
    eta: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="denoise models: 0 deterministic steps .. 1 DDPM noise (unset: the model's)",
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="denoise models: re-rolls every output (unset: from each input's content)",
    )

    working_size: int | Literal["auto"] = Field(
        "auto",
        description="denoise models: sample with the shorter side at N px, then bring the "
        "result to the output size; 0 = at the output size (auto: the model's choice)",
    )
    refine: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="denoise models: strength of a refining pass at the output size after a "
        "working size, 0 = none (unset: the model's choice)",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device(value)

    @field_validator("working_size")
    @classmethod
    def _working_size(cls, value: int | str) -> int | str:
        if value != "auto" and ((value != 0 and value < MIN_WORKING) or value > MAX_WORKING):
            raise ValueError(
                f"must be auto, 0 (the output size) or {MIN_WORKING}..{MAX_WORKING} pixels, "
                f"got {value}"
            )
        return value

    @model_validator(mode="after")
    def _checkpoint_absolute(self) -> ModelSettings:
        # Resolved once at start: the daemon never changes directory, but logs should be clear.
        self.checkpoint = self.checkpoint.expanduser().absolute()
        return self

    def sampler_request(self) -> SamplerRequest:
        """The sampler settings asked for, as the engine takes them (None fields: the model's)."""
        return sampler_request(self)

    def engine_options(self) -> EngineOptions:
        """How a model worker loads its checkpoint: these settings' device and precision."""
        from daemon.workers.interface import EngineOptions

        return EngineOptions(
            device=self.device,
            precision=self.precision,
            max_batch=self.max_batch or None,
            compile=self.compile,
        )

    def load_engine(self, path: os.PathLike[str] | str | None = None) -> Engine:
        """The model at ``path`` (default: ``checkpoint``) on these settings' device."""
        from core.runtime.engine import Engine  # here: building a command's flags needs no model

        return Engine.from_path(
            path or self.checkpoint,
            device=self.device,
            precision=self.precision,
            max_batch=self.max_batch or None,
            compile=self.compile,
        )
