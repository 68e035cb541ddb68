"""The settings of the daemon's page and JSON API (issue 16). A mixin of
``DaemonSettings``; the HTTP server's host and port stay in daemon.settings."""

from __future__ import annotations

from pydantic_settings import BaseSettings


class PageSettings(BaseSettings):
    """The page's settings (fields added by issue 16)."""
