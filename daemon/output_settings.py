"""How outputs are written beyond their size and format: colour, transparency, quality,
labels and metadata (issue 15). A mixin of ``RenderSettings``, so the daemon and
``artd process`` share every field defined here."""

from __future__ import annotations

from pydantic_settings import BaseSettings


class OutputOptions(BaseSettings):
    """Output colour, quality and labelling settings (fields added by issue 15)."""
