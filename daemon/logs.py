"""Log set-up shared by every entry point: human lines on a terminal, JSON for journals."""

from __future__ import annotations

import sys
from typing import Literal

from loguru import logger
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Level = Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"]


class LogSettings(BaseSettings):
    """``ARTD_LOG_JSON`` and ``ARTD_LOG_LEVEL``: the daemon's settings include these two, and
    ``artd process`` (which reads no other env var) and a failed settings load read them alone."""

    model_config = SettingsConfigDict(env_prefix="ARTD_", validate_default=True)

    log_json: bool = Field(False, description="one JSON object per line (for log shippers)")
    log_level: Level = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        # `ARTD_LOG_LEVEL=debug` always worked for the log set-up; keep it working.
        return value.upper() if isinstance(value, str) else value


def from_environment() -> LogSettings:
    """The two log settings from the environment; the defaults where they are unusable (the
    daemon's own settings load reports a bad value, with every other problem)."""
    try:
        return LogSettings()
    except ValidationError:
        return LogSettings.model_construct()


def configure(settings: LogSettings | None = None) -> None:
    """Send loguru's records to stderr as ``settings`` say (``None``: the environment's)."""
    settings = settings or from_environment()
    logger.remove()
    if settings.log_json:
        logger.add(sys.stderr, level=settings.log_level, serialize=True, enqueue=False)
    else:
        fmt = "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> {message}"
        logger.add(sys.stderr, level=settings.log_level, format=fmt, colorize=sys.stderr.isatty())
