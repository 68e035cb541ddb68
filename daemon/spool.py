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
racing instances never pick one name. Nothing here follows a symlink: files are lstat'ed
and opened ``O_NOFOLLOW``; folders under inbox/, outbox/, archive/ and quarantine/ are opened
one component at a time with ``O_NOFOLLOW`` and every move or write in them goes through that
descriptor, so a folder swapped for a symlink mid-way cannot redirect it. Nothing outside
``root`` is read, moved or written. A symlink or file standing where an archive or quarantine
folder should be makes the original go to the top of that area under a flattened name.

Crash points (tests only, inert in production): every filesystem step of the state machine
calls :func:`_step` with its name (``record:temp-write``, ``claim:rename``, ``archive:rename``,
...). When the environment held ``_ARTD_CRASHPOINT=N`` at import, the process SIGKILLs itself
just before its N-th step (counted from process start, so recovery steps count too); with
``_ARTD_CRASHPOINT_TRACE=FILE`` every step is appended to FILE as ``"<n> <name>"``, the fatal
one included. Neither name starts with ``ARTD_``, so the daemon's settings never see them.
tests/reliability/test_crash_points.py loops N over every step.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import os
import re
import secrets
import signal
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
_NAME_MAX = 255  # bytes, Linux and macOS
# The disk, not the file: claim() raises these instead of skipping the file.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


def _crash_point_from_env() -> int | None:
    value = os.environ.get("_ARTD_CRASHPOINT", "")
    return int(value) if value.isdigit() else None


_CRASH_AT = _crash_point_from_env()
_CRASH_TRACE = os.environ.get("_ARTD_CRASHPOINT_TRACE") or None
_STEPS = itertools.count(1)


def _step(name: str) -> None:
    """A filesystem step is about to happen: the crash-point hook (module docstring)."""
    if _CRASH_AT is None and _CRASH_TRACE is None:
        return
    number = next(_STEPS)  # atomic under the GIL: pipeline threads share the count
    if _CRASH_TRACE is not None:
        fd = os.open(_CRASH_TRACE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, f"{number} {name}\n".encode())
        finally:
            os.close(fd)
    if number == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)


class SpoolError(Exception):
    """The spool's folders are misconfigured or unusable; the message names the folder."""


class InstanceLockedError(SpoolError):
    """The instance name is held by another live process."""


class DisposeError(OSError):
    """commit(): the output is published, archiving the original failed. Never quarantine
    such a claim (its output exists): commit() it again later, or leave it to recover()."""


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


def fsync_dir(path: Path, step: str = "dir") -> None:
    _step(f"{step}:dir-flush")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path, data: bytes, temp: Path, step: str = "file", dir_fd: int | None = None
) -> None:
    """temp (same folder) -> fsync -> rename -> fsync folder: readers see old or new, never half.

    The temp is created exclusively (a leftover of an earlier try is removed first), so a
    hard link planted at its name is replaced, never written through. With ``dir_fd``,
    ``path`` and ``temp`` are names in that folder."""
    _step(f"{step}:temp-open")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp, dir_fd=dir_fd)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644, dir_fd=dir_fd)
    try:
        try:
            _step(f"{step}:temp-write")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            _step(f"{step}:flush")
            os.fsync(fd)
        finally:
            os.close(fd)
        _step(f"{step}:rename")
        os.replace(temp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):  # the disk may refuse this too (EIO, EROFS)
            os.unlink(temp, dir_fd=dir_fd)
        raise
    if dir_fd is None:
        fsync_dir(path.parent, step)
    else:
        _step(f"{step}:dir-flush")
        os.fsync(dir_fd)


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
    # The mark must fit in NAME_MAX. fsencode: names may hold bytes that are not UTF-8.
    short = os.fsdecode(os.fsencode(name)[:150])
    return f".{short}{TEMP_MARK}{claim_id}"


def _fit_name(name: str, tail: str = "", reserve: int = 0) -> str:
    """``name + tail``, ``name`` cut (never inside a character) so that the whole plus
    ``reserve`` bytes fits NAME_MAX: a long input name must not make its output unwritable."""
    room = _NAME_MAX - reserve - len(os.fsencode(tail))
    while name and len(os.fsencode(name)) > room:
        name = name[:-1]
    return name + tail


def _numbered(name: str, n: int, reserve: int = 0) -> str:
    """``a.jpg``, ``a (2).jpg``, ... (archive and quarantine keep the input's extension last)."""
    p = PurePosixPath(name)
    suffix = p.suffix if _SUFFIX_RE.fullmatch(p.suffix) else ""
    stem = name[: len(name) - len(suffix)]
    return _fit_name(stem, (f" ({n})" if n > 1 else "") + suffix, reserve)


def _kind(mode: int) -> str:
    kinds = {stat.S_ISLNK: "symlink", stat.S_ISDIR: "folder", stat.S_ISFIFO: "FIFO"}
    kinds |= {stat.S_ISSOCK: "socket", stat.S_ISCHR: "device", stat.S_ISBLK: "device"}
    return next((name for test, name in kinds.items() if test(mode)), "special file")


