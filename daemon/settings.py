"""The settings of ``artd run``/``check`` (``DaemonSettings``) and ``artd process``.

The daemon's come from ``ARTD_*`` env vars, ``--config FILE.toml`` and CLI flags; every
field of ``DaemonSettings`` is a setting an operator may set, and the unit files, the compose
file and docs/operations.md are checked against that list by the tests. ``artd process`` reads
its flags only. What both commands set (the model, its device, the images written) is
defined once, in ``RenderSettings``.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

import core
from core.config import FlagNames, check_device
from core.imaging import DEFAULT_MAX_PIXELS, OUTPUT_FORMATS
from core.model import SIZE_MULTIPLE
from core.precision import PRECISIONS
from daemon.logs import LogSettings

if TYPE_CHECKING:
    from core.engine import Engine

_INSTANCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def _default_instance() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64]
    return name if _INSTANCE_NAME.match(name) else "artd"


class RenderSettings(BaseSettings):
    """The model, where it runs and the images it writes: shared by the daemon and
    ``artd process``, so that their names, defaults and checks cannot drift apart."""

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
    size: int = Field(256, ge=SIZE_MULTIPLE, le=8192, description="output's longer side (px)")
    resize: Literal["fit", "stretch"] = "fit"
    output_format: Literal[tuple(OUTPUT_FORMATS)] = "png"  # type: ignore[valid-type]

    @field_validator("size")
    @classmethod
    def _size_multiple(cls, value: int) -> int:
        if value % SIZE_MULTIPLE:
            raise ValueError(f"must be a multiple of {SIZE_MULTIPLE}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device(value)

    @model_validator(mode="after")
    def _checkpoint_absolute(self) -> RenderSettings:
        # Resolved once at start: the daemon never changes directory, but logs should be clear.
        self.checkpoint = self.checkpoint.expanduser().absolute()
        return self

    @property
    def output_extension(self) -> str:
        return OUTPUT_FORMATS[self.output_format]

    def load_engine(self, path: os.PathLike[str] | str | None = None) -> Engine:
        """The model at ``path`` (default: ``checkpoint``) on these settings' device."""
        from core.engine import Engine  # here: building a command's flags needs no model

        return Engine.from_path(
            path or self.checkpoint,
            device=self.device,
            precision=self.precision,
            max_batch=self.max_batch or None,
            compile=self.compile,
        )


class DaemonSettings(LogSettings, RenderSettings):
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
    max_attempts: int = Field(3, ge=1, description="restarts a file may cause before quarantine")

    # Images.
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="decoded size limit (bombs)")
    background: str = Field("#ffffff", description="colour under transparent pixels")
    keep_originals: bool = Field(True, description="archive inputs (false: delete them)")

    # Operations (and log_json, log_level: LogSettings).
    http_host: str = "127.0.0.1"
    http_port: int = Field(9750, ge=0, le=65535, description="0 turns HTTP off")
    drain_seconds: float = Field(20.0, gt=0, description="SIGTERM: finish in-flight within this")
    stuck_seconds: float = Field(120.0, gt=0, description="a model call this long: exit")

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
    def _root_absolute(self) -> DaemonSettings:
        self.root = self.root.expanduser().absolute()
        return self

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.background[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


class ProcessSettings(FlagNames, RenderSettings):
    """``artd process``'s settings: flags only (no env vars, no TOML, as it always was)."""

    model_config = SettingsConfigDict(extra="forbid", validate_default=True)
    # The flags this command always had, for fields the daemon names after its env vars.
    cli_flags: ClassVar[dict[str, str]] = {"output_format": "--format", "max_batch": "--batch"}

    workers: int | None = Field(
        None, ge=0, description="decode/encode threads (0 or unset: CPUs + 2, at most 8)"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Without a prefix, env vars named SIZE or DEVICE would silently become settings.
        return (init_settings,)
