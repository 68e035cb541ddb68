"""Job sidecars: ``photo.jpg.artd.json`` beside an image, read safely (bounded size and depth).

A sidecar is never an image: the spool never claims one by itself; it moves with its image
(claim, work, archive, quarantine). This module only knows names and bytes: which name is a
sidecar, whose it is, whether one is still being copied, and how to read one without letting
a hostile file cost memory, recursion or a read outside the root. What a sidecar may set is
daemon.settings.presets' business.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

from core import durable

SUFFIX = ".artd.json"
MAX_BYTES = 64 * 1024  # a sidecar is a handful of keys; anything bigger is refused unread
MAX_DEPTH = 2  # settings are flat: {"key": value}; one more level for a list value
# Names a copy tool writes before renaming into place.
_TEMP_TAILS = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".swp")


class SidecarError(ValueError):
    """A sidecar that cannot be used: the message says why, in words."""


def is_sidecar(name: str) -> bool:
    """Whether ``name`` is a job sidecar (never a candidate image)."""
    return name.lower().endswith(SUFFIX) and len(name) > len(SUFFIX)


def sidecar_name(image_name: str) -> str:
    """The sidecar name of an image: ``a.jpg`` -> ``a.jpg.artd.json``."""
    return image_name + SUFFIX


def image_name(name: str) -> str:
    """The image a sidecar belongs to: ``a.jpg.artd.json`` -> ``a.jpg``."""
    return name[: -len(SUFFIX)]


def read_bounded(path: Path | str) -> bytes:
    """A sidecar's bytes: a regular file reached without following a symlink, refused
    before reading when it is larger than :data:`MAX_BYTES`."""
    try:
        with durable.open_regular(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_BYTES:
                raise SidecarError(f"too large: {size} bytes (at most {MAX_BYTES})")
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise SidecarError(f"cannot be read: {exc.strerror or exc}") from exc
    if len(data) > MAX_BYTES:  # grew while being read
        raise SidecarError(f"too large: over {MAX_BYTES} bytes")
    return data


def nesting_depth(text: str) -> int:
    """The deepest ``[``/``{`` nesting of JSON text, strings skipped; linear, no recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse(data: bytes) -> dict[str, object]:
    """The sidecar's object; SidecarError for anything else (bad UTF-8 or JSON, too deep,
    not an object)."""
    if len(data) > MAX_BYTES:
        raise SidecarError(f"too large: {len(data)} bytes (at most {MAX_BYTES})")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SidecarError(f"not UTF-8 text (byte {exc.start})") from exc
    depth = nesting_depth(text)
    if depth > MAX_DEPTH:
        raise SidecarError(f"nested {depth} levels deep (settings are flat: at most {MAX_DEPTH})")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SidecarError(f"malformed JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise SidecarError(f"must be a JSON object of settings, not {type(value).__name__}")
    return value


def copy_in_progress(folder: Path, image: str, settle_s: float) -> bool:
    """Whether ``image``'s sidecar looks half-copied: a temporary name of it exists
    (``a.jpg.artd.json.part``...), or the sidecar itself changed within ``settle_s``."""
    name = sidecar_name(image)
    try:
        st = os.lstat(folder / name)
        if stat.S_ISREG(st.st_mode) and time.time() - st.st_mtime < settle_s:
            return True
    except OSError:
        pass
    return any(os.path.lexists(folder / f"{name}{tail}") for tail in _TEMP_TAILS)
