"""Moved to :mod:`core.training.settings`; this name stays for the callers that import it."""

from core.training.settings import TrainSettings, build_parser, parse_settings

__all__ = ["TrainSettings", "build_parser", "parse_settings"]
