"""Requeue: a quarantined file back into the inbox, where it is claimed as a fresh drop.

This is the page's "Retry" button (``POST /api/retry``); the code calls it a requeue so that
it is not mistaken for the pipeline's retries of a disk that refused a write
(daemon.pipeline's ``retry_due``). The API, the on-disk names below (``.artd/page/retry/``,
``.artd-retry-<id>``) and ``_ARTD_RETRY_KILL_AT`` keep the word "retry": they are contracts
with other daemons on the root, older versions and the fault suite.

Crash counts live in claim records; a quarantined file has none (its counts are copied into
its ``.error.json``), and a file that re-enters the inbox is claimed with a new record whose
``interrupted`` and ``solo_crashes`` start at 0 (docs/spool.md). Moving it back is
therefore also what resets its count; the answer says what the counts were.

The steps, each durable before the next, so that a kill anywhere leaves something
:meth:`Requeue.recover` finishes, and two daemons on one root never both move a file:

1. a record ``.artd/page/retry/<id>.json`` (quarantine name, the sidecar's claim id);
2. ``rename`` of ``quarantine/<rel>`` to a dot-name beside it (``.artd-retry-<id>``): one
   rename of one name, so exactly one of two racing requeues wins (the other gets ENOENT);
3. a move of that file into ``inbox/<original path>`` that never replaces a file there
   (``renameat2(RENAME_NOREPLACE)``, or ``link`` + ``unlink`` where the file system lacks
   it); a name taken by a newer drop gets `` (2)``, `` (3)``... as elsewhere. Its job
   sidecar (``<name>.artd.json``, quarantined beside it) moves first, to the name the image
   is about to take, so the image is claimed with the settings it had; an
   ``invalid_sidecar`` file comes back without it (the sidecar stays for its owner to fix);
4. the sidecar is removed if it is still the one this requeue read (its claim id);
5. the record is removed.

Every folder is opened without following symlinks (daemon.spool.folders.open_folder).

Kill points (test-only, inert by default): every filesystem step above calls
:func:`_step` with its name (:data:`STEPS`). When the environment held
``_ARTD_RETRY_KILL_AT=<step name>`` at import, the process SIGKILLs itself just before the
first such step; without it ``_step`` returns at once. Not ``ARTD_*``: the daemon's
settings refuse unknown ``ARTD_`` variables. tests/reliability/test_page_faults.py kills a
real daemon at each step (docs/soak.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import signal
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from loguru import logger

from core import durable
from core.reasons import Reason
from daemon.sidecars import SUFFIX as JOB_SUFFIX
from daemon.spool.folders import open_folder
from daemon.spool.names import SIDECAR_SUFFIX, new_claim_id, numbered
from daemon.web.paths import BadPath, check_rel, lstat_inside, open_inside

RENAME_NOREPLACE = 1
RECOVER_AFTER_S = 30.0
# Under the root: one record per requeue in flight. The folder keeps its old name ("retry"):
# records written by earlier versions and peers on the root are found there.
RECORDS = Path(".artd") / "page" / "retry"
MAX_SIDECAR_BYTES = 1 << 20
_MAX_NAMES = 1000
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)

# Every step of a requeue, in order (module docstring): the kill points of the fault suite.
STEPS = (
    "record:temp-open",
    "record:temp-write",
    "record:flush",
    "record:rename",
    "record:dir-flush",
    "take:rename",
    "take:dir-flush",
    "place:sidecar-move",
    "place:move",
    "place:inbox-flush",
    "place:quarantine-flush",
    "sidecar:unlink",
    "sidecar:dir-flush",
    "drop:unlink",
    "drop:dir-flush",
)
# Read once, inert when unset; the variable keeps the old word (the fault suite sets it).
_KILL_AT = os.environ.get("_ARTD_RETRY_KILL_AT") or None


def _step(name: str) -> None:
    """A requeue step is about to happen: SIGKILL this process here if told to (test-only)."""
    if _KILL_AT is not None and name == _KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


def _record_hook(name: str) -> None:
    _step(f"record:{name}")


class RequeueError(Exception):
    """Why a requeue was refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Requeued:
    """A file moved back: where it went, and the crash counts it had."""

    quarantine_rel: str
    inbox_rel: str
    reason: str
    interrupted: int
    solo_crashes: int


