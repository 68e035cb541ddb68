"""Log set-up shared by every entry point: human lines on a terminal, JSON for journals."""

from __future__ import annotations

import os
import sys

from loguru import logger


def configure(*, json: bool | None = None, level: str | None = None) -> None:
    """``ARTD_LOG_JSON=1`` gives one JSON object per line (for log shippers)."""
    if json is None:
        json = os.environ.get("ARTD_LOG_JSON", "").lower() in ("1", "true", "yes")
    level = level or os.environ.get("ARTD_LOG_LEVEL", "INFO").upper()
    logger.remove()
    if json:
        logger.add(sys.stderr, level=level, serialize=True, enqueue=False)
    else:
        fmt = "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> {message}"
        logger.add(sys.stderr, level=level, format=fmt, colorize=sys.stderr.isatty())
