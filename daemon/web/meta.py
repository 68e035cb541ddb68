"""What an output says about itself (model, settings, sampler), read without decoding it.

For PNG (the default output) the text chunks are walked directly, seeking past the image
data, so a page of 24 results costs a few small reads, not 24 decodes. JPEG and WebP go
through core.outputs.encoding.read_metadata. Results are cached by (path, mtime, size) in a
bounded LRU; any problem gives ``{}``: metadata is shown, never trusted for anything.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from collections import OrderedDict

from core.outputs.encoding import read_metadata

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT_CHUNK = 1 << 20
MAX_CHUNKS = 10_000
MAX_OTHER_BYTES = 64 << 20
CACHE_ITEMS = 4096
SHOWN = ("artd:model", "artd:model_epoch", "artd:objective", "artd:created", "Software")


def _png_text(handle) -> dict[str, str]:
    if handle.read(8) != PNG_SIGNATURE:
        return {}
    found: dict[str, str] = {}
    for _ in range(MAX_CHUNKS):
        head = handle.read(8)
        if len(head) < 8:
            break
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IEND":
            break
        if kind in (b"tEXt", b"iTXt", b"zTXt") and length <= MAX_TEXT_CHUNK:
            _text_chunk(kind, handle.read(length), found)
            handle.seek(4, os.SEEK_CUR)
        else:
            handle.seek(length + 4, os.SEEK_CUR)
    return found


def _text_chunk(kind: bytes, data: bytes, found: dict[str, str]) -> None:
    key, _, rest = data.partition(b"\x00")
    name = key.decode("latin-1")
    if kind == b"tEXt":
        found[name] = rest.decode("latin-1")
    elif kind == b"zTXt":
        found[name] = zlib.decompressobj().decompress(rest[1:], MAX_TEXT_CHUNK).decode("latin-1")
    else:  # iTXt: flag, method, language\0, translated keyword\0, text
        compressed, rest = rest[0], rest[2:]
        _lang, _, rest = rest.partition(b"\x00")
        _translated, _, text = rest.partition(b"\x00")
        if compressed:
            text = zlib.decompressobj().decompress(text, MAX_TEXT_CHUNK)
        found[name] = text.decode("utf-8", errors="replace")


def read_fd(fd: int) -> dict[str, str]:
    """The metadata of the output open at ``fd`` (left open); {} when none or unreadable."""
    try:
        with os.fdopen(os.dup(fd), "rb") as handle:
            head = handle.read(8)
            handle.seek(0)
            if head == PNG_SIGNATURE:
                return _png_text(handle)
            if os.fstat(fd).st_size > MAX_OTHER_BYTES:
                return {}
            return read_metadata(handle.read())
    except Exception:
        return {}


def summary(fields: dict[str, str]) -> dict[str, object]:
    """The fields the page shows: model, epoch, objective, created, settings, sampler."""
    out: dict[str, object] = {k.removeprefix("artd:"): fields[k] for k in SHOWN if k in fields}
    for key in ("artd:settings", "artd:sampler"):
        if key in fields:
            try:
                out[key.removeprefix("artd:")] = json.loads(fields[key])
            except ValueError:
                out[key.removeprefix("artd:")] = fields[key]
    return out


class MetaCache:
    """``summary`` of outputs by (rel, mtime, size), the newest ``CACHE_ITEMS`` kept."""

    def __init__(self, items: int = CACHE_ITEMS) -> None:
        self._items = items
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, float, int], dict[str, object]] = OrderedDict()

    def get(self, key: tuple[str, float, int], fd_opener) -> dict[str, object]:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            fd = fd_opener()
        except OSError:
            return {}
        try:
            value = summary(read_fd(fd))
        finally:
            os.close(fd)
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > self._items:
                self._cache.popitem(last=False)
        return value
