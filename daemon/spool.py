"""The spool: the daemon's on-disk state machine (DESIGN.md, "The spool").

Every input is in exactly one place at every instant and every move is a rename on one
filesystem, so a ``kill -9`` anywhere leaves a state that ``recover()`` finishes::

    inbox/<rel> --claim--> .artd/work/<instance>/<id><suffix> + <id>.json (the record)
                --commit--> outbox/<rel><ext> final, record "committed", original -> archive/
                --quarantine--> quarantine/<rel> + <rel>.error.json

Record states, each written atomically *before* the move it announces:

- ``claiming``: intent, written before the rename out of the inbox (keeps the relative path);
- ``claimed``: the file is ours, hashed, its output name reserved;
- ``committed``: the output is final; archiving the original and clean-up remain;
- ``quarantining``: reason and quarantine name fixed; sidecar and move remain.

Output, archive and quarantine names are reserved in ``.artd/reserved/`` (``O_EXCL``) so that
racing instances never pick one name. Nothing here follows a symlink (lstat, ``O_NOFOLLOW``,
folders checked one component at a time) and nothing outside ``root`` is written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from loguru import logger

STATE_DIR = ".artd"
TEMP_MARK = ".artd-tmp-"
SIDECAR_SUFFIX = ".error.json"
STALE_TEMP_SECONDS = 3600.0
EMPTY_DIR_GRACE_SECONDS = 60.0
# A restarting instance may meet a peer's adopt_stale() probing its lock for an instant.
LOCK_WAIT_SECONDS = 1.0
_TEMP_SUFFIXES = (".part", ".partial", ".crdownload", ".download", ".tmp", ".temp", ".swp")
_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})
_INSTANCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ID_RE = re.compile(r"\d{20}-[0-9a-f]{8}")
_ID_LEN = 29
_SUFFIX_RE = re.compile(r"\.[A-Za-z0-9]{1,10}")
_MAX_NAME_TRIES = 10_000
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_STATES = ("claiming", "claimed", "committed", "quarantining")


class SpoolError(Exception):
    """The spool's folders are misconfigured or unusable; the message names the folder."""


class InstanceLockedError(SpoolError):
    """The instance name is held by another live process."""


@dataclass
class Claim:
    """A file taken out of the inbox; the record ``<id>.json`` beside it persists these fields."""

    id: str
    work_path: Path
    rel_path: PurePosixPath
    size: int
    sha256: str
    attempts: int
    output_rel: PurePosixPath
    claimed_at: float


