"""The claim -> commit | quarantine machine: every move of one claim, its record first.

Each state is written atomically *before* the move it announces, so a kill between any two
steps leaves a record that says what remains (recovery.py finishes it)::

    inbox/<rel> --claim--> .artd/work/<instance>/<id><suffix> + <id>.json (the record)
                --commit--> outbox/<rel><ext> final, record "committed", original -> archive/
                --quarantine--> quarantine/<rel> + <rel>.error.json

Output, archive and quarantine names are reserved (reservations.py) before they are used.
A symlink or file standing where an archive or quarantine folder should be makes the
original go to the top of that area under a flattened name.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from loguru import logger

from core import durable
from core.reasons import Reason
from daemon import sidecars
from daemon.spool.crash_points import fsync_dir, move_into, step, write_atomic
from daemon.spool.errors import DISK_ERRNOS, DisposeError
from daemon.spool.folders import Layout, kind, open_folder
from daemon.spool.names import (
    SIDECAR_SUFFIX,
    flat_name,
    new_claim_id,
    numbered,
    output_name,
    temp_name,
    work_suffix,
)
from daemon.spool.records import (
    Claim,
    Record,
    Records,
    State,
    crash_counts,
    intent,
    reserved_keys,
)
from daemon.spool.reservations import Reservations, owner, taken_with_sidecar

_REPORTED_MAX = 10_000
# Resolves a claim's settings from its relative path and sidecar bytes (daemon.settings.jobs);
# raises ValueError (with ``.message``) for settings the job cannot run with.
Resolve = Callable[[PurePosixPath, bytes | None, str | None], dict[str, Any]]


class WarnOnce:
    """Logs a warning once per key: a file that stays unclaimable must not flood the log."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, key: str, message: str) -> None:
        if key in self._seen:
            return
        if len(self._seen) > _REPORTED_MAX:
            self._seen.clear()
        self._seen.add(key)
        logger.warning(message)