def _move_noreplace(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    """Move ``src`` to ``dst`` (names in open folders) unless ``dst`` exists (EEXIST)."""
    if _renameat2 is not None:
        result = _renameat2(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), RENAME_NOREPLACE)
        if result == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), dst)
    os.link(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
    os.unlink(src, dir_fd=src_fd)


def read_sidecar(quarantine: Path, rel: PurePosixPath) -> dict[str, object]:
    """The ``.error.json`` beside ``quarantine/<rel>`` ({} when missing or unreadable)."""
    sidecar = rel.with_name(rel.name + SIDECAR_SUFFIX)
    try:
        fd = open_inside(quarantine, sidecar)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_SIDECAR_BYTES + 1)
    try:
        value = json.loads(data) if len(data) <= MAX_SIDECAR_BYTES else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class Requeue:
    """Requeues on one data root (module docstring). Safe with other daemons on the root."""

    def __init__(self, root: Path) -> None:
        self.inbox = root / "inbox"
        self.quarantine = root / "quarantine"
        self.records = root / RECORDS
        self.records.mkdir(parents=True, exist_ok=True)
        # One requeue or recovery at a time in this process: the page's POSTs and the
        # service's periodic recover() would otherwise race to finish the same record.
        self._lock = threading.RLock()

    def requeue(self, raw_rel: str) -> Requeued:
        """Move ``quarantine/<raw_rel>`` back to the inbox; RequeueError when it cannot be,
        OSError when the disk refuses (the record stays: the next requeue finishes it)."""
        with self._lock:
            return self._requeue(raw_rel)

    def _requeue(self, raw_rel: str) -> Requeued:
        self.recover()
        try:
            rel = check_rel(raw_rel)
        except BadPath as exc:
            raise RequeueError(400, f"not a quarantine path: {exc}") from None
        if rel.name.endswith(SIDECAR_SUFFIX):
            raise RequeueError(400, "name the quarantined file, not its .error.json")
        info = lstat_inside(self.quarantine, rel)
        if info is None:
            raise RequeueError(404, f"{rel} is not in the quarantine (already retried?)")
        if not stat.S_ISREG(info.st_mode):
            raise RequeueError(409, f"{rel} is not a regular file; it cannot be retried")
        sidecar = read_sidecar(self.quarantine, rel)
        target = self._target(rel, sidecar)
        claim_id = new_claim_id()
        record = {"id": claim_id, "quarantine_rel": str(rel), "claim": sidecar.get("claim")}
        record["time"] = time.time()
        self._write_record(record)
        try:
            self._take(rel, claim_id)
        except FileNotFoundError:
            self._drop(claim_id)
            raise RequeueError(409, f"{rel} was just retried or moved by someone else") from None
        except BaseException:
            self._drop(claim_id)
            raise
        placed = self._place(rel, claim_id, target, _keeps_job(sidecar))
        self._finish(record)
        logger.info("page: retry {} -> inbox/{}", rel, placed)
        return Requeued(
            str(rel),
            str(placed),
            str(sidecar.get("reason", "")),
            _int(sidecar.get("interrupted")),
            _int(sidecar.get("solo_crashes")),
        )

    def recover(self, older_than_s: float = RECOVER_AFTER_S) -> None:
        """Finish the requeues a killed daemon left (module docstring, steps 3 to 5). Only
        records older than ``older_than_s``: a live requeue (another daemon's, right now)
        takes milliseconds, and must not be finished under its feet. The page runs it before
        each requeue, the service every ``daemon.service.ADOPT_EVERY_S`` and at each start."""
        with self._lock:
            self._recover(older_than_s)

    def _recover(self, older_than_s: float) -> None:
        for entry in os.scandir(self.records):
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                # A record write killed before its rename: nothing was moved after it.
                with contextlib.suppress(OSError):
                    if time.time() - entry.stat(follow_symlinks=False).st_mtime > older_than_s:
                        os.unlink(entry.path)
                continue
            if not entry.name.endswith(".json") or entry.name.startswith("."):
                continue
            try:
                record = json.loads(Path(entry.path).read_bytes())
                if time.time() - float(record.get("time", 0)) < older_than_s:
                    continue
                rel = check_rel(record["quarantine_rel"])
                claim_id = str(record["id"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                logger.warning("page: dropping unreadable retry record {}: {}", entry.name, exc)
                Path(entry.path).unlink(missing_ok=True)
                continue
            held = rel.with_name(_held_name(claim_id))
            if lstat_inside(self.quarantine, held) is not None:
                error = read_sidecar(self.quarantine, rel)
                self._place(rel, claim_id, self._target(rel, error), _keeps_job(error))
                self._finish(record)
            elif lstat_inside(self.quarantine, rel) is not None and (
                read_sidecar(self.quarantine, rel).get("claim") == record.get("claim")
            ):
                self._drop(claim_id)  # step 2 never happened: nothing moved
            else:
                self._finish(record)

    # --- the steps ----------------------------------------------------------------------

    def _target(self, rel: PurePosixPath, sidecar: dict[str, object]) -> PurePosixPath:
        """Where in the inbox: its original path when the sidecar has a plain one."""
        try:
            return check_rel(str(sidecar.get("original_path") or ""))
        except BadPath:
            return PurePosixPath(rel.name)

    def _take(self, rel: PurePosixPath, claim_id: str) -> None:
        folder = open_folder(self.quarantine, rel.parent, create=False)
        try:
            _step("take:rename")
            os.rename(rel.name, _held_name(claim_id), src_dir_fd=folder, dst_dir_fd=folder)
            _step("take:dir-flush")
            durable.fsync_fd(folder)
        finally:
            os.close(folder)

    def _place(
        self, rel: PurePosixPath, claim_id: str, target: PurePosixPath, with_job: bool
    ) -> PurePosixPath:
        src = open_folder(self.quarantine, rel.parent, create=False)
        try:
            try:
                dst = open_folder(self.inbox, target.parent, create=True)
            except NotADirectoryError:  # a file or symlink where the sub-folder was
                target = PurePosixPath(target.name)
                dst = open_folder(self.inbox, target.parent, create=True)
            job = rel.name + JOB_SUFFIX
            with_job = with_job and _exists(src, job)
            try:
                for n in range(1, _MAX_NAMES):
                    name = numbered(target.name, n)
                    if _exists(dst, name):
                        continue
                    if with_job:
                        _step("place:sidecar-move")
                        try:
                            _move_noreplace(src, job, dst, name + JOB_SUFFIX)
                        except FileExistsError:
                            continue
                    _step("place:move")
                    try:
                        _move_noreplace(src, _held_name(claim_id), dst, name)
                    except FileExistsError:
                        if with_job:  # a drop took the name in between: take the sidecar back
                            _move_noreplace(dst, name + JOB_SUFFIX, src, job)
                        continue
                    _step("place:inbox-flush")
                    durable.fsync_fd(dst)
                    _step("place:quarantine-flush")
                    durable.fsync_fd(src)
                    return target.parent / name
                raise RequeueError(409, f"no free name for {target} in the inbox")
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def _finish(self, record: dict[str, object]) -> None:
        rel = PurePosixPath(str(record["quarantine_rel"]))
        if read_sidecar(self.quarantine, rel).get("claim") == record.get("claim"):
            with contextlib.suppress(OSError):
                folder = open_folder(self.quarantine, rel.parent, create=False)
                try:
                    _step("sidecar:unlink")
                    os.unlink(rel.name + SIDECAR_SUFFIX, dir_fd=folder)
                    _step("sidecar:dir-flush")
                    durable.fsync_fd(folder)
                finally:
                    os.close(folder)
        self._drop(str(record["id"]))

    def _write_record(self, record: dict[str, object]) -> None:
        data = json.dumps(record, sort_keys=True).encode()
        hook = _record_hook if _KILL_AT is not None else None
        durable.write_atomic(self.records / f"{record['id']}.json", data, hook=hook)

    def _drop(self, claim_id: str) -> None:
        _step("drop:unlink")
        (self.records / f"{claim_id}.json").unlink(missing_ok=True)
        _step("drop:dir-flush")
        durable.fsync_dir(self.records)


def _keeps_job(error: dict[str, object]) -> bool:
    """Whether the file's job sidecar goes back with it (not when it was the problem)."""
    return error.get("reason") != Reason.INVALID_SIDECAR


def _exists(folder: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=folder)
    except FileNotFoundError:
        return False
    return True


def _held_name(claim_id: str) -> str:
    # The old word stays on disk: a peer or an earlier version may hold files by this name.
    return f".artd-retry-{claim_id}"


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0