def _safe_rel(value: object) -> PurePosixPath | None:
    rel = PurePosixPath(str(value))
    if not isinstance(value, str) or rel.is_absolute() or not rel.parts:
        return None
    return None if any(p in ("", ".", "..") for p in rel.parts) else rel


def _in_the_way(exc: OSError, path: Path) -> OSError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return NotADirectoryError(errno.ENOTDIR, "a symlink or file is in the way", str(path))
    return exc


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
        unwritable = [str(f) for f in folders[1:] if not self.can_write(f)]
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
        """Move a candidate into work/; None if it is not one, vanished, or a peer won.

        Raises OSError (errno in DISK_ERRNOS) when the disk refuses the claim: full, read-only,
        failing. The file is then still in the inbox, or claimed and left for ``recover()``."""
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
            # Renamed relative to the parent folder opened without following symlinks: a
            # folder swapped for a symlink after the checks cannot pull a file in from outside.
            parent = self._open_folder(self.inbox, rel.parent, create=False)
            try:
                _step("claim:rename")
                os.rename(rel.name, self.work_dir / record["work_name"], src_dir_fd=parent)
            finally:
                os.close(parent)
        except OSError as exc:
            # A failing disk may refuse the clean-up too: a "claiming" record whose rename
            # never happened is dropped by recover().
            with contextlib.suppress(OSError):
                self._drop(record)
            self._active.discard(claim_id)
            if exc.errno in DISK_ERRNOS:
                raise
            if not isinstance(exc, FileNotFoundError):  # vanished or taken by a peer: normal
                self._report_once(str(source), f"cannot claim {source}: {exc}")
            return None
        except BaseException:
            self._drop(record)
            raise
        try:
            return self._settle(record, attempts=1)
        except OSError as exc:
            # The file is ours on disk with its record: recover() resumes it.
            logger.error("claimed {} but could not record it ({}); left for recover()", rel, exc)
            self._active.discard(claim_id)
            if exc.errno in DISK_ERRNOS:
                raise
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
        try:
            self._dispose_original(record)
            self._drop(record)
        except OSError as exc:
            raise DisposeError(exc.errno, f"{final.name} is published; {exc}") from exc
        return final

    def _write_output(self, claim: Claim, data: bytes) -> Path:
        name = claim.output_rel.name
        folder = self._open_folder(self.outbox, claim.output_rel.parent)
        try:
            write_atomic(Path(name), data, Path(_temp_name(name, claim.id)), "output", folder)
        finally:
            os.close(folder)
        return self.outbox / claim.output_rel

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
            try:
                folder = self._open_folder(self.archive, rel.parent)
            except NotADirectoryError as exc:
                rel = self._refile(record, "archive_rel", exc)
                folder = self._open_folder(self.archive, PurePosixPath())
            try:
                _step("archive:rename")
                os.rename(work, rel.name, dst_dir_fd=folder)
                _step("archive:dir-flush")
                os.fsync(folder)
            finally:
                os.close(folder)
        else:
            _step("archive:unlink")
            os.unlink(work)
        fsync_dir(self.work_dir, "work")

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
            self.quarantine_dir, "quarantine", rel.parent,
            lambda n: _numbered(rel.name, n, reserve=len(SIDECAR_SUFFIX)), claim.id, taken,
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
        try:
            folder = self._open_folder(self.quarantine_dir, rel.parent)
        except NotADirectoryError as exc:
            rel = self._refile(record, "quarantine_rel", exc)
            folder = self._open_folder(self.quarantine_dir, PurePosixPath())
        sidecar = dict(record["error"], instance=self.instance, original_path=record["rel_path"])
        sidecar |= {k: record[k] for k in ("size", "sha256", "attempts")} | {"claim": record["id"]}
        sidecar_name = f"{rel.name}{SIDECAR_SUFFIX}"
        data = json.dumps(sidecar, indent=2, sort_keys=True).encode() + b"\n"
        temp = _temp_name(sidecar_name, record["id"])
        try:
            write_atomic(Path(sidecar_name), data, Path(temp), "sidecar", folder)
            work = self.work_dir / record["work_name"]
            if os.path.lexists(work):
                _step("quarantine:rename")
                os.rename(work, rel.name, dst_dir_fd=folder)  # a symlink moves as itself
                _step("quarantine:dir-flush")
                os.fsync(folder)
                fsync_dir(self.work_dir, "work")
        finally:
            os.close(folder)
        return self.quarantine_dir / rel

    def _refile(self, record: dict[str, Any], field: str, exc: OSError) -> PurePosixPath:
        """A symlink (or file) took the place of a folder on the way into archive/ or
        quarantine/: file the original at the top under a flattened name instead of writing
        through it or giving up. The record is rewritten first, so a crash resumes this."""
        area, base, reserve = {
            "archive_rel": ("archive", self.archive, 0),
            "quarantine_rel": ("quarantine", self.quarantine_dir, len(SIDECAR_SUFFIX)),
        }[field]
        flat = "__".join(PurePosixPath(record["rel_path"]).parts)

        def taken(path: Path) -> bool:
            return os.path.lexists(path) or os.path.lexists(f"{path}{SIDECAR_SUFFIX}")

        rel = self._reserve_name(
            base, area, PurePosixPath(), lambda n: _numbered(flat, n, reserve), record["id"], taken
        )
        logger.warning("{} ({}): filed as {}/{} instead", record["rel_path"], exc, area, rel)
        old, record[field] = record[field], str(rel)
        self._write_record(record)
        self._unreserve(f"{area}/{old}")
        return rel

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
                _step("adopt:rename")
                os.rename(entry.path, self.work_dir / f".adopt-{other}-{new_claim_id()}")
                fsync_dir(self.work_dir, "adopt")
                fsync_dir(self.state / "work", "adopt")
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
                    _step("adopt:unlink")
                    os.unlink(entry.path)  # a half-written record of the dead instance
                continue
            if os.path.lexists(target):
                logger.error("not adopting {}: {} exists", entry.path, target)
                continue
            _step("adopt:merge")
            os.rename(entry.path, target)
            moved.add(entry.name[:_ID_LEN])
        fsync_dir(self.work_dir, "adopt")
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
                    _step("recover:unlink")
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
            if record is None:
                continue
            try:
                claim = self._resume(record)
            except OSError as exc:  # one claim the disk refuses must not stop the start
                logger.error("cannot resume claim {} ({}): {}", claim_id, record["rel_path"], exc)
                self._active.discard(claim_id)
                continue
            if claim is not None:
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
                _step("sweep:unlink")
                os.unlink(entry.path)  # not a reservation of ours
                continue
            # An active claim without a record is in the middle of claim().
            names = held.get(owner[1], None if owner[1] in self._active else set())
            if owner[0] in owners and names is not None and entry.name not in names:
                _step("sweep:unreserve")
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
                        _step("sweep:unlink")
                        path.unlink(missing_ok=True)

    # --- names and reservations ---------------------------------------------------------

    def _reserve_output(self, rel: PurePosixPath, claim_id: str) -> PurePosixPath:
        def name(n: int) -> str:
            return _fit_name(rel.name, ("" if n == 1 else f" ({n})") + self.output_ext)

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
        digest = hashlib.sha1(os.fsencode(key), usedforsecurity=False).hexdigest()
        return self._reserved / digest

    def _try_reserve(self, key: str, claim_id: str) -> bool:
        """Reserve ``key`` for ``claim_id``; True also when this claim holds it already.

        The reservation is a dangling symlink whose target names the owner (as Emacs lock
        files do): created exclusively *with* its content, so a kill leaves none half-written.
        It is only ever read with readlink, never followed."""
        path = self._reservation(key)
        _step("reserve")
        try:
            os.symlink(f"{self.instance}/{claim_id}", path)
        except FileExistsError:
            return _reservation_owner(path) == (self.instance, claim_id)
        return True

    def _unreserve(self, key: str) -> None:
        _step("unreserve")
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
        temp = self.work_dir / _temp_name(name, record["id"])
        write_atomic(self.work_dir / name, data, temp, f"record-{record['state']}")

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
        _step("record:unlink")
        (self.work_dir / f"{record['id']}.json").unlink(missing_ok=True)
        fsync_dir(self.work_dir, "record")
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

    def _open_folder(self, base: Path, rel: PurePosixPath, create: bool = True) -> int:
        """A descriptor of ``base/rel``, each component opened relative to the last without
        following symlinks (and created if missing when ``create``): a folder swapped for a
        symlink at any instant cannot redirect a move or a write outside the root.
        NotADirectoryError when something else is in the way."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        path = base
        try:
            fd = os.open(base, flags)
        except OSError as exc:
            raise _in_the_way(exc, path) from exc
        try:
            for part in rel.parts:
                path = path / part
                if create:
                    try:
                        os.stat(part, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        _step("mkdir")
                        with contextlib.suppress(FileExistsError):
                            os.mkdir(part, dir_fd=fd)
                try:
                    child = os.open(part, flags, dir_fd=fd)
                except OSError as exc:
                    raise _in_the_way(exc, path) from exc
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _unlink_inside(self, path: Path) -> None:
        if os.path.realpath(path.parent) == str(path.parent):  # never through a symlink
            if os.path.lexists(path):
                _step("recover:unlink")
            path.unlink(missing_ok=True)

    @staticmethod
    def _hash(path: Path) -> tuple[int, str]:
        """Size and SHA-256 of a claimed file, whose bytes are then made durable: the writer
        may not have flushed them, and the claim record about to say we own them is."""
        digest, size = hashlib.sha256(), 0
        with open_regular(path) as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
            _step("claim:flush")
            os.fsync(handle.fileno())
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

    def can_write(self, folder: Path) -> bool:
        """Create and remove a file in ``folder``: what a full inode table, a read-only mount,
        a failing disk or missing permissions refuse (statvfs and access() can miss some)."""
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
