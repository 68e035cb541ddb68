"""Intake: finds files dropped in the inbox and hands them out once they are settled.

A watchdog observer gives low latency (a file closed after writing is ready at once); a
periodic rescan is the source of truth (inotify drops events on overflow and sees nothing on
network shares). Settled means: closed after writing (or renamed into the inbox) and unchanged
since, or size and mtime unchanged for `settle_seconds`. See docs/spool.md, "Settling".
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
)
from watchdog.observers.api import BaseObserver

from daemon.inbox_observer import (
    Forwarder,
    dir_identity,
    observer_alive,
    start_observer,
    stop_observer,
)

MAX_TRACKED = 100_000  # beyond this, new paths wait for a later rescan (memory stays bounded)
EVENT_QUEUE_SIZE = 100_000  # a full queue means lost events: a rescan follows
HEALTH_CHECK_SECONDS = 0.5
EVENTS_PER_TICK = 1_000
_STOP = object()

_Stat = tuple[int, int]  # size, mtime_ns


@dataclass(slots=True)
class _Tracked:
    seq: int  # order of discovery: take() hands out the oldest first
    stat: _Stat  # the baseline a hand-out is checked against
    stable_since: float  # monotonic time of the last known change
    dirty: bool = False  # events reported writes after `stat` was taken
    ready: bool = False
    due: float | None = None  # time of this entry's one live item in the settle heap


def _stat(path: Path) -> _Stat | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


class Intake:
    """Tracks candidate files in `inbox` and hands out settled ones (see module docstring)."""

    def __init__(
        self,
        inbox: Path,
        *,
        is_candidate: Callable[[Path], bool],
        scan: Callable[[], Iterable[Path]],
        settle_seconds: float = 2.0,
        rescan_seconds: float = 10.0,
        polling: bool = False,
    ) -> None:
        self.inbox = Path(inbox)
        self._is_candidate = is_candidate
        self._scan = scan
        self._settle = settle_seconds
        self._fine = min(0.1, settle_seconds / 10)
        self._rescan_seconds = rescan_seconds
        self._polling = polling
        self.observer_restarts = 0

        self._cond = threading.Condition()  # guards everything below it
        self._tracked: dict[Path, _Tracked] = {}
        self._settle_heap: list[tuple[float, int, Path]] = []
        self._ready_heap: list[tuple[int, Path]] = []
        self._news = 0  # bumped when a path becomes ready; wait() compares with _news_seen
        self._news_seen = 0
        self._more_ready = False  # the last take() left ready paths behind
        self._seq = itertools.count()

        self._events: queue.Queue[object] = queue.Queue(EVENT_QUEUE_SIZE)
        self._events_lost = threading.Event()
        self._forwarder = Forwarder(self._events, self._events_lost)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: BaseObserver | None = None
        self._watched: tuple[int, int] | None = None  # the inbox the observer watches
        self._new_dirs: set[Path] = set()
        self._next_rescan = 0.0  # the first tick scans
        self._next_health = 0.0
        self._full_warned = False

    # ----- public API -----

    def start(self) -> None:
        if self._thread is not None or self._stopping.is_set():
            raise RuntimeError("an Intake starts once")
        # The observer first, so nothing written after start() is missed; the scan runs in
        # the intake thread and finds what was there before.
        if not self._start_observer():
            logger.warning("inbox {} not watchable yet; retrying while scanning", self.inbox)
        self._next_health = time.monotonic() + HEALTH_CHECK_SECONDS
        self._thread = threading.Thread(target=self._run, name="artd-intake", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._events.put_nowait(_STOP)
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._stop_observer()

    def wait(self, timeout: float) -> bool:
        """Block until paths became ready since the last wait() or take(); True on such news.

        News is reported once, so a caller that cannot take now is not spun by the same paths.
        A take() that filled its limit while more paths were ready counts as news too.
        """
        with self._cond:
            if not self._has_news() and not self._stopping.is_set():
                self._cond.wait(timeout)
            news = self._has_news()
            self._news_seen, self._more_ready = self._news, False
            return news

    def take(self, limit: int) -> list[Path]:
        """Up to `limit` settled paths, oldest first, each handed out once."""
        taken: list[Path] = []
        while len(taken) < limit:
            with self._cond:
                self._news_seen = self._news
                batch = self._pop_ready(limit - len(taken))
            if not batch:
                break
            for path, entry in batch:
                if not self._is_candidate(path):
                    continue
                st = _stat(path)
                if st == entry.stat:
                    taken.append(path)
                elif st is not None:
                    self._retrack_changed(path, entry, st)
        with self._cond:
            self._more_ready = len(taken) >= limit and bool(self._ready_heap)
        return taken

    def pending(self) -> int:
        with self._cond:
            return sum(1 for entry in self._tracked.values() if not entry.ready)

    @property
    def healthy(self) -> bool:
        observer = self._observer
        thread_ok = self._thread is not None and self._thread.is_alive()
        return thread_ok and observer is not None and observer_alive(observer)

    # ----- the intake thread -----

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._tick()
            except Exception:
                logger.exception("intake: unexpected error; carrying on")
                self._stopping.wait(0.5)

    def _tick(self) -> None:
        now = time.monotonic()
        with self._cond:
            next_due = self._settle_heap[0][0] if self._settle_heap else now + 1.0
        timeout = min(next_due, self._next_rescan, self._next_health, now + 1.0) - now
        try:
            first = self._events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            first = None
        self._pump(first)
        now = time.monotonic()
        if self._events_lost.is_set() or now >= self._next_rescan:
            self._rescan()
        if now >= self._next_health:
            self._check_observer()

    def _pump(self, first: object = None) -> None:
        """Handle queued events, new folders and due settle checks, without blocking."""
        item = first
        for _ in range(EVENTS_PER_TICK):
            if item is None:
                try:
                    item = self._events.get_nowait()
                except queue.Empty:
                    break
            if isinstance(item, FileSystemEvent):
                self._on_event(item)
            item = None
        while self._new_dirs and not self._stopping.is_set():
            self._scan_dir(self._new_dirs.pop())
        self._check_due()

    def _on_event(self, event: FileSystemEvent) -> None:
        src = Path(os.fsdecode(event.src_path)) if event.src_path else None
        dest = Path(os.fsdecode(event.dest_path)) if event.dest_path else None
        if isinstance(event, FileMovedEvent):
            if src is not None:
                self._forget(src)
            if dest is not None:  # renamed within or moved into the inbox: complete
                self._track(dest, complete=True)
        elif isinstance(event, FileClosedEvent) and src is not None:
            self._track(src, complete=True)
        elif isinstance(event, FileCreatedEvent) and src is not None:
            self._track(src)
        elif isinstance(event, FileModifiedEvent) and src is not None:
            self._touch(src)
        elif isinstance(event, FileDeletedEvent) and src is not None:
            self._forget(src)
        elif isinstance(event, DirCreatedEvent | DirMovedEvent):
            # Files created before inotify watched the new folder are only seen by a scan.
            folder = dest if isinstance(event, DirMovedEvent) else src
            if folder is not None:
                self._new_dirs.add(folder)
        elif isinstance(event, DirDeletedEvent) and src == self.inbox:
            self._next_health = 0.0

    def _track(self, path: Path, *, complete: bool = False, only_new: bool = False) -> None:
        with self._cond:
            known = path in self._tracked
            if not known and len(self._tracked) >= MAX_TRACKED:
                if not self._full_warned:
                    logger.warning("intake tracks {} files; newer ones wait", MAX_TRACKED)
                    self._full_warned = True
                return
            if known and only_new:
                return
        st = _stat(path) if self._is_candidate(path) else None
        now = time.monotonic()
        with self._cond:
            if st is None:
                self._tracked.pop(path, None)
                return
            entry = self._tracked.get(path)
            if entry is None:
                entry = self._tracked[path] = _Tracked(next(self._seq), st, now)
            entry.stat, entry.dirty = st, False
            # An empty file at close is often a placeholder its writer reopens: let it settle.
            if complete and st[0] > 0:
                self._set_ready(path, entry)
            else:
                entry.ready, entry.stable_since = False, now
                self._schedule(path, entry, now + self._settle)

    def _touch(self, path: Path) -> None:
        now = time.monotonic()
        with self._cond:
            entry = self._tracked.get(path)
            if entry is not None:  # untracked: rejected, or left for the rescan
                entry.ready, entry.dirty, entry.stable_since = False, True, now
                self._schedule(path, entry, now + self._settle)

    def _forget(self, path: Path) -> None:
        with self._cond:
            self._tracked.pop(path, None)

    def _check_due(self) -> None:
        now = time.monotonic()
        due: list[Path] = []
        with self._cond:
            while self._settle_heap and self._settle_heap[0][0] <= now:
                when, seq, path = heapq.heappop(self._settle_heap)
                entry = self._tracked.get(path)
                if entry is not None and entry.seq == seq and entry.due == when:
                    entry.due = None
                    if not entry.ready:
                        due.append(path)
        for path in due:
            st = _stat(path)
            now = time.monotonic()
            with self._cond:
                entry = self._tracked.get(path)
                if entry is None or entry.ready or entry.due is not None:
                    continue  # handed out, or an event rescheduled it meanwhile
                if st is None:
                    del self._tracked[path]
                    continue
                # A change no event explained (network share): poll finely to see it end.
                unexplained = st != entry.stat and not entry.dirty
                if unexplained:
                    entry.stable_since = now
                entry.stat, entry.dirty = st, False
                settled_at = entry.stable_since + self._settle
                if now >= settled_at:
                    self._set_ready(path, entry)
                else:
                    self._schedule(path, entry, now + self._fine if unexplained else settled_at)

    def _rescan(self) -> None:
        self._events_lost.clear()
        try:
            for count, path in enumerate(self._scan()):
                if self._stopping.is_set():
                    return
                self._track(Path(path), only_new=True)
                if count % 256 == 255:
                    self._pump()  # a long scan must not stall events and settle checks
        except OSError as exc:
            logger.warning("inbox scan failed: {}", exc)
        finally:
            self._next_rescan = time.monotonic() + self._rescan_seconds
            self._full_warned = False

    def _scan_dir(self, folder: Path) -> None:
        with contextlib.suppress(ValueError):
            if any(part.startswith(".") for part in folder.relative_to(self.inbox).parts):
                return  # hidden folders are skipped, as the scan skips them
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if not name.startswith("."):
                    self._track(Path(root, name), only_new=True)

    # ----- helpers (the _locked ones need self._cond held) -----

    def _has_news(self) -> bool:
        return self._news != self._news_seen or self._more_ready

    def _schedule(self, path: Path, entry: _Tracked, when: float) -> None:
        if entry.due is not None and entry.due <= when:
            return  # the earlier check reschedules from stable_since
        entry.due = when
        heapq.heappush(self._settle_heap, (when, entry.seq, path))

    def _set_ready(self, path: Path, entry: _Tracked) -> None:
        if not entry.ready:
            entry.ready = True
            heapq.heappush(self._ready_heap, (entry.seq, path))
            self._news += 1
            self._cond.notify_all()

    def _pop_ready(self, limit: int) -> list[tuple[Path, _Tracked]]:
        out: list[tuple[Path, _Tracked]] = []
        while self._ready_heap and len(out) < limit:
            seq, path = heapq.heappop(self._ready_heap)
            entry = self._tracked.get(path)
            if entry is not None and entry.seq == seq and entry.ready:
                del self._tracked[path]
                out.append((path, entry))
        return out

    def _retrack_changed(self, path: Path, entry: _Tracked, st: _Stat) -> None:
        """A path found changed at hand-out: its writer is still at work, so settle again."""
        now = time.monotonic()
        with self._cond:
            if path in self._tracked:
                return  # an event already tracks it afresh
            entry.stat, entry.dirty, entry.ready, entry.due = st, False, False, None
            entry.stable_since = now
            self._tracked[path] = entry
            self._schedule(path, entry, now + self._settle)

    # ----- the observer -----

    def _start_observer(self) -> bool:
        identity = dir_identity(self.inbox)
        if identity is None:
            return False
        observer = start_observer(self.inbox, self._forwarder, polling=self._polling)
        if observer is None:
            return False
        self._observer, self._watched = observer, identity
        return True

    def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            stop_observer(observer)

    def _check_observer(self) -> None:
        self._next_health = time.monotonic() + HEALTH_CHECK_SECONDS
        observer = self._observer
        identity = dir_identity(self.inbox)
        if observer is not None and observer_alive(observer) and identity == self._watched:
            return
        first = observer is None and self.observer_restarts == 0 and self._watched is None
        self._stop_observer()
        # A missing inbox is the spool's to re-create; until then the rescan keeps trying.
        if identity is not None and self._start_observer():
            if not first:
                self.observer_restarts += 1
                logger.warning("inbox observer restarted (restart {})", self.observer_restarts)
            self._events_lost.set()  # whatever happened while unwatched: rescan now
