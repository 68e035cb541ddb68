"""The settings of ``artd run``/``check`` (``DaemonSettings``) and ``artd process``.

The daemon's come from ``ARTD_*`` env vars, ``--config FILE.toml`` and CLI flags; every
field of ``DaemonSettings`` is a setting an operator may set, and the unit files, the compose
file and docs/operations.md are checked against that list by the tests. ``artd process`` reads
its flags only. What both commands set (the model, its device, the sampler, the images
written) is defined once, in ``RenderSettings``; ``artd generate`` (``GenerateSettings``)
shares its model and sampler half, ``ModelSettings``.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

import core
from core.config import FlagNames, InitOnly, check_device
from core.images.loading import DEFAULT_MAX_PIXELS
from core.network.precision import PRECISIONS
from core.network.shapes import check_output_size, check_size
from core.outputs.encoding import OUTPUT_FORMATS
from daemon.logs import LogSettings
from daemon.output_settings import OutputOptions
from daemon.page_settings import PageSettings

if TYPE_CHECKING:
    from core.runtime.engine import Engine
    from core.runtime.samplers import SamplingSettings

_INSTANCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def _default_instance() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64]
    return name if _INSTANCE_NAME.match(name) else "artd"


# A seed is hashed into each image's noise seed (core.diffusion.schedule.image_seed): any size
# works,
# this bound keeps it a 64-bit signed integer everywhere it is recorded.
MAX_SEED = 2**63 - 1
MAX_STEPS = 1000


class ModelSettings(BaseSettings):
    """The model, where it runs and how its sampler is driven: shared by the daemon,
    ``artd process`` and ``artd generate``. The sampler settings (``strength``, ``steps``,
    ``eta``, ``seed``) are read by a denoise checkpoint; unset, each is the checkpoint's
    recommendation (else core.runtime.samplers.DEFAULT_SAMPLER); a reconstruct checkpoint ignores
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

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device(value)

    @model_validator(mode="after")
    def _checkpoint_absolute(self) -> ModelSettings:
        # Resolved once at start: the daemon never changes directory, but logs should be clear.
        self.checkpoint = self.checkpoint.expanduser().absolute()
        return self

    def sampling(self) -> SamplingSettings:
        """The sampler settings as core.runtime.samplers takes them (None fields: the model's)."""
        from core.runtime.samplers import SamplingSettings  # here: building flags needs no torch

        return SamplingSettings(
            strength=self.strength, steps=self.steps, eta=self.eta, seed=self.seed
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


class RenderSettings(OutputOptions, ModelSettings):
    """The model and the images it writes from inputs: shared by the daemon and
    ``artd process``, so that their names, defaults and checks cannot drift apart."""

    size: int | Literal["input"] = Field(
        512,
        description="output's longer side (px), a multiple of 8; 'input': the input's own "
        "size (slow on CPU for big photos: docs/operations.md, 'Output size')",
    )
    resize: Literal["fit", "stretch"] = "fit"
    # "same": the input's own format where it is an output format, PNG otherwise (issue 15).
    output_format: Literal[(*OUTPUT_FORMATS, "same")] = "png"  # type: ignore[valid-type]

    @field_validator("size")
    @classmethod
    def _size_multiple(cls, value: int | str) -> int | str:
        return check_output_size(value)

    @property
    def output_extension(self) -> str:
        """The outputs' extension; with "same" each file's own (OutputSettings.format_for),
        and ".png" here, the one for inputs that are not PNG, JPEG or WebP."""
        return OUTPUT_FORMATS.get(self.output_format, ".png")


class DaemonSettings(PageSettings, LogSettings, RenderSettings):
    """Every setting of the hot-folder daemon; each is also ``ARTD_<NAME>`` and a TOML key."""

    model_config = SettingsConfigDict(env_prefix="ARTD_", extra="forbid", validate_default=True)

    # Folders and model (the checkpoint, device and images: RenderSettings).
    root: Path = Field(Path("var"), description="data root: inbox/, outbox/, quarantine/, ...")
    reload_seconds: float = Field(5.0, ge=0.2, description="how often the checkpoint is checked")
    instance: str = Field(default_factory=_default_instance, description="unique per daemon")

    # Batching.
    max_delay_ms: int = Field(10, ge=0, le=10_000, description="wait this long to fill a batch")
    decode_workers: int = Field(2, ge=1, le=64)
    encode_workers: int = Field(2, ge=1, le=64)
    max_in_flight: int = Field(64, ge=1, le=10_000, description="claimed files in memory, max")

    # Intake.
    settle_seconds: float = Field(2.0, ge=0.0, description="quiet time before a file is taken")
    rescan_seconds: float = Field(10.0, ge=0.5, description="full inbox scan interval")
    polling: bool = Field(False, description="poll instead of inotify (SMB/NFS shares)")
    max_attempts: int = Field(
        3,
        ge=1,
        description="deaths of the process while a file was alone in the model (after an "
        "interruption it is retried alone) before it is quarantined as crashed_repeatedly",
    )

    # Images.
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="decoded size limit (bombs)")
    background: str = Field("#ffffff", description="colour under transparent pixels")
    keep_originals: bool = Field(True, description="archive inputs (false: delete them)")

    # Operations (and log_json, log_level: LogSettings).
    http_host: str = "127.0.0.1"
    http_port: int = Field(9750, ge=0, le=65535, description="0 turns HTTP off")
    drain_seconds: float = Field(20.0, gt=0, description="SIGTERM: finish in-flight within this")
    stuck_seconds: float = Field(120.0, gt=0, description="a model call this long: exit")

    # Presets and job sidecars (daemon.presets, daemon.sidecars, docs/operations.md).
    presets: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="[presets.NAME] tables: render settings for inbox/NAME/ (TOML)",
    )
    sidecar_wait_seconds: float = Field(
        1.0, ge=0.0, le=600.0, description="an image waits this long for its .artd.json sidecar"
    )
    sidecar_orphan_seconds: float = Field(
        3600.0, ge=1.0, description="a sidecar without its image is deleted after this long"
    )
    model_memory_mb: int = Field(
        2048, ge=1, description="models kept loaded at once, by their weights' size (LRU)"
    )

    @field_validator("presets")
    @classmethod
    def _presets(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from daemon.presets import check_presets  # here: presets import this module

        return check_presets(value)

    @field_validator("instance")
    @classmethod
    def _instance_name(cls, value: str) -> str:
        if not _INSTANCE_NAME.match(value):
            raise ValueError("letters, digits, '_', '.', '@', '-' only, at most 64 characters")
        return value

    @field_validator("background")
    @classmethod
    def _colour(cls, value: str) -> str:
        if not re.fullmatch(r"#[0-9A-Fa-f]{6}", value):
            raise ValueError("a colour as #rrggbb")
        return value.lower()

    @model_validator(mode="after")
    def _no_same_format(self) -> DaemonSettings:
        # The spool names an output at claim time, before its format is known (issue 15).
        if self.output_format == "same":
            raise ValueError("output_format 'same' is for artd process only, not the daemon")
        return self

    @model_validator(mode="after")
    def _root_absolute(self) -> DaemonSettings:
        self.root = self.root.expanduser().absolute()
        return self

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.background[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


class ProcessSettings(InitOnly, FlagNames, RenderSettings):
    """``artd process``'s settings: flags only (no env vars, no TOML, as it always was)."""

    model_config = SettingsConfigDict(extra="forbid", validate_default=True)
    # The flags this command always had, for fields the daemon names after its env vars.
    cli_flags: ClassVar[dict[str, str]] = {"output_format": "--format", "max_batch": "--batch"}

    workers: int | None = Field(
        None, ge=0, description="decode/encode threads (0 or unset: CPUs + 2, at most 8)"
    )


_WXH = re.compile(r"(\d{1,5})x(\d{1,5})")
MAX_GENERATE_SIDE = 4096
MAX_GENERATE_COUNT = 10_000


class GenerateSettings(InitOnly, FlagNames, ModelSettings):
    """``artd generate``'s settings: flags only, as ``artd process``. ``seed`` is the run's:
    image ``i`` is made from ``generate:<seed>:<i>`` (core.diffusion.generate), so a run repeats;
    ``strength`` is accepted and ignored (generation is always strength 1)."""

    model_config = SettingsConfigDict(extra="forbid", validate_default=True)
    cli_flags: ClassVar[dict[str, str]] = {"output_format": "--format", "max_batch": "--batch"}

    count: int = Field(1, ge=1, le=MAX_GENERATE_COUNT, description="images to make")
    size: str = Field("256x256", description="WIDTHxHEIGHT, each a multiple of 8 (px)")
    output_format: Literal[tuple(OUTPUT_FORMATS)] = "png"  # type: ignore[valid-type]
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="the run's seed (unset: a random one, logged)"
    )
    strength: float | None = Field(
        None, ge=0.0, le=1.0, allow_inf_nan=False, description="ignored: generation is strength 1"
    )

    @field_validator("size")
    @classmethod
    def _wxh(cls, value: str) -> str:
        match = _WXH.fullmatch(value.strip().lower())
        if match is None:
            raise ValueError("must be WIDTHxHEIGHT in pixels, e.g. 256x192")
        for side in map(int, match.groups()):
            check_size(side)
            if side > MAX_GENERATE_SIDE:
                raise ValueError(f"each side must be at most {MAX_GENERATE_SIDE}")
        return "x".join(match.groups())

    @property
    def width(self) -> int:
        return int(self.size.split("x")[0])

    @property
    def height(self) -> int:
        return int(self.size.split("x")[1])

    @property
    def output_extension(self) -> str:
        return OUTPUT_FORMATS[self.output_format]
