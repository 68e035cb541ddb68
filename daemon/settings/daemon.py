"""The settings of the hot-folder daemon, ``artd run`` and ``artd check`` (``DaemonSettings``).

They come from ``ARTD_*`` env vars, ``--config FILE.toml`` and CLI flags; every field is a
setting an operator may set, and the unit files, the compose file and docs/operations.md are
checked against that list by the tests.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from core.config import FieldError
from core.images.decode import DEFAULT_MAX_PIXELS
from core.outputs.settings import OutputSettings
from daemon.logs import LogSettings
from daemon.settings.page import PageSettings, is_loopback
from daemon.settings.presets import check_presets
from daemon.settings.ray import RaySettings
from daemon.settings.render import RenderSettings
from daemon.spool.names import INSTANCE_RE, INSTANCE_RULE

_COLOUR = re.compile(r"#[0-9A-Fa-f]{6}")


def _default_instance() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64]
    return name if INSTANCE_RE.fullmatch(name) else "artd"


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{channel:02x}" for channel in rgb)


class DaemonSettings(PageSettings, LogSettings, RaySettings, RenderSettings):
    """Every setting of the hot-folder daemon; each is also ``ARTD_<NAME>`` and a TOML key."""

    model_config = SettingsConfigDict(
        env_prefix="ARTD_", extra="forbid", validate_default=True, hide_input_in_errors=True
    )

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
        description="deaths of the model worker in a row with a file alone in it (after an "
        "earlier death) before it is quarantined as crashed_repeatedly; the service's own "
        "death never counts",
    )

    # Images.
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="decoded size limit (bombs)")
    background: str = Field(
        _hex(OutputSettings.background), description="colour under transparent pixels"
    )
    keep_originals: bool = Field(True, description="archive inputs (false: delete them)")

    # Operations (and log_json, log_level: LogSettings; the page: PageSettings).
    http_host: str = "127.0.0.1"
    http_port: int = Field(9750, ge=0, le=65535, description="0 turns HTTP off")
    drain_seconds: float = Field(20.0, gt=0, description="SIGTERM: finish in-flight within this")
    stuck_seconds: float = Field(
        120.0,
        gt=0,
        description="a model batch this long is a hang: its worker is killed and the batch "
        "retried by the crash rule (max_attempts)",
    )

    # Presets and job sidecars (daemon.settings.presets, daemon.sidecars, docs/operations.md).
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
        return check_presets(value)

    @field_validator("instance")
    @classmethod
    def _instance_name(cls, value: str) -> str:
        # The spool's rule (daemon.spool.names): what passes here, the spool accepts at start.
        if not INSTANCE_RE.fullmatch(value):
            raise ValueError(INSTANCE_RULE + " characters")
        return value

    @field_validator("background")
    @classmethod
    def _colour(cls, value: str) -> str:
        if not _COLOUR.fullmatch(value):
            raise ValueError("a colour as #rrggbb")
        return value.lower()

    @model_validator(mode="after")
    def _no_same_format(self) -> DaemonSettings:
        # The spool names an output at claim time, before its format is known.
        if self.output_format == "same":
            raise FieldError(
                "output_format", "output_format 'same' is for artd process only, not the daemon"
            )
        return self

    @model_validator(mode="after")
    def _token_for_a_public_bind(self) -> DaemonSettings:
        if (
            not is_loopback(self.http_host)
            and self.page_token is None
            and self.page_token_file is None
        ):
            raise FieldError(
                "http_host",
                f"http_host (ARTD_HTTP_HOST) is {self.http_host!r}, not loopback: set "
                "page_token (ARTD_PAGE_TOKEN) or page_token_file (ARTD_PAGE_TOKEN_FILE) "
                "first, or bind 127.0.0.1",
            )
        return self

    @model_validator(mode="after")
    def _root_absolute(self) -> DaemonSettings:
        self.root = self.root.expanduser().absolute()
        return self

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        """``background`` as the (r, g, b) that OutputSettings.background takes."""
        return tuple(int(self.background[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
