"""The daemon's settings: ``ARTD_*`` env vars, ``--config FILE.toml``, CLI flags.

Every field here is a setting an operator may set; the unit files, the compose file and
docs/operations.md are checked against this list by the tests.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

import core
from core.model import SIZE_MULTIPLE

_INSTANCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def _default_instance() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64]
    return name if _INSTANCE_NAME.match(name) else "artd"


class DaemonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ARTD_", extra="forbid", validate_default=True)

    # Folders and model.
    root: Path = Field(Path("var"), description="data root: inbox/, outbox/, quarantine/, ...")
    checkpoint: Path = Field(
        core.DEFAULT_CHECKPOINT, description="model file, or a `current` pointer to follow"
    )
    reload_seconds: float = Field(5.0, ge=0.2, description="how often the checkpoint is checked")
    instance: str = Field(default_factory=_default_instance, description="unique per daemon")

    # Device and batching.
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    precision: Literal["auto", "fp32", "bf16", "fp16", "bf16-mixed", "fp16-mixed"] = "auto"
    max_batch: int = Field(
        0, ge=0, le=1024, description="images per model call, at most (0: 4 on CPU, 32 on CUDA)"
    )
    max_delay_ms: int = Field(10, ge=0, le=10_000, description="wait this long to fill a batch")
    decode_workers: int = Field(2, ge=1, le=64)
    encode_workers: int = Field(2, ge=1, le=64)
    compile: bool = Field(
        False, description="torch.compile the model: faster, 10-15 s per new input shape"
    )
    max_in_flight: int = Field(64, ge=1, le=10_000, description="claimed files in memory, max")

    # Intake.
    settle_seconds: float = Field(2.0, ge=0.0, description="quiet time before a file is taken")
    rescan_seconds: float = Field(10.0, ge=0.5, description="full inbox scan interval")
    polling: bool = Field(False, description="poll instead of inotify (SMB/NFS shares)")
    max_attempts: int = Field(3, ge=1, description="restarts a file may cause before quarantine")

    # Images.
    size: int = Field(256, ge=SIZE_MULTIPLE, le=8192, description="output's longer side (px)")
    resize: Literal["fit", "stretch"] = "fit"
    output_format: Literal["png", "jpeg", "webp"] = "png"
    max_pixels: int = Field(100_000_000, ge=1, description="decoded size limit (bombs)")
    background: str = Field("#ffffff", description="colour under transparent pixels")
    keep_originals: bool = Field(True, description="archive inputs (false: delete them)")

    # Operations.
    http_host: str = "127.0.0.1"
    http_port: int = Field(9750, ge=0, le=65535, description="0 turns HTTP off")
    drain_seconds: float = Field(20.0, gt=0, description="SIGTERM: finish in-flight within this")
    stuck_seconds: float = Field(120.0, gt=0, description="a model call this long: exit")
    log_json: bool = False
    log_level: Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("instance")
    @classmethod
    def _instance_name(cls, value: str) -> str:
        if not _INSTANCE_NAME.match(value):
            raise ValueError("letters, digits, '_', '.', '@', '-' only, at most 64 characters")
        return value

    @field_validator("size")
    @classmethod
    def _size_multiple(cls, value: int) -> int:
        if value % SIZE_MULTIPLE:
            raise ValueError(f"must be a multiple of {SIZE_MULTIPLE}")
        return value

    @field_validator("background")
    @classmethod
    def _colour(cls, value: str) -> str:
        if not re.fullmatch(r"#[0-9A-Fa-f]{6}", value):
            raise ValueError("a colour as #rrggbb")
        return value.lower()

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError("auto, cpu, cuda, cuda:N or mps")
        return value

    @model_validator(mode="after")
    def _paths_absolute(self) -> DaemonSettings:
        # Resolve once at start: the daemon never changes directory, but logs should be clear.
        self.root = self.root.expanduser().absolute()
        self.checkpoint = self.checkpoint.expanduser().absolute()
        return self

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.background[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]

    @property
    def output_extension(self) -> str:
        from core.imaging import OUTPUT_FORMATS

        return OUTPUT_FORMATS[self.output_format]
