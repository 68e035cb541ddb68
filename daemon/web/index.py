"""The outbox and quarantine listings, newest first, without listing a folder per request.

A :class:`FolderIndex` remembers, per sub-folder, its modification time and its entries.
A refresh (at most every ``min_interval_s``, whatever the request rate) stats the folders it
knows and re-reads only those whose modification time changed, so 10,000 outputs cost one
``stat`` per folder per refresh, not 10,000. The work is bounded: at most ``max_entries``
files and ``max_folders`` folders are kept (the rest is left out and logged once), so the
daemon's memory does not grow with the outbox. Dot-names (the spool's temporary files) are
skipped, symlinks are never followed.
"""

from __future__ import annotations

import bisect
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

MAX_ENTRIES = 200_000
MAX_FOLDERS = 20_000


@dataclass(frozen=True, slots=True)
class Entry:
    """One file: its path relative to the indexed folder, modification time and size."""

    rel: str
    mtime: float
    size: int


@dataclass(slots=True)
class _Folder:
    mtime_ns: int
    files: list[Entry]
    subfolders: list[str]


class FolderIndex:
    """A folder's files, newest first (module docstring); thread-safe."""

    def __init__(
        self,
        base: str | os.PathLike[str],
        *,
        keep: Callable[[str], bool] = lambda name: True,
        min_interval_s: float = 2.0,
        max_entries: int = MAX_ENTRIES,
        max_folders: int = MAX_FOLDERS,
    ) -> None:
        self.base = os.fspath(base)
        self._keep = keep
        self._min_interval_s = min_interval_s
        self._max_entries = max_entries
        self._max_folders = max_folders
        self._lock = threading.Lock()
        self._folders: dict[str, _Folder] = {}
        self._newest: list[Entry] = []  # newest first
        self._keys: list[float] = []  # -mtime of each, ascending, for bisect
        self._refreshed = float("-inf")
        self._warned = False

    def entries(self) -> list[Entry]:
        """Every indexed file, newest first (the list is shared: do not modify it)."""
        self.refresh()
        return self._newest

    def since(self, when: float) -> list[Entry]:
        """The files modified at or after ``when`` (Unix time), newest first."""
        self.refresh()
        newest, keys = self._newest, self._keys
        return newest[: bisect.bisect_right(keys, -when)]

    def refresh(self, force: bool = False) -> None:
        """Re-read the folders that changed, at most every ``min_interval_s``."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._refreshed < self._min_interval_s:
                return
            self._refreshed = now
            if self._walk():
                files = [e for folder in self._folders.values() for e in folder.files]
                files.sort(key=lambda e: (-e.mtime, e.rel))
                if len(files) > self._max_entries:
                    self._warn(f"more than {self._max_entries} files")
                    del files[self._max_entries :]
                self._newest, self._keys = files, [-e.mtime for e in files]

    def _walk(self) -> bool:
        """Update the folders under base; True when anything changed."""
        changed = False
        seen: set[str] = set()
        pending = [""]
        while pending:
            rel = pending.pop()
            if len(seen) >= self._max_folders:
                self._warn(f"more than {self._max_folders} folders")
                break
            seen.add(rel)
            path = os.path.join(self.base, rel) if rel else self.base
            try:
                info = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISDIR(info.st_mode):
                continue
            known = self._folders.get(rel)
            if known is None or known.mtime_ns != info.st_mtime_ns:
                known = self._list(rel, path, info.st_mtime_ns)
                self._folders[rel] = known
                changed = True
            pending.extend(known.subfolders)
        for gone in set(self._folders) - seen:
            del self._folders[gone]
            changed = True
        return changed

    def _list(self, rel: str, path: str, mtime_ns: int) -> _Folder:
        files: list[Entry] = []
        subfolders: list[str] = []
        try:
            with os.scandir(path) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    child = f"{rel}/{entry.name}" if rel else entry.name
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(info.st_mode):
                        subfolders.append(child)
                    elif stat.S_ISREG(info.st_mode) and self._keep(entry.name):
                        files.append(Entry(child, info.st_mtime, info.st_size))
                    if len(files) > self._max_entries:
                        self._warn(f"more than {self._max_entries} files in {path}")
                        break
        except OSError as exc:
            logger.debug("page: cannot list {}: {}", path, exc)
        return _Folder(mtime_ns, files, subfolders)

    def _warn(self, what: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("page: {} under {}; the page shows the newest only", what, self.base)


def per_minute(entries: list[Entry], now: float, minutes: int = 60) -> list[int]:
    """Counts of ``entries`` (newest first) per minute over the last ``minutes``, oldest
    minute first: the throughput chart."""
    counts = [0] * minutes
    start = now - minutes * 60
    for entry in entries:
        if entry.mtime < start:
            break
        slot = min(minutes - 1, int((entry.mtime - start) // 60))
        counts[slot] += 1
    return counts