class Machine:
    """The moves of one instance's claims. Callers hold the instance lock."""

    def __init__(
        self,
        layout: Layout,
        instance: str,
        output_ext: str,
        keep_originals: bool,
        resolve: Resolve | None = None,
    ) -> None:
        self.layout = layout
        self.resolve = resolve
        self.instance = instance
        self.output_ext = output_ext
        self.keep_originals = keep_originals
        self.records = Records(layout.work, instance)
        self.reservations = Reservations(layout.reserved, instance)
        # Claims owned by the caller right now: recover()/adopt never hand them out again.
        self.active: set[str] = set()
        self.warn_once = WarnOnce()

    # --- claiming -----------------------------------------------------------------------

    def take(self, source: Path, rel: PurePosixPath) -> Claim | None:
        """Rename ``inbox/<rel>`` into work/ and settle it (Spool.claim() says the rest)."""
        claim_id = new_claim_id()
        self.active.add(claim_id)  # before the intent record: a concurrent adopt skips it
        record = intent(claim_id, str(rel), claim_id + work_suffix(rel.name))
        if os.path.lexists(source.parent / sidecars.sidecar_name(rel.name)):
            record["sidecar_rel"] = str(rel.parent / sidecars.sidecar_name(rel.name))
        try:
            # The output name is reserved only after the rename wins: a loser's transient
            # reservation would otherwise push the winner to "name (2)".
            self.records.write(record)
            self._rename_from_inbox(rel, record["work_name"])
        except OSError as exc:
            # A failing disk may refuse the clean-up too: a "claiming" record whose rename
            # never happened is dropped by recover().
            with contextlib.suppress(OSError):
                self.drop(record)
            self.active.discard(claim_id)
            if exc.errno in DISK_ERRNOS:
                raise
            if not isinstance(exc, FileNotFoundError):  # vanished or taken by a peer: normal
                self.warn_once(str(source), f"cannot claim {source}: {exc}")
            return None
        except BaseException:
            self.drop(record)
            raise
        try:
            return self.settle(record, attempts=1)
        except OSError as exc:
            # The file is ours on disk with its record: recover() resumes it.
            logger.error("claimed {} but could not record it ({}); left for recover()", rel, exc)
            self.active.discard(claim_id)
            if exc.errno in DISK_ERRNOS:
                raise
            return None

    def _rename_from_inbox(self, rel: PurePosixPath, work_name: str) -> None:
        # Renamed relative to the parent folder opened without following symlinks: a
        # folder swapped for a symlink after the checks cannot pull a file in from outside.
        parent = open_folder(self.layout.inbox, rel.parent, create=False)
        try:
            step("claim:rename")
            os.rename(rel.name, self.layout.work / work_name, src_dir_fd=parent)
        finally:
            os.close(parent)

    def work_sidecar(self, record: Record) -> Path:
        """Where a claim's job sidecar is kept in work/ (it may not exist)."""
        return self.layout.work / f"{record['id']}{sidecars.SUFFIX}"

    def _take_sidecar(self, record: Record) -> None:
        """Move the job sidecar found at claim time into work/, after its image (idempotent:
        a restart finishing a ``claiming`` record does it again if it was not done)."""
        if "sidecar_rel" not in record or os.path.lexists(self.work_sidecar(record)):
            return
        rel = PurePosixPath(record["sidecar_rel"])
        try:
            parent = open_folder(self.layout.inbox, rel.parent, create=False)
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            step("claim:sidecar-rename")
            os.rename(rel.name, self.work_sidecar(record), src_dir_fd=parent)
        except FileNotFoundError:
            pass  # taken back by its owner: the image runs without it
        finally:
            os.close(parent)

    def _resolve_job(self, record: Record) -> str | None:
        """Fix the claim's settings in its record (``job``); the refusal's message if the
        sidecar or the settings are invalid."""
        sidecar = self.work_sidecar(record)
        data: bytes | None = None
        sidecar_rel = record.get("sidecar_rel")
        if os.path.lexists(sidecar):
            sidecar_rel = sidecar_rel or f"{record['rel_path']}{sidecars.SUFFIX}"
            step("claim:sidecar-read")
            try:
                data = sidecars.read_bounded(sidecar)
            except sidecars.SidecarError as exc:
                return f"sidecar {sidecar_rel}: {exc}"
        if self.resolve is None:
            return None
        step("claim:resolve")
        try:
            record["job"] = self.resolve(PurePosixPath(record["rel_path"]), data, sidecar_rel)
        except ValueError as exc:
            return getattr(exc, "message", str(exc))
        return None

    def settle(self, record: Record, attempts: int) -> Claim | None:
        """claiming -> claimed: hash what the rename brought in, without following anything;
        bring its sidecar along and fix its settings (``job``) in the record."""
        work = self.layout.work / record["work_name"]
        mode = os.lstat(work).st_mode
        self._take_sidecar(record)
        job_problem = self._resolve_job(record)
        if "output_rel" not in record:
            rel = PurePosixPath(record["rel_path"])
            ext = record.get("job", {}).get("output_ext", self.output_ext)
            record["output_rel"] = str(self.reserve_output(rel, record["id"], ext))
        record.update(state=State.CLAIMED, size=0, sha256="", attempts=attempts)
        record.update(interrupted=0, solo_crashes=0)
        problem: tuple[str, str] | None = None
        if job_problem is not None and stat.S_ISREG(mode):
            problem = (Reason.INVALID_SIDECAR, job_problem)
        if stat.S_ISREG(mode):
            try:
                record["size"], record["sha256"] = _size_and_hash(work)
            except OSError as exc:
                problem = (Reason.UNREADABLE, f"cannot read {record['rel_path']}: {exc}")
        else:
            problem = (
                Reason.NOT_A_REGULAR_FILE,
                f"{record['rel_path']} turned out to be a {kind(mode)} when claimed; "
                "it was moved here, never followed or read",
            )
        self.records.write(record)
        claim = self.records.claim_of(record)
        if problem is not None:
            self.quarantine(claim, *problem)
            return None
        return claim

    def reserve_output(
        self, rel: PurePosixPath, claim_id: str, ext: str | None = None
    ) -> PurePosixPath:
        """Reserve the first free output name of ``inbox/<rel>`` (``ext``: the job's)."""
        return self.reservations.first_free(
            self.layout.outbox,
            "outbox",
            rel.parent,
            lambda n: output_name(rel.name, n, ext or self.output_ext),
            claim_id,
        )

    # --- committing ---------------------------------------------------------------------

    def commit(self, claim: Claim, data: bytes) -> Path:
        """Publish ``data`` as the claim's output, then archive (or delete) the original."""
        final = self.write_output(claim, data)
        try:
            record = self.mark_committed(claim)
            self.dispose_original(record)
            self.drop(record)
        except OSError as exc:  # published: never quarantine it now
            raise DisposeError(exc.errno, f"{final.name} is published; {exc}") from exc
        return final

    def write_output(self, claim: Claim, data: bytes) -> Path:
        """Write the output under its reserved name (atomically, through the folder's fd)."""
        name = claim.output_rel.name
        folder = open_folder(self.layout.outbox, claim.output_rel.parent)
        try:
            write_atomic(Path(name), data, Path(temp_name(name, claim.id)), "output", folder)
        finally:
            os.close(folder)
        return self.layout.outbox / claim.output_rel

    def mark_committed(self, claim: Claim) -> Record:
        """Record ``committed`` (with the archive name reserved when originals are kept)."""
        record = self.records.of_claim(claim, State.COMMITTED)
        if self.keep_originals:
            rel = claim.rel_path
            archive_rel = self._reserve_in("archive_rel", rel.parent, rel.name, claim.id)
            record["archive_rel"] = str(archive_rel)
        self.records.write(record)
        return record

    def output_published(self, record: Record) -> bool:
        """Whether this claim's output is final: a regular file stands at ``output_rel``
        and the outbox reservation of that name is this claim's. No one else writes a name
        that is reserved, and a name is reserved only while nothing stands there, so such a
        file is the output of this claim, renamed into place before its record said so."""
        rel = PurePosixPath(record["output_rel"])
        found = owner(self.reservations.path(f"outbox/{rel}"))
        if found is None or found[1] != record["id"]:
            return False  # adopted claims keep the dead instance's name in the reservation
        try:
            folder = open_folder(self.layout.outbox, rel.parent, create=False)
        except OSError:
            return False
        try:
            mode = os.stat(rel.name, dir_fd=folder, follow_symlinks=False).st_mode
        except OSError:
            return False
        finally:
            os.close(folder)
        return stat.S_ISREG(mode)

    def finish_published(self, record: Record) -> None:
        """A ``claimed`` record whose output is published: committed, archived, dropped."""
        logger.warning(
            "{}: its output {} was published before the interruption; finishing the commit",
            record["rel_path"],
            record["output_rel"],
        )
        committed = self.mark_committed(self.records.claim_of(record))
        self.dispose_original(committed)
        self.drop(committed)

    def dispose_original(self, record: Record) -> None:
        """Move the original to archive/ (or delete it); nothing to do if already done."""
        work = self.layout.work / record["work_name"]
        sidecar = self.work_sidecar(record)
        if not os.path.lexists(work) and not os.path.lexists(sidecar):
            return  # done before a crash
        if "archive_rel" in record:
            folder, rel = self._open_destination(record, "archive_rel")
            try:
                if os.path.lexists(sidecar):  # first: the original's move ends this step
                    move_into(sidecar, folder, f"{rel.name}{sidecars.SUFFIX}", "archive-sidecar")
                if os.path.lexists(work):
                    move_into(work, folder, rel.name, "archive")
            finally:
                os.close(folder)
        else:
            if os.path.lexists(sidecar):
                step("archive-sidecar:unlink")
                os.unlink(sidecar)
            if os.path.lexists(work):
                step("archive:unlink")
                os.unlink(work)
        fsync_dir(self.layout.work, "work")

    # --- quarantining -------------------------------------------------------------------

    def quarantine(
        self, claim: Claim, reason: str, message: str, details: dict | None = None
    ) -> Path:
        """Move the original to ``quarantine/`` beside its ``.error.json``; returns its path."""
        record = self.mark_quarantining(claim, reason, message, details)
        dest = self.move_to_quarantine(record)
        self.drop(record)
        return dest

    def mark_quarantining(
        self, claim: Claim, reason: str, message: str, details: dict | None
    ) -> Record:
        """Record ``quarantining``: the reason and the reserved quarantine name."""
        rel = claim.rel_path
        quarantine_rel = self._reserve_in(
            "quarantine_rel", rel.parent, rel.name, claim.id, taken_with_sidecar
        )
        record = self.records.of_claim(claim, State.QUARANTINING)
        record["quarantine_rel"] = str(quarantine_rel)
        record["error"] = {
            "reason": reason,
            "message": message,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "details": json.loads(json.dumps(details or {}, default=str)),
        }
        self.records.write(record)
        return record

    def move_to_quarantine(self, record: Record) -> Path:
        """Write the ``.error.json`` sidecar, then move the original beside it."""
        folder, rel = self._open_destination(record, "quarantine_rel")
        try:
            sidecar = dict(record["error"], instance=self.instance, claim=record["id"])
            sidecar["original_path"] = record["rel_path"]
            sidecar |= {k: record[k] for k in ("size", "sha256", "attempts")}
            sidecar["interrupted"], sidecar["solo_crashes"] = crash_counts(record)
            sidecar_name = f"{rel.name}{SIDECAR_SUFFIX}"
            data = json.dumps(sidecar, indent=2, sort_keys=True).encode() + b"\n"
            temp = Path(temp_name(sidecar_name, record["id"]))
            write_atomic(Path(sidecar_name), data, temp, "sidecar", folder)
            job_sidecar = self.work_sidecar(record)
            if os.path.lexists(job_sidecar):  # travels with its image, never alone
                name = f"{rel.name}{sidecars.SUFFIX}"
                move_into(job_sidecar, folder, name, "quarantine-sidecar")
            work = self.layout.work / record["work_name"]
            if os.path.lexists(work):
                move_into(work, folder, rel.name, "quarantine")  # a symlink moves as itself
            fsync_dir(self.layout.work, "work")
        finally:
            os.close(folder)
        return self.layout.quarantine / rel

    # --- shared by both ends ------------------------------------------------------------

    def drop(self, record: Record) -> None:
        """Last step of every path: forget the record, then its reserved names."""
        self.records.remove(record)
        for key in reserved_keys(record):
            self.reservations.release(key)
        self.active.discard(record["id"])

    def _area(self, field: str) -> tuple[str, Path, int]:
        """``(area, folder, bytes to leave free in a name)`` of a record field naming a place."""
        if field == "archive_rel":
            return "archive", self.layout.archive, len(sidecars.SUFFIX)
        return "quarantine", self.layout.quarantine, max(len(SIDECAR_SUFFIX), len(sidecars.SUFFIX))

    def _reserve_in(
        self,
        field: str,
        parent: PurePosixPath,
        name: str,
        claim_id: str,
        taken: Callable[[Path], bool] = taken_with_sidecar,
    ) -> PurePosixPath:
        area, base, reserve = self._area(field)
        return self.reservations.first_free(
            base, area, parent, lambda n: numbered(name, n, reserve), claim_id, taken
        )

    def _open_destination(self, record: Record, field: str) -> tuple[int, PurePosixPath]:
        """The open folder (and the name in it) that ``record[field]`` names, refiled at the
        top of the area when a symlink or file stands where one of its folders should be."""
        _area, base, _reserve = self._area(field)
        rel = PurePosixPath(record[field])
        try:
            return open_folder(base, rel.parent), rel
        except NotADirectoryError as exc:
            rel = self._refile(record, field, exc)
            return open_folder(base, PurePosixPath()), rel

    def _refile(self, record: Record, field: str, exc: OSError) -> PurePosixPath:
        """File the original at the top of its area under a flattened name instead of
        writing through what is in the way or giving up. The record is rewritten first, so
        a crash resumes this."""
        area = self._area(field)[0]
        flat = flat_name(PurePosixPath(record["rel_path"]))
        rel = self._reserve_in(field, PurePosixPath(), flat, record["id"], taken_with_sidecar)
        logger.warning("{} ({}): filed as {}/{} instead", record["rel_path"], exc, area, rel)
        old, record[field] = record[field], str(rel)
        self.records.write(record)
        self.reservations.release(f"{area}/{old}")
        return rel


def _size_and_hash(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of a claimed file, whose bytes are then made durable: the writer
    may not have flushed them, and the claim record about to say we own them is."""
    with durable.open_regular(path) as handle:
        digest = durable.sha256_stream(handle)
        size = handle.tell()  # the bytes hashed
        step("claim:flush")
        os.fsync(handle.fileno())
    return size, digest
