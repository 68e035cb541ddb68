"""Thumbnails of outputs and archived originals, made once and cached under the state folder.

The pixels come from the daemon's own safe decoder (core.images.decode through
daemon.decoders.DecoderPool), in a decoder process, so a hostile original that crashes or
hangs a decoder costs one thumbnail, never the daemon. The page keeps a pool of its own
(one worker, fit to the thumbnail size) rather than borrowing the pipeline's: a gallery
being browsed never takes a decode slot from the files being processed, and the decode
shrinks to the thumbnail's size (JPEG draft mode) whatever ``ARTD_RESIZE`` says.

The file is read through a descriptor the page opened without following symlinks
(web.paths) and copied to a private temporary file that the decoder opens: the decoder
never resolves a path someone else could swap. The cache (``.artd/page/thumbs/``) is
bounded in bytes; over the bound the least recently made files go first. Failures are
remembered (bounded) so that a file that cannot be decoded is not retried on every poll.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

from loguru import logger
from PIL import Image

from core import durable
from core.images.decode import ImageError
from daemon.decoders import DecoderPool, DecodeSettings

MAX_SOURCE_BYTES = 512 << 20
FAILURES_KEPT = 4096
SUFFIX = ".jpg"


class Thumbnails:
    """``get(key, fd)`` -> JPEG bytes of the image open at ``fd``, or None (module docstring)."""

    def __init__(
        self,
        folder: Path,
        *,
        size: int,
        max_bytes: int,
        max_pixels: int,
        background: tuple[int, int, int],
    ) -> None:
        self.folder = folder
        self.tmp = folder.parent / "tmp"
        self.max_bytes = max_bytes
        for path in (self.folder, self.tmp):
            path.mkdir(parents=True, exist_ok=True)
        for stale in os.scandir(self.tmp):  # left by a killed daemon
            with contextlib.suppress(OSError):
                os.unlink(stale.path)
        self._pool = DecoderPool(1, DecodeSettings(size, "fit", max_pixels, background))
        self._pool.start()
        self._lock = threading.Lock()
        self._making = threading.Lock()  # one thumbnail at a time: the page never hogs a CPU
        self._failed: OrderedDict[str, str] = OrderedDict()
        self._bytes = sum(e.stat().st_size for e in os.scandir(folder) if e.is_file())

    @staticmethod
    def key(area: str, rel: str, info: os.stat_result, size: int) -> str:
        """The cache name of one version of one file at one size."""
        text = f"{area}/{rel}|{info.st_mtime_ns}|{info.st_size}|{info.st_ino}|{size}"
        return hashlib.sha256(os.fsencode(text)).hexdigest()[:40]

    def get(self, key: str, fd: int) -> bytes | None:
        """The thumbnail (made now if not cached); None when the file cannot be decoded."""
        cached = self._read(key)
        if cached is not None:
            return cached
        with self._lock:
            if key in self._failed:
                return None
        with self._making:
            cached = self._read(key)  # made by a concurrent request meanwhile
            if cached is not None:
                return cached
            try:
                data = self._make(fd)
            except (ImageError, OSError, RuntimeError) as exc:
                self._remember_failure(key, str(exc))
                return None
            self._store(key, data)
            return data

    def _read(self, key: str) -> bytes | None:
        try:
            with durable.open_regular(self.folder / f"{key}{SUFFIX}") as handle:
                return handle.read()
        except OSError:
            return None

    def _make(self, fd: int) -> bytes:
        if os.fstat(fd).st_size > MAX_SOURCE_BYTES:
            raise OSError("larger than the thumbnail source limit")
        private = self.tmp / f"src-{secrets.token_hex(8)}"
        try:
            with os.fdopen(os.dup(fd), "rb") as src, open(private, "xb") as dst:
                src.seek(0)
                shutil.copyfileobj(src, dst, 1 << 20)
            pixels, _mtime = self._pool.decode(private)
        finally:
            private.unlink(missing_ok=True)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=82, optimize=True)
        return buf.getvalue()

    def _store(self, key: str, data: bytes) -> None:
        try:
            durable.write_atomic(self.folder / f"{key}{SUFFIX}", data)
        except OSError as exc:
            logger.warning("page: cannot cache a thumbnail: {}", exc)
            return
        with self._lock:
            self._bytes += len(data)
            over = self._bytes > self.max_bytes
        if over:
            self._evict()

    def _evict(self) -> None:
        """Remove the oldest thumbnails until the cache is at 80% of its bound."""
        entries = []
        for entry in os.scandir(self.folder):
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                entries.append((info.st_mtime, info.st_size, entry.path))
        entries.sort()
        total = sum(size for _, size, _ in entries)
        target = int(self.max_bytes * 0.8)
        for _, size, path in entries:
            if total <= target:
                break
            with contextlib.suppress(OSError):
                os.unlink(path)
                total -= size
        with self._lock:
            self._bytes = total

    def _remember_failure(self, key: str, why: str) -> None:
        logger.info("page: no thumbnail ({})", why)
        with self._lock:
            self._failed[key] = why
            while len(self._failed) > FAILURES_KEPT:
                self._failed.popitem(last=False)

    @property
    def cached_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def close(self) -> None:
        self._pool.close()
