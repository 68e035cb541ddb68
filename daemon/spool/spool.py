"""The :class:`Spool` the daemon uses: its folders, its instance lock, the inbox, and the
claim / commit / quarantine / recover operations (done by machine.py and recovery.py)."""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from loguru import logger

from core import durable
from daemon import sidecars
from daemon.spool import crash_points, folders
from daemon.spool.errors import InstanceLockedError, SpoolError
from daemon.spool.folders import Layout, kind, locate
from daemon.spool.names import INSTANCE_RE, SUFFIX_RE, is_temporary_name
from daemon.spool.records import Claim
from daemon.spool.recovery import Recovery
from daemon.spool.transitions import Machine, Resolve

EMPTY_DIR_GRACE_SECONDS = 60.0
# A restarting instance may meet a peer's adopt_stale() probing its lock for an instant.
LOCK_WAIT_SECONDS = 1.0


class Spool:
    """The folders under ``root`` and the moves between them, for one instance name."""

    def __init__(
        self,
        root: Path,
        instance: str,
        *,
        output_ext: str = ".png",
        keep_originals: bool = True,
        resolve: Resolve | None = None,
    ) -> None:
        if not INSTANCE_RE.fullmatch(instance):
            raise SpoolError(f"instance name {instance!r}: use letters, digits, '.', '_', '-'")
        ext = output_ext if output_ext.startswith(".") else f".{output_ext}"
        if not SUFFIX_RE.fullmatch(ext):
            raise SpoolError(f"output extension {output_ext!r} is not a plain file extension")
        layout = Layout.of(Path(os.path.realpath(root)), instance)
        self.instance = instance
        self.output_ext = ext
        self.keep_originals = keep_originals
        # The folders callers use; the rest of the layout is the collaborators' business.
        self.root, self.inbox, self.outbox = layout.root, layout.inbox, layout.outbox
        self.quarantine_dir, self.archive = layout.quarantine, layout.archive
        self.state, self.work_dir = layout.state, layout.work
        self._layout = layout
        self._lock_fd: int | None = None
        # resolve: each claim's settings, fixed in its record (daemon.settings.jobs.Resolver).
        self._machine = Machine(layout, instance, ext, keep_originals, resolve)
        self._recovery = Recovery(self._machine)

    # --- set-up ------------------------------------------------------------------------

    def prepare_folders(self) -> None:
        """Create the folders; refuse symlinks, other filesystems and folders we cannot write."""
        folders.create_folders(self._layout)

    def prepare(self) -> None:
        """prepare_folders(), then hold the instance lock for the life of this process."""
        if self._lock_fd is not None:
            return
        self.prepare_folders()
        path = self._layout.locks / f"{self.instance}.lock"
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while (fd := folders.try_lock(path)) is None:
            if time.monotonic() > deadline:
                try:  # SMB's byte-range locks are mandatory: the holder may be unreadable
                    holder = path.read_text(errors="replace").strip() or "?"
                except OSError:
                    holder = "?"
                raise InstanceLockedError(
                    f"instance {self.instance!r} is in use by a live process ({holder}, "
                    f"lock {path}); give each daemon on this root its own instance name"
                )
            time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode())
        self._lock_fd = fd
        self.work_dir.mkdir(exist_ok=True)
        if not stat.S_ISDIR(os.lstat(self.work_dir).st_mode):
            self.close()
            raise SpoolError(f"{self.work_dir} is not a folder")
        self.heartbeat()

    def close(self) -> None:
        """Release the instance lock; claims stay on disk for the next start."""
        if self._lock_fd is None:
            return
        try:
            folders.unlock(self._lock_fd)
        finally:
            self._lock_fd = None
            self._machine.active.clear()

    def __enter__(self) -> Spool:
        self.prepare()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def heartbeat(self) -> None:
        """Touch ``.artd/heartbeats/<instance>`` (what operators and peers read as liveness)."""
        folders.touch(self._layout.heartbeats / self.instance)

    def can_write(self, folder: Path) -> bool:
        """Whether a file can be created in ``folder`` now (full, read-only or failing disks
        and missing permissions cannot)."""
        return folders.can_write(folder)

    # --- the inbox ----------------------------------------------------------------------

    def is_candidate(self, path: Path) -> bool:
        """A settled-looking regular file inside the inbox, reached without any symlink."""
        located = locate(self.inbox, path)
        if located is None:
            return False
        path, rel = located
        if any(part.startswith(".") for part in rel.parts) or is_temporary_name(rel.name):
            return False
        if sidecars.is_sidecar(rel.name):
            return False  # moves with its image, never claimed as one
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return False
        warn_once = self._machine.warn_once
        if not stat.S_ISREG(mode):
            warn_once(str(path), f"not taking {path}: a {kind(mode)} is never followed")
            return False
        if os.path.realpath(path.parent) != str(path.parent):
            warn_once(str(path), f"not taking {path}: reached through a symlinked folder")
            return False
        return True

    def scan_inbox(self) -> Iterator[Path]:
        """Every candidate, depth first, never descending into dot or symlinked folders."""
        stack = [self.inbox]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                self._machine.warn_once(str(folder), f"cannot list {folder}: {exc}")
                continue
            subfolders = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(Path(entry.path))
                elif self.is_candidate(Path(entry.path)):
                    yield Path(entry.path)
            stack.extend(reversed(subfolders))

    def remove_empty_dirs(
        self, older_than: float = EMPTY_DIR_GRACE_SECONDS, keep: frozenset[str] = frozenset()
    ) -> None:
        """Remove inbox sub-folders that are empty and were not changed for ``older_than`` s
        (but the top-level folders named in ``keep``: the presets')."""
        folders.prune_empty(str(self.inbox), time.time() - older_than, keep)

    def sweep_orphan_sidecars(self, older_than: float) -> int:
        """Delete job sidecars in the inbox whose image has not existed for ``older_than``
        s (the sidecar's age); the number deleted. Folders are walked as the scan walks them."""
        cutoff, removed = time.time() - older_than, 0
        stack = [self.inbox]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = list(it)
            except OSError:
                continue
            names = {entry.name for entry in entries}
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif sidecars.is_sidecar(entry.name) and (
                    sidecars.image_name(entry.name) not in names
                ):
                    try:
                        old = entry.stat(follow_symlinks=False).st_mtime < cutoff
                        if old and not os.path.lexists(folder / sidecars.image_name(entry.name)):
                            logger.warning("removing {}: its image never came", entry.path)
                            crash_points.step("sidecar-orphan:unlink")
                            os.unlink(entry.path)
                            removed += 1
                    except FileNotFoundError:
                        continue
        return removed

    # --- claims -------------------------------------------------------------------------

    def claim(self, path: Path) -> Claim | None:
        """Move a candidate into work/; None if it is not one, vanished, or a peer won.

        Raises OSError (errno in DISK_ERRNOS) when the disk refuses the claim: full, read-only,
        failing. The file is then still in the inbox, or claimed and left for ``recover()``."""
        self._require_lock()
        located = locate(self.inbox, path)
        if located is None or not self.is_candidate(located[0]):
            return None
        return self._machine.take(*located)

    def release(self, claim: Claim) -> None:
        """Hand a claim back unfinished (e.g. disk full). Nothing moves: the file stays claimed
        in work/. The caller may still commit or quarantine this Claim later (a retry); if it
        never does, the next start's recover() resumes it. recover()/adopt_stale() in this
        process do not return it, so a retry and a recovery never process one file twice."""
        logger.debug("claim {} ({}) released for a later retry", claim.id, claim.rel_path)

    def open_claim(self, claim: Claim) -> BinaryIO:
        """The claimed original, read-only; OSError if it is not a regular file (never follows)."""
        return durable.open_regular(claim.work_path)

    def commit(self, claim: Claim, data: bytes) -> Path:
        """Publish ``data`` as the claim's output, then archive (or delete) the original.

        Raises DisposeError when the output is published but archiving failed."""
        self._require_lock()
        return self._machine.commit(claim, data)

    def quarantine(
        self, claim: Claim, reason: str, message: str, details: dict | None = None
    ) -> Path:
        """Move the original to ``quarantine/`` beside its ``.error.json``; returns its path.

        ``reason`` is a :class:`core.reasons.Reason`."""
        self._require_lock()
        return self._machine.quarantine(claim, reason, message, details)

    # --- restart ------------------------------------------------------------------------

    def recover(self) -> list[Claim]:
        """Finish or resume this instance's leftovers; each resumed claim is charged one
        interruption, and a solo crash if it was alone in the model (docs/spool.md)."""
        self._require_lock()
        return self._recovery.recover()

    def adopt_stale(self) -> list[Claim]:
        """Take over the work of instances whose lock is free (dead), then as recover()."""
        self._require_lock()
        return self._recovery.adopt_stale()

    def _require_lock(self) -> None:
        if self._lock_fd is None:
            raise SpoolError(f"spool {self.root} instance {self.instance!r}: call prepare() first")
