"""Restart: finish or resume what killed processes left, adopt dead instances' work, and
sweep stale reservations and temporary files."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path, PurePosixPath

from loguru import logger

from daemon import sidecars
from daemon.spool.crash_points import fsync_dir, step
from daemon.spool.folders import try_lock, unlink_inside, unlock
from daemon.spool.names import (
    ID_LEN,
    ID_RE,
    INSTANCE_RE,
    TEMP_MARK,
    new_claim_id,
    temp_name,
    temp_owner,
)
from daemon.spool.records import (
    Claim,
    Record,
    State,
    crash_counts,
    held_reservations,
    intent,
)
from daemon.spool.transitions import Machine

STALE_TEMP_SECONDS = 3600.0
_ADOPT = ".adopt-"


class Recovery:
    """What a start does before taking new files, for one instance (lock held)."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.layout = machine.layout

    def recover(self) -> list[Claim]:
        """Finish or resume this instance's leftovers; each resumed claim counts one more
        interruption, which charges it nothing (:func:`interrupted`)."""
        self._merge_adopted()
        claims = self._recover_work(only=None)
        self._sweep_reservations(owners={self.machine.instance})
        self._sweep_temps()
        return claims

    def adopt_stale(self) -> list[Claim]:
        """Take over the work of instances whose lock is free (dead), then as recover()."""
        with os.scandir(self.layout.work_root) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.name != self.machine.instance and INSTANCE_RE.fullmatch(entry.name):
                self._adopt(entry)
        return self._recover_work(only=self._merge_adopted())

    # --- adoption -----------------------------------------------------------------------

    def _adopt(self, entry: os.DirEntry[str]) -> None:
        """Move instance ``entry.name``'s work folder into ours if its lock is free."""
        other = entry.name
        try:
            if not entry.is_dir(follow_symlinks=False) or not os.listdir(entry.path):
                return
        except FileNotFoundError:
            return  # a peer adopted it
        fd = try_lock(self.layout.locks / f"{other}.lock")
        if fd is None:
            return  # alive
        try:
            # One rename moves records and files together; merged into ours below.
            step("adopt:rename")
            os.rename(entry.path, self.layout.work / f"{_ADOPT}{other}-{new_claim_id()}")
            fsync_dir(self.layout.work, "adopt")
            fsync_dir(self.layout.work_root, "adopt")
            logger.warning("adopting the unfinished work of dead instance {!r}", other)
            self._sweep_reservations(owners={other})
        except FileNotFoundError:
            pass  # a peer adopted it first
        finally:
            unlock(fd)

    def _merge_adopted(self) -> set[str]:
        """Move files out of ``.adopt-*`` staging folders into work/ (idempotent, resumable)."""
        moved: set[str] = set()
        seen: set[Path] = set()
        while pending := [p for p in self.layout.work.glob(f"{_ADOPT}*") if p not in seen]:
            for staging in pending:
                seen.add(staging)
                if stat.S_ISDIR(os.lstat(staging).st_mode):
                    moved |= self._merge_staging(staging)
        return moved

    def _merge_staging(self, staging: Path) -> set[str]:
        moved: set[str] = set()
        work = self.layout.work
        with os.scandir(staging) as it:
            entries = list(it)
        for entry in entries:
            target = work / entry.name
            if entry.name.startswith(_ADOPT):  # the dead instance was adopting, too
                target = work / f"{_ADOPT}nested-{new_claim_id()}"
            elif entry.name.startswith("."):
                if not entry.is_dir(follow_symlinks=False):
                    step("adopt:unlink")
                    os.unlink(entry.path)  # a half-written record of the dead instance
                continue
            if os.path.lexists(target):
                logger.error("not adopting {}: {} exists", entry.path, target)
                continue
            step("adopt:merge")
            os.rename(entry.path, target)
            moved.add(entry.name[:ID_LEN])
        fsync_dir(work, "adopt")
        try:
            staging.rmdir()
        except OSError as exc:
            logger.error("cannot remove adoption folder {}: {}", staging, exc)
        return moved

    # --- this instance's claims ---------------------------------------------------------

    def _recover_work(self, only: set[str] | None) -> list[Claim]:
        records, works = self._scan_work(only)
        claims = []
        for claim_id in sorted(records | works.keys()):
            record = self.machine.records.read(claim_id) if claim_id in records else None
            if record is None and claim_id in works:
                record = self._rebuild(claim_id, works[claim_id])
            if record is None:
                continue
            try:
                claim = self._resume(record)
            except OSError as exc:  # one claim the disk refuses must not stop the start
                logger.error("cannot resume claim {} ({}): {}", claim_id, record["rel_path"], exc)
                self.machine.active.discard(claim_id)
                continue
            if claim is not None:
                claims.append(claim)
        return claims

    def _scan_work(self, only: set[str] | None) -> tuple[set[str], dict[str, str]]:
        """Claim ids with a record, and claim id -> work name of the files, in work/ (not
        the active ones, only those in ``only`` if given); record writes cut short go."""
        records: set[str] = set()
        works: dict[str, str] = {}
        sidecar_ids: set[str] = set()
        with os.scandir(self.layout.work) as it:
            for entry in it:
                name, claim_id = entry.name, entry.name.lstrip(".")[:ID_LEN]
                if claim_id in self.machine.active or (only is not None and claim_id not in only):
                    continue
                if name.startswith("."):
                    if TEMP_MARK in name and not entry.is_dir(follow_symlinks=False):
                        step("recover:unlink")
                        os.unlink(entry.path)  # a record write cut short
                elif not ID_RE.fullmatch(claim_id):
                    message = f"unexpected file in {self.layout.work}: {name}"
                    self.machine.warn_once(entry.path, message)
                elif name == f"{claim_id}.json":
                    records.add(claim_id)
                elif name == f"{claim_id}{sidecars.SUFFIX}":
                    sidecar_ids.add(claim_id)  # travels with its claim, never one by itself
                else:
                    works[claim_id] = name
        for claim_id in sidecar_ids - records - works.keys():
            # Neither record nor image (a hand-made mess): never processed as an image.
            path = self.layout.work / f"{claim_id}{sidecars.SUFFIX}"
            logger.warning("removing {}: a job sidecar without its claim", path)
            step("recover:sidecar-unlink")
            path.unlink(missing_ok=True)
        return records, works

    def _rebuild(self, claim_id: str, work_name: str) -> Record:
        # The relative path is lost (hand-placed file or broken record): keep the name.
        logger.warning("rebuilding the lost record of {}", work_name)
        record = intent(claim_id, work_name, work_name)
        rel = PurePosixPath(work_name)
        record["output_rel"] = str(self.machine.reserve_output(rel, claim_id))
        self.machine.records.write(record)
        return record

    def _resume(self, record: Record) -> Claim | None:
        machine = self.machine
        state, claim_id = record["state"], record["id"]
        if state == State.COMMITTED:
            machine.dispose_original(record)
            machine.drop(record)
            return None
        if state == State.QUARANTINING:
            machine.move_to_quarantine(record)
            machine.drop(record)
            return None
        if "output_rel" in record:
            output_rel = PurePosixPath(record["output_rel"])
            temp = temp_name(output_rel.name, claim_id)
            unlink_inside(self.layout.outbox / output_rel.parent / temp)
        if state == State.CLAIMED and machine.output_published(record):
            machine.finish_published(record)  # before any weighing: it is done
            return None
        if not os.path.lexists(self.layout.work / record["work_name"]):
            if state != State.CLAIMING:  # claiming: the rename never happened; the inbox has it
                logger.error("claim {} lost its file {}; dropping it", claim_id, record["rel_path"])
            if os.path.lexists(machine.work_sidecar(record)):
                step("recover:sidecar-unlink")
                machine.work_sidecar(record).unlink()
            machine.drop(record)
            return None
        machine.active.add(claim_id)
        if state == State.CLAIMING:
            return machine.settle(record, attempts=1)
        output_rel = PurePosixPath(record["output_rel"])
        if not machine.reservations.reserve(f"outbox/{output_rel}", claim_id):
            logger.warning("output {} of claim {} is reserved by another", output_rel, claim_id)
        machine.records.write(interrupted(record))
        return machine.records.claim_of(record)

    # --- sweeps -------------------------------------------------------------------------

    def _sweep_reservations(self, owners: set[str]) -> None:
        held = held_reservations(self.layout.work_root)
        self.machine.reservations.sweep(owners, held, self.machine.active)

    def _sweep_temps(self) -> None:
        """Our crashed writes in outbox/ and quarantine/, and anyone's older than an hour."""
        ours = {p.name[:ID_LEN] for p in self.layout.work.glob("*.json")}  # sidecars: same ids
        cutoff = time.time() - STALE_TEMP_SECONDS
        for top in (self.layout.outbox, self.layout.quarantine):
            for folder, _dirs, files in os.walk(top):
                for name in files:
                    claim_id = temp_owner(name)
                    if claim_id is None:
                        continue
                    path = Path(folder) / name
                    try:
                        stale = os.lstat(path).st_mtime < cutoff
                    except FileNotFoundError:
                        continue
                    if claim_id not in self.machine.active and (claim_id in ours or stale):
                        step("sweep:unlink")
                        path.unlink(missing_ok=True)


def interrupted(record: Record) -> Record:
    """A ``claimed`` record found by a restart: one more attempt and interruption. The
    service's own death never charges a file: a ``solo`` marker (written by artd versions
    that ran the model in the service) is dropped, ``solo_crashes`` kept as it was."""
    was_interrupted, solo_crashes = crash_counts(record)
    if record.pop("solo", False):
        logger.info(
            "{} was alone in the model when an earlier artd's process died: not charged "
            "(the service's own death never charges a file)",
            record["rel_path"],
        )
    record["attempts"] = int(record["attempts"]) + 1
    record["interrupted"] = was_interrupted + 1
    record["solo_crashes"] = solo_crashes
    return record
