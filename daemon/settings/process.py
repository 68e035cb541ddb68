"""The settings of ``artd process`` (``ProcessSettings``): flags only, no env vars, no TOML."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from core.config import FlagNames, InitOnly
from daemon.settings.ray import RaySettings
from daemon.settings.render import RenderSettings


class ProcessSettings(InitOnly, FlagNames, RaySettings, RenderSettings):
    """``artd process``'s settings: flags only (no env vars, no TOML, as it always was);
    ``ray_address`` (``--ray [ADDRESS]``) runs it as a Ray Data pipeline (daemon.oneshot_ray)."""

    model_config = SettingsConfigDict(extra="forbid", validate_default=True)
    # The flags this command always had, for fields the daemon names after its env vars.
    cli_flags: ClassVar[dict[str, str]] = {
        "output_format": "--format",
        "max_batch": "--batch",
        "ray_address": "--ray",  # an optional value: daemon.cli.process_parser adds it
    }

    workers: int | None = Field(
        None, ge=0, description="decode/encode threads (0 or unset: CPUs + 2, at most 8)"
    )
