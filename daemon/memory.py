"""Giving memory back after a model switch (docs/soak.md, "Memory across hot reloads").

A hot reload frees a whole engine (weights, its BatchNorm-folded copies: about 10 MiB for
the shipped model) while the rest of the heap stays in use around it. glibc keeps such
freed chunks for reuse rather than returning them to the system, so without help the RSS
steps up at every reload and is never given back. :func:`release` collects the old model's
cycles, if any, and asks glibc to return the free pages of every arena (``malloc_trim(0)``,
which ``madvise``s them away; the heap's layout is unchanged). Elsewhere (musl, macOS) it
only collects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
import time

from loguru import logger


def _glibc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl has no such symbol)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _glibc_trim()


def release(why: str) -> None:
    """Collect garbage and return the freed heap pages to the system (module docstring)."""
    started = time.perf_counter()
    collected = gc.collect()
    trimmed = bool(_TRIM(0)) if _TRIM is not None else False
    logger.debug(
        "memory released after {}: {} objects collected, heap trimmed: {} ({:.0f} ms)",
        why,
        collected,
        trimmed,
        (time.perf_counter() - started) * 1000,
    )