def new_claim_id() -> str:
    """Time-ordered (sorts by creation) and unique across processes and hosts."""
    return f"{time.time_ns():020d}-{secrets.token_hex(4)}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, temp: Path) -> None:
    """temp (same folder) -> fsync -> rename -> fsync folder: readers see old or new, never half."""
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def open_regular(path: Path) -> BinaryIO:
    """Open for reading without following a symlink or blocking on a FIFO; regular files only."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return os.fdopen(fd, "rb")


def is_temporary_name(name: str) -> bool:
    """Names that are still being written, or system junk: never taken."""
    lower = name.lower()
    return name.startswith((".", "~$")) or lower in _JUNK_NAMES or lower.endswith(_TEMP_SUFFIXES)


def _temp_name(name: str, claim_id: str) -> str:
    short = name.encode()[:150].decode(errors="ignore")  # the mark must fit in NAME_MAX
    return f".{short}{TEMP_MARK}{claim_id}"


def _numbered(name: str, n: int) -> str:
    """``a.jpg``, ``a (2).jpg``, ... (archive and quarantine keep the input's extension last)."""
    if n == 1:
        return name
    p = PurePosixPath(name)
    return f"{p.stem} ({n}){p.suffix}"


def _kind(mode: int) -> str:
    kinds = {stat.S_ISLNK: "symlink", stat.S_ISDIR: "folder", stat.S_ISFIFO: "FIFO"}
    kinds |= {stat.S_ISSOCK: "socket", stat.S_ISCHR: "device", stat.S_ISBLK: "device"}
    return next((name for test, name in kinds.items() if test(mode)), "special file")


def _safe_rel(value: object) -> PurePosixPath | None:
    rel = PurePosixPath(str(value))
    if not isinstance(value, str) or rel.is_absolute() or not rel.parts:
        return None
    return None if any(p in ("", ".", "..") for p in rel.parts) else rel


def _reserved_keys(record: dict[str, Any]) -> Iterator[str]:
    """The reservation keys a claim record holds: ``<area>/<relative path>``."""
    for area, field in (("outbox", "output_rel"), ("archive", "archive_rel")):
        if field in record:
            yield f"{area}/{record[field]}"
    if "quarantine_rel" in record:
        yield f"quarantine/{record['quarantine_rel']}"


def _reservation_owner(path: Path) -> tuple[str, str] | None:
    """``(instance, claim id)`` of a reservation, None if it is not one."""
    try:
        instance, _, claim_id = os.readlink(path).partition("/")
    except OSError:
        return None
    return (instance, claim_id) if _ID_RE.fullmatch(claim_id) else None


class Spool:
    """The folders under ``root`` and the moves between them, for one instance name."""

    def __init__(
        self, root: Path, instance: str, *, output_ext: str = ".png", keep_originals: bool = True
    ) -> None:
        if not _INSTANCE_RE.fullmatch(instance):
            raise SpoolError(f"instance name {instance!r}: use letters, digits, '.', '_', '-'")
        ext = output_ext if output_ext.startswith(".") else f".{output_ext}"
        if not _SUFFIX_RE.fullmatch(ext):
            raise SpoolError(f"output extension {output_ext!r} is not a plain file extension")
        self.root = Path(os.path.realpath(root))
        self.instance = instance
        self.output_ext = ext
        self.keep_originals = keep_originals
        self.inbox = self.root / "inbox"
        self.outbox = self.root / "outbox"
        self.quarantine_dir = self.root / "quarantine"
        self.archive = self.root / "archive"
        self.state = self.root / STATE_DIR
        self.work_dir = self.state / "work" / instance
        self._locks = self.state / "locks"
        self._reserved = self.state / "reserved"
        self._heartbeats = self.state / "heartbeats"
        self._lock_fd: int | None = None
        # Claims owned by the caller right now: recover()/adopt never hand them out again.
        self._active: set[str] = set()
        self._reported: set[str] = set()

    # --- set-up ------------------------------------------------------------------------

    def prepare_folders(self) -> None:
        """Create the folders; refuse symlinks, other filesystems and folders we cannot write."""
        folders = [self.root, self.inbox, self.outbox, self.quarantine_dir, self.archive]
        folders += [self.state, self.state / "work", self._locks, self._reserved, self._heartbeats]
        for folder in folders:
            try:
                folder.mkdir(parents=folder == self.root, exist_ok=True)
                mode = os.lstat(folder).st_mode
            except OSError as exc:
                raise SpoolError(f"cannot create folder {folder}: {exc}") from exc
            if not stat.S_ISDIR(mode):
                raise SpoolError(f"{folder} is a {_kind(mode)}; spool folders must be real folders")
        root_dev = os.lstat(self.root).st_dev
        foreign = [str(f) for f in folders if os.lstat(f).st_dev != root_dev]
        if foreign:
            raise SpoolError(
                f"spool folders must be on the filesystem of {self.root} (moves are renames); "
                f"on another one: {', '.join(foreign)}"
            )
        unwritable = [str(f) for f in folders[1:] if not self._can_write(f)]
        if unwritable:
            raise SpoolError(f"cannot write in folder(s): {', '.join(unwritable)}")

    def prepare(self) -> None:
        """prepare_folders(), then hold the instance lock for the life of this process."""
        if self._lock_fd is not None:
            return
        self.prepare_folders()
        path = self._locks / f"{self.instance}.lock"
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while (fd := self._try_lock(path)) is None:
            if time.monotonic() > deadline:
                holder = path.read_text(errors="replace").strip() or "?"
                raise InstanceLockedError(
                    f"instance {self.instance!r} is in use by a live process (pid {holder}, "
                    f"lock {path}); give each daemon on this root its own instance name"
                )
            time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
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
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            os.close(self._lock_fd)
            self._lock_fd = None
            self._active.clear()

    def __enter__(self) -> Spool:
        self.prepare()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def heartbeat(self) -> None:
        """Touch ``.artd/heartbeats/<instance>`` (what operators and peers read as liveness)."""
        fd = os.open(self._heartbeats / self.instance, os.O_WRONLY | os.O_CREAT | _NOFOLLOW, 0o644)
        try:
            os.utime(fd)
        finally:
            os.close(fd)

    # --- the inbox ----------------------------------------------------------------------

    def is_candidate(self, path: Path) -> bool:
        """A settled-looking regular file inside the inbox, reached without any symlink."""
        located = self._locate(path)
        if located is None:
            return False
        path, rel = located
        if any(part.startswith(".") for part in rel.parts) or is_temporary_name(rel.name):
            return False
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return False
        if not stat.S_ISREG(mode):
            self._report_once(str(path), f"not taking {path}: a {_kind(mode)} is never followed")
            return False
        if os.path.realpath(path.parent) != str(path.parent):
            self._report_once(str(path), f"not taking {path}: reached through a symlinked folder")
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
                self._report_once(str(folder), f"cannot list {folder}: {exc}")
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

    def claim(self, path: Path) -> Claim | None:
        """Move a candidate into work/; None if it is not one, vanished, or a peer won."""
        self._require_lock()
        located = self._locate(path)
        if located is None or not self.is_candidate(located[0]):
            return None
        return self._take(*located)

    def _take(self, source: Path, rel: PurePosixPath) -> Claim | None:
        claim_id = new_claim_id()
        suffix = PurePosixPath(rel.name).suffix
        suffix = suffix if _SUFFIX_RE.fullmatch(suffix) and suffix.lower() != ".json" else ""
        self._active.add(claim_id)  # before the intent record: a concurrent adopt skips it
        record: dict[str, Any] = {"id": claim_id, "state": "claiming", "rel_path": str(rel)}
        record |= {"work_name": claim_id + suffix, "attempts": 0, "claimed_at": time.time()}
        try:
            # The output name is reserved only after the rename wins: a loser's transient
            # reservation would otherwise push the winner to "name (2)".
            self._write_record(record)
            os.rename(source, self.work_dir / record["work_name"])
        except OSError as exc:
            self._drop(record)
            if not isinstance(exc, FileNotFoundError):  # vanished or taken by a peer: normal
                self._report_once(str(source), f"cannot claim {source}: {exc}")
            return None
        except BaseException:
            self._drop(record)
            raise
        try:
            return self._settle(record, attempts=1)
        except OSError as exc:
            # The file is ours on disk with its record: the next start's recover() resumes it.
            logger.error("claimed {} but could not record it ({}); left for recover()", rel, exc)
            self._active.discard(claim_id)
            return None

    def _settle(self, record: dict[str, Any], attempts: int) -> Claim | None:
        """claiming -> claimed: hash what the rename brought in, without following anything."""
        work = self.work_dir / record["work_name"]
        mode = os.lstat(work).st_mode
        if "output_rel" not in record:
            rel = PurePosixPath(record["rel_path"])
            record["output_rel"] = str(self._reserve_output(rel, record["id"]))
        record.update(state="claimed", size=0, sha256="", attempts=attempts)
        problem: tuple[str, str] | None = None
        if stat.S_ISREG(mode):
            try:
                record["size"], record["sha256"] = self._hash(work)
            except OSError as exc:
                problem = ("unreadable", f"cannot read {record['rel_path']}: {exc}")
        else:
            problem = (
                "not_a_regular_file",
                f"{record['rel_path']} turned out to be a {_kind(mode)} when claimed; "
                "it was moved here, never followed or read",
            )
        self._write_record(record)
        claim = self._claim_of(record)
        if problem is not None:
            self.quarantine(claim, *problem)
            return None
        return claim

    def release(self, claim: Claim) -> None:
        """Hand a claim back unfinished (e.g. disk full). Nothing moves: the file stays claimed
        in work/. The caller may still commit or quarantine this Claim later (a retry); if it
        never does, the next start's recover() resumes it. recover()/adopt_stale() in this
        process do not return it, so a retry and a recovery never process one file twice."""
        logger.debug("claim {} ({}) released for a later retry", claim.id, claim.rel_path)

    # --- reading, committing, quarantining -----------------------------------------------

    def open_claim(self, claim: Claim) -> BinaryIO:
        """The claimed original, read-only; OSError if it is not a regular file (never follows)."""
        return open_regular(claim.work_path)

    def commit(self, claim: Claim, data: bytes) -> Path:
        """Publish ``data`` as the claim's output, then archive (or delete) the original."""
        self._require_lock()
        final = self._write_output(claim, data)
        record = self._mark_committed(claim)
        self._dispose_original(record)
        self._drop(record)
        return final

    def _write_output(self, claim: Claim, data: bytes) -> Path:
        folder = self._ensure_folder(self.outbox, claim.output_rel.parent)
        final = folder / claim.output_rel.name
        write_atomic(final, data, folder / _temp_name(final.name, claim.id))
        return final

    def _mark_committed(self, claim: Claim) -> dict[str, Any]:
        record = self._record_of(claim, "committed")
        if self.keep_originals:
            rel = claim.rel_path
            archive_rel = self._reserve_name(
                self.archive, "archive", rel.parent, lambda n: _numbered(rel.name, n), claim.id
            )
            record["archive_rel"] = str(archive_rel)
        self._write_record(record)
        return record

    def _dispose_original(self, record: dict[str, Any]) -> None:
        work = self.work_dir / record["work_name"]
        if not os.path.lexists(work):
            return  # done before a crash
        if "archive_rel" in record:
            rel = PurePosixPath(record["archive_rel"])
            folder = self._ensure_folder(self.archive, rel.parent)
            os.rename(work, folder / rel.name)
            fsync_dir(folder)
        else:
            os.unlink(work)
        fsync_dir(self.work_dir)

    def quarantine(
        self, claim: Claim, reason: str, message: str, details: dict | None = None
    ) -> Path:
        """Move the original to ``quarantine/`` beside its ``.error.json``; returns its path."""
        self._require_lock()
        record = self._mark_quarantining(claim, reason, message, details)
        dest = self._move_to_quarantine(record)
        self._drop(record)
        return dest

    def _mark_quarantining(
        self, claim: Claim, reason: str, message: str, details: dict | None
    ) -> dict[str, Any]:
        rel = claim.rel_path

        def taken(path: Path) -> bool:
            return os.path.lexists(path) or os.path.lexists(f"{path}{SIDECAR_SUFFIX}")

        quarantine_rel = self._reserve_name(
            self.quarantine_dir, "quarantine", rel.parent, lambda n: _numbered(rel.name, n),
            claim.id, taken,
        )  # fmt: skip
        record = self._record_of(claim, "quarantining")
        record["quarantine_rel"] = str(quarantine_rel)
        record["error"] = {
            "reason": reason,
            "message": message,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "details": json.loads(json.dumps(details or {}, default=str)),
        }
        self._write_record(record)
        return record

    def _move_to_quarantine(self, record: dict[str, Any]) -> Path:
        rel = PurePosixPath(record["quarantine_rel"])
        folder = self._ensure_folder(self.quarantine_dir, rel.parent)
        dest = folder / rel.name
        sidecar = dict(record["error"], instance=self.instance, original_path=record["rel_path"])
        sidecar |= {k: record[k] for k in ("size", "sha256", "attempts")} | {"claim": record["id"]}
        sidecar_path = folder / f"{rel.name}{SIDECAR_SUFFIX}"
        data = json.dumps(sidecar, indent=2, sort_keys=True).encode() + b"\n"
        write_atomic(sidecar_path, data, folder / _temp_name(sidecar_path.name, record["id"]))
        work = self.work_dir / record["work_name"]
        if os.path.lexists(work):
            os.rename(work, dest)  # a symlink or FIFO moves as itself; nothing is read
            fsync_dir(folder)
            fsync_dir(self.work_dir)
        return dest

    # --- restart ------------------------------------------------------------------------

    def recover(self) -> list[Claim]:
        """Finish or resume this instance's leftovers; the resumed ones have attempts + 1."""
        self._require_lock()
        self._merge_adopted()
        claims = self._recover_work(only=None)
        self._sweep_reservations(owners={self.instance})
        self._sweep_temps()
        return claims

    def adopt_stale(self) -> list[Claim]:
        """Take over the work of instances whose lock is free (dead), then as recover()."""
        self._require_lock()
        with os.scandir(self.state / "work") as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            other = entry.name
            if other == self.instance or not _INSTANCE_RE.fullmatch(other):
                continue
            try:
                if not entry.is_dir(follow_symlinks=False) or not os.listdir(entry.path):
                    continue
            except FileNotFoundError:
                continue  # a peer adopted it
            fd = self._try_lock(self._locks / f"{other}.lock")
            if fd is None:
                continue  # alive
            try:
                # One rename moves records and files together; merged into ours below.
                os.rename(entry.path, self.work_dir / f".adopt-{other}-{new_claim_id()}")
                fsync_dir(self.work_dir)
                fsync_dir(self.state / "work")
                logger.warning("adopting the unfinished work of dead instance {!r}", other)
                self._sweep_reservations(owners={other})
            except FileNotFoundError:
                pass  # a peer adopted it first
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        return self._recover_work(only=self._merge_adopted())

    def _merge_adopted(self) -> set[str]:
        """Move files out of ``.adopt-*`` staging folders into work/ (idempotent, resumable)."""
        moved: set[str] = set()
        seen: set[Path] = set()
        while pending := [p for p in self.work_dir.glob(".adopt-*") if p not in seen]:
            for staging in pending:
                seen.add(staging)
                if stat.S_ISDIR(os.lstat(staging).st_mode):
                    moved |= self._merge_staging(staging)
        return moved

    def _merge_staging(self, staging: Path) -> set[str]:
        moved: set[str] = set()
        with os.scandir(staging) as it:
            entries = list(it)
        for entry in entries:
            target = self.work_dir / entry.name
            if entry.name.startswith(".adopt-"):  # the dead instance was adopting, too
                target = self.work_dir / f".adopt-nested-{new_claim_id()}"
            elif entry.name.startswith("."):
                if not entry.is_dir(follow_symlinks=False):
                    os.unlink(entry.path)  # a half-written record of the dead instance
                continue
            if os.path.lexists(target):
                logger.error("not adopting {}: {} exists", entry.path, target)
                continue
            os.rename(entry.path, target)
            moved.add(entry.name[:_ID_LEN])
        fsync_dir(self.work_dir)
        try:
            staging.rmdir()
        except OSError as exc:
            logger.error("cannot remove adoption folder {}: {}", staging, exc)
        return moved

    def _recover_work(self, only: set[str] | None) -> list[Claim]:
        records: set[str] = set()
        works: dict[str, str] = {}
        for entry in os.scandir(self.work_dir):
            name, claim_id = entry.name, entry.name.lstrip(".")[:_ID_LEN]
            if claim_id in self._active or (only is not None and claim_id not in only):
                continue
            if name.startswith("."):
                if TEMP_MARK in name and not entry.is_dir(follow_symlinks=False):
                    os.unlink(entry.path)  # a record write cut short
            elif not _ID_RE.fullmatch(claim_id):
                self._report_once(entry.path, f"unexpected file in {self.work_dir}: {name}")
            elif name == f"{claim_id}.json":
                records.add(claim_id)
            else:
                works[claim_id] = name
        claims = []
        for claim_id in sorted(records | works.keys()):
            record = self._read_record(claim_id) if claim_id in records else None
            if record is None and claim_id in works:
                # The relative path is lost (hand-placed file or broken record): keep the name.
                logger.warning("rebuilding the lost record of {}", works[claim_id])
                record = {"id": claim_id, "state": "claiming", "rel_path": works[claim_id]}
                record |= {"work_name": works[claim_id], "attempts": 0, "claimed_at": time.time()}
                rel = PurePosixPath(works[claim_id])
                record["output_rel"] = str(self._reserve_output(rel, claim_id))
                self._write_record(record)
            if record is not None and (claim := self._resume(record)) is not None:
                claims.append(claim)
        return claims

    def _resume(self, record: dict[str, Any]) -> Claim | None:
        state, claim_id = record["state"], record["id"]
        if state == "committed":
            self._dispose_original(record)
            self._drop(record)
            return None
        if state == "quarantining":
            self._move_to_quarantine(record)
            self._drop(record)
            return None
        if "output_rel" in record:
            output_rel = PurePosixPath(record["output_rel"])
            temp = _temp_name(output_rel.name, claim_id)
            self._unlink_inside(self.outbox / output_rel.parent / temp)
        if not os.path.lexists(self.work_dir / record["work_name"]):
            if state != "claiming":  # claiming: the rename never happened; the inbox has it
                logger.error("claim {} lost its file {}; dropping it", claim_id, record["rel_path"])
            self._drop(record)
            return None
        self._active.add(claim_id)
        if state == "claiming":
            return self._settle(record, attempts=1)
        output_rel = PurePosixPath(record["output_rel"])
        if not self._try_reserve(f"outbox/{output_rel}", claim_id):
            logger.warning("output {} of claim {} is reserved by another", output_rel, claim_id)
        record["attempts"] = int(record["attempts"]) + 1
        self._write_record(record)
        return self._claim_of(record)

    # --- housekeeping -------------------------------------------------------------------

    def remove_empty_dirs(self, older_than: float = EMPTY_DIR_GRACE_SECONDS) -> None:
        """Remove inbox sub-folders that are empty and were not changed for ``older_than`` s."""
        cutoff = time.time() - older_than

        def prune(folder: str) -> None:
            try:
                with os.scandir(folder) as it:
                    subfolders = [e for e in it if e.is_dir(follow_symlinks=False)]
            except OSError:
                return
            for entry in subfolders:
                if entry.name.startswith("."):
                    continue  # someone else's temporary folder
                try:
                    changed = entry.stat(follow_symlinks=False).st_mtime  # before we prune it
                except OSError:
                    continue
                prune(entry.path)
                if changed < cutoff:
                    with contextlib.suppress(OSError):  # a writer got there first
                        os.rmdir(entry.path)

        prune(str(self.inbox))

    def _sweep_reservations(self, owners: set[str]) -> None:
        """Drop reservations of ``owners`` that no record (anywhere) or active claim holds."""
        held: dict[str, set[str] | None] = {}  # claim id -> its reservations; None: keep all
        work = self.state / "work"
        for path in [*work.glob("*/*.json"), *work.glob("*/.adopt-*/*.json")]:
            try:
                record = json.loads(path.read_bytes())
                held[path.name[:_ID_LEN]] = {
                    self._reservation(k).name for k in _reserved_keys(record)
                }
            except (OSError, ValueError, KeyError, TypeError):
                held[path.name[:_ID_LEN]] = None
        for entry in os.scandir(self._reserved):
            owner = _reservation_owner(Path(entry.path))
            if owner is None:
                os.unlink(entry.path)  # not a reservation of ours
                continue
            # An active claim without a record is in the middle of claim().
            names = held.get(owner[1], None if owner[1] in self._active else set())
            if owner[0] in owners and names is not None and entry.name not in names:
                os.unlink(entry.path)

    def _sweep_temps(self) -> None:
        """Our crashed writes in outbox/ and quarantine/, and anyone's older than an hour."""
        ours = {p.name[:_ID_LEN] for p in self.work_dir.glob("*.json")}
        cutoff = time.time() - STALE_TEMP_SECONDS
        for top in (self.outbox, self.quarantine_dir):
            for folder, _dirs, files in os.walk(top):
                for name in files:
                    if not name.startswith(".") or TEMP_MARK not in name:
                        continue
                    claim_id = name.rsplit(TEMP_MARK, 1)[1]
                    path = Path(folder) / name
                    try:
                        stale = os.lstat(path).st_mtime < cutoff
                    except FileNotFoundError:
                        continue
                    if claim_id not in self._active and (claim_id in ours or stale):
                        path.unlink(missing_ok=True)

    # --- names and reservations ---------------------------------------------------------

    def _reserve_output(self, rel: PurePosixPath, claim_id: str) -> PurePosixPath:
        def name(n: int) -> str:
            return rel.name + ("" if n == 1 else f" ({n})") + self.output_ext

        return self._reserve_name(self.outbox, "outbox", rel.parent, name, claim_id)

    def _reserve_name(
        self,
        base: Path,
        area: str,
        parent: PurePosixPath,
        name: Callable[[int], str],
        claim_id: str,
        taken: Callable[[Path], bool] = os.path.lexists,
    ) -> PurePosixPath:
        """The first free ``parent/name(n)`` under ``base``, reserved for ``claim_id``."""
        for n in range(1, _MAX_NAME_TRIES):
            rel = parent / name(n)
            if taken(base / rel) or not self._try_reserve(f"{area}/{rel}", claim_id):
                continue
            if taken(base / rel):  # finished by a peer just before we reserved
                self._unreserve(f"{area}/{rel}")
                continue
            return rel
        raise SpoolError(f"no free name for {parent / name(1)} in {base}")

    def _reservation(self, key: str) -> Path:
        return self._reserved / hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()

    def _try_reserve(self, key: str, claim_id: str) -> bool:
        """Reserve ``key`` for ``claim_id``; True also when this claim holds it already.

        The reservation is a dangling symlink whose target names the owner (as Emacs lock
        files do): created exclusively *with* its content, so a kill leaves none half-written.
        It is only ever read with readlink, never followed."""
        path = self._reservation(key)
        try:
            os.symlink(f"{self.instance}/{claim_id}", path)
        except FileExistsError:
            return _reservation_owner(path) == (self.instance, claim_id)
        return True

    def _unreserve(self, key: str) -> None:
        self._reservation(key).unlink(missing_ok=True)

    # --- records ------------------------------------------------------------------------

    def _record_of(self, claim: Claim, state: str) -> dict[str, Any]:
        return {
            "id": claim.id,
            "state": state,
            "instance": self.instance,
            "rel_path": str(claim.rel_path),
            "work_name": claim.work_path.name,
            "size": claim.size,
            "sha256": claim.sha256,
            "attempts": claim.attempts,
            "output_rel": str(claim.output_rel),
            "claimed_at": claim.claimed_at,
        }

    def _claim_of(self, record: dict[str, Any]) -> Claim:
        return Claim(
            id=record["id"],
            work_path=self.work_dir / record["work_name"],
            rel_path=PurePosixPath(record["rel_path"]),
            size=int(record["size"]),
            sha256=record["sha256"],
            attempts=int(record["attempts"]),
            output_rel=PurePosixPath(record["output_rel"]),
            claimed_at=float(record["claimed_at"]),
        )

    def _write_record(self, record: dict[str, Any]) -> None:
        record["instance"] = self.instance
        name = f"{record['id']}.json"
        data = json.dumps(record, sort_keys=True).encode()
        write_atomic(self.work_dir / name, data, self.work_dir / _temp_name(name, record["id"]))

    def _read_record(self, claim_id: str) -> dict[str, Any] | None:
        path = self.work_dir / f"{claim_id}.json"
        try:
            with open_regular(path) as handle:
                record = json.loads(handle.read())
            rels = [record[k] for k in ("rel_path", "work_name")]
            rels += [
                record[k] for k in ("output_rel", "archive_rel", "quarantine_rel") if k in record
            ]
            valid = record["id"] == claim_id and all(_safe_rel(r) for r in rels)
            valid = valid and record["state"] in _STATES
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.error("unreadable claim record {}: {}", path, exc)
            return None
        if not valid or len(PurePosixPath(record["work_name"]).parts) != 1:
            logger.error("claim record {} is not one of ours; ignoring it", path)
            return None
        return record

    def _drop(self, record: dict[str, Any]) -> None:
        """Last step of every path: forget the record, then its reserved names."""
        (self.work_dir / f"{record['id']}.json").unlink(missing_ok=True)
        fsync_dir(self.work_dir)
        for key in _reserved_keys(record):
            self._unreserve(key)
        self._active.discard(record["id"])

    # --- small helpers ------------------------------------------------------------------

    def _locate(self, path: Path) -> tuple[Path, PurePosixPath] | None:
        """``(absolute path, path relative to the inbox)``, or None outside the inbox."""
        path = Path(path)
        if ".." in path.parts:
            return None
        path = Path(os.path.abspath(path))
        if not path.is_relative_to(self.inbox):
            # Reached through a symlinked root: judge the real folder it lies in.
            path = Path(os.path.realpath(path.parent)) / path.name
            if not path.is_relative_to(self.inbox):
                return None
        rel = PurePosixPath(path.relative_to(self.inbox).as_posix())
        return (path, rel) if rel.parts else None

    def _ensure_folder(self, base: Path, rel: PurePosixPath) -> Path:
        """``base/rel``, created one component at a time, refusing anything but real folders."""
        folder = base
        for part in rel.parts:
            folder = folder / part
            with contextlib.suppress(FileExistsError):
                folder.mkdir()
            mode = os.lstat(folder).st_mode
            if not stat.S_ISDIR(mode):
                raise OSError(errno.ENOTDIR, f"a {_kind(mode)} is in the way", str(folder))
        return folder

    def _unlink_inside(self, path: Path) -> None:
        if os.path.realpath(path.parent) == str(path.parent):  # never through a symlink
            path.unlink(missing_ok=True)

    @staticmethod
    def _hash(path: Path) -> tuple[int, str]:
        digest, size = hashlib.sha256(), 0
        with open_regular(path) as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()

    @staticmethod
    def _try_lock(path: Path) -> int | None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _can_write(self, folder: Path) -> bool:
        probe = folder / f".artd-probe-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600))
            os.unlink(probe)
        except OSError:
            return False
        return True

    def _require_lock(self) -> None:
        if self._lock_fd is None:
            raise SpoolError(f"spool {self.root} instance {self.instance!r}: call prepare() first")

    def _report_once(self, key: str, message: str) -> None:
        if key in self._reported:
            return
        if len(self._reported) > 10_000:
            self._reported.clear()
        self._reported.add(key)
        logger.warning(message)
