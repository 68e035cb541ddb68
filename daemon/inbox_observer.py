"""The inbox's watchdog observer: which events are watched, and their hand-off to the intake.

The observer only lowers latency; the intake's periodic rescan is the source of truth
(docs/spool.md, "Which inbox files are taken"). Its thread only queues events: the intake
thread (daemon.intake) does the work.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
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
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

# Opens, reads and attribute changes are left out: they say nothing about completeness.
WANTED_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]

# watchdog holds every event queued behind an unpaired IN_MOVED_FROM for this long (0.5 s by
# default) hoping for its IN_MOVED_TO. Every claim is a rename out of the inbox, so the default
# would delay close events by up to half a second; the kernel queues both halves of a rename
# together, and an unpaired half means the same to us (forget the source, track the target).
MOVE_PAIRING_SECONDS = 0.02
with contextlib.suppress(Exception):  # not on Linux: no inotify
    from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

    InotifyMoveEventGrouper.delay = MOVE_PAIRING_SECONDS


class Forwarder(FileSystemEventHandler):
    """Runs on watchdog's thread, so it only queues: the intake thread does the work."""

    def __init__(self, events: queue.Queue[object], lost: threading.Event) -> None:
        self._events = events
        self._lost = lost

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._events.put_nowait(event)
        except queue.Full:
            self._lost.set()


def dir_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a folder, to notice an inbox deleted and made again; None if gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _make_observer(polling: bool) -> BaseObserver:
    if polling:
        return PollingObserver()
    if Observer.__name__ == "InotifyObserver":
        # Full events turn `mv` from outside the inbox into a move (complete), not a create.
        return Observer(generate_full_events=True)  # type: ignore[call-arg]
    return Observer()


def start_observer(inbox: Path, forwarder: Forwarder, *, polling: bool) -> BaseObserver | None:
    """An observer of ``inbox`` and everything below it, started; None when it cannot watch."""
    observer = _make_observer(polling)
    try:
        observer.schedule(forwarder, os.fspath(inbox), recursive=True, event_filter=WANTED_EVENTS)
        observer.start()
    except OSError as exc:
        logger.warning("cannot watch {}: {}", inbox, exc)
        with contextlib.suppress(Exception):
            observer.stop()
        return None
    return observer


def stop_observer(observer: BaseObserver) -> None:
    with contextlib.suppress(Exception):
        observer.stop()
        observer.join(timeout=5.0)


def observer_alive(observer: BaseObserver) -> bool:
    # Emitters stop on their own when the watched folder is deleted; the observer does not.
    emitters = list(observer.emitters)
    return observer.is_alive() and bool(emitters) and all(e.is_alive() for e in emitters)
