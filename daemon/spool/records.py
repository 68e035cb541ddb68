"""Claim records: ``.artd/work/<instance>/<id>.json`` beside each claimed file.

A record is a JSON object, written atomically *before* the move its state announces
(docs/spool.md). Its ``state`` is one of :class:`State`; the other fields are those of
:class:`Claim` (``work_name`` for its path) plus, once chosen, ``archive_rel``,
``quarantine_rel`` and ``error``, ``sidecar_rel`` (the job sidecar found beside the file at
claim time; in work/ it is ``<id>.artd.json``) and ``job`` (the settings resolved at claim
time, fixed from then on). Every path in it is relative and checked on reading, so a planted
record cannot point anywhere else. Records written before ``interrupted`` and
``solo_crashes`` existed load with ``attempts - 1`` interruptions and no solo crash; the
``solo`` marker of records written by versions that ran the model in the service is dropped
by recovery, never charged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from loguru import logger

from core import durable
from daemon.spool.crash_points import fsync_dir, step, write_atomic
from daemon.spool.names import ID_LEN, temp_name

Record = dict[str, Any]
_RELATIVE_FIELDS = ("output_rel", "archive_rel", "quarantine_rel", "sidecar_rel")


class State(StrEnum):
    """A record's state; each is written before the move it announces."""

    CLAIMING = "claiming"  # intent, before the rename out of the inbox (keeps the relative path)
    CLAIMED = "claimed"  # the file is ours, hashed, its output name reserved
    COMMITTED = "committed"  # the output is final; archiving the original and clean-up remain
    QUARANTINING = "quarantining"  # reason and quarantine name fixed; sidecar and move remain


_STATES = tuple(State)


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
    # Restarts that found this claim unfinished (for the record: the service's death charges
    # nothing), and the solo crashes of a model worker charged to it (daemon.workers.ledger:
    # set by the pipeline when it quarantines the file as crashed_repeatedly, so the sidecar
    # says; records of versions that ran the model in the service may carry older counts).
    interrupted: int = 0
    solo_crashes: int = 0
    # The settings resolved at claim time (daemon.settings.jobs.Resolver.resolve); None without
    # a resolver (the spool alone, as its tests drive it).
    job: dict[str, Any] | None = None

    @property
    def suspect(self) -> bool:
        """Interrupted before (informational: it is processed like any other claim)."""
        return self.interrupted > 0


def intent(claim_id: str, rel_path: str, work_name: str) -> Record:
    """The ``claiming`` record of a file about to be (or found) in work/ as ``work_name``."""
    record: Record = {"id": claim_id, "state": State.CLAIMING, "rel_path": rel_path}
    return record | {"work_name": work_name, "attempts": 0, "claimed_at": time.time()}


def crash_counts(record: Record) -> tuple[int, int]:
    """``(interrupted, solo_crashes)`` of a record; older records only had ``attempts``."""
    interrupted = record.get("interrupted", max(0, int(record["attempts"]) - 1))
    return int(interrupted), int(record.get("solo_crashes", 0))


def reserved_keys(record: Record) -> Iterator[str]:
    """The reservation keys a claim record holds: ``<area>/<relative path>``."""
    for area, field in (("outbox", "output_rel"), ("archive", "archive_rel")):
        if field in record:
            yield f"{area}/{record[field]}"
    if "quarantine_rel" in record:
        yield f"quarantine/{record['quarantine_rel']}"


def held_reservations(work_root: Path) -> dict[str, set[str] | None]:
    """Claim id -> the reservation keys its record holds, for every instance's records
    (adoption staging folders included); None where a record cannot be read: keep all."""
    held: dict[str, set[str] | None] = {}
    for path in [*work_root.glob("*/*.json"), *work_root.glob("*/.adopt-*/*.json")]:
        if len(path.name) != ID_LEN + len(".json"):
            continue  # a job sidecar (<id>.artd.json) or a stranger: not a record
        try:
            held[path.name[:ID_LEN]] = set(reserved_keys(json.loads(path.read_bytes())))
        except (OSError, ValueError, KeyError, TypeError):
            held[path.name[:ID_LEN]] = None
    return held


def _safe_rel(value: object) -> PurePosixPath | None:
    rel = PurePosixPath(str(value))
    if not isinstance(value, str) or rel.is_absolute() or not rel.parts:
        return None
    return None if any(p in ("", ".", "..") for p in rel.parts) else rel


class Records:
    """The records of one instance's work folder."""

    def __init__(self, work_dir: Path, instance: str) -> None:
        self.work_dir = work_dir
        self.instance = instance

    def path(self, claim_id: str) -> Path:
        """Where the record of ``claim_id`` lives."""
        return self.work_dir / f"{claim_id}.json"

    def write(self, record: Record, prefix: str | None = None) -> None:
        """Write (or replace) ``record`` atomically, stamped with this instance; its steps
        are named ``prefix`` (default ``record-<state>``)."""
        record["instance"] = self.instance
        path = self.path(record["id"])
        data = json.dumps(record, sort_keys=True).encode()
        temp = self.work_dir / temp_name(path.name, record["id"])
        write_atomic(path, data, temp, prefix or f"record-{record['state']}")

    def read(self, claim_id: str) -> Record | None:
        """The record of ``claim_id``; None (logged) if unreadable or not a valid record."""
        path = self.path(claim_id)
        try:
            with durable.open_regular(path) as handle:
                record = json.loads(handle.read())
            rels = [record[k] for k in ("rel_path", "work_name")]
            rels += [record[k] for k in _RELATIVE_FIELDS if k in record]
            valid = record["id"] == claim_id and all(_safe_rel(r) for r in rels)
            valid = valid and record["state"] in _STATES
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.error("unreadable claim record {}: {}", path, exc)
            return None
        if not valid or len(PurePosixPath(record["work_name"]).parts) != 1:
            logger.error("claim record {} is not one of ours; ignoring it", path)
            return None
        return record

    def remove(self, record: Record) -> None:
        """Delete the record, durably."""
        step("record:unlink")
        self.path(record["id"]).unlink(missing_ok=True)
        fsync_dir(self.work_dir, "record")

    def of_claim(self, claim: Claim, state: State) -> Record:
        """The record that persists ``claim`` in ``state``."""
        record: Record = {
            "id": claim.id,
            "state": state,
            "instance": self.instance,
            "rel_path": str(claim.rel_path),
            "work_name": claim.work_path.name,
            "size": claim.size,
            "sha256": claim.sha256,
            "attempts": claim.attempts,
            "interrupted": claim.interrupted,
            "solo_crashes": claim.solo_crashes,
            "output_rel": str(claim.output_rel),
            "claimed_at": claim.claimed_at,
        }
        if claim.job is not None:
            record["job"] = claim.job
        return record

    def claim_of(self, record: Record) -> Claim:
        """The :class:`Claim` a record describes."""
        interrupted, solo_crashes = crash_counts(record)
        return Claim(
            id=record["id"],
            work_path=self.work_dir / record["work_name"],
            rel_path=PurePosixPath(record["rel_path"]),
            size=int(record["size"]),
            sha256=record["sha256"],
            attempts=int(record["attempts"]),
            output_rel=PurePosixPath(record["output_rel"]),
            claimed_at=float(record["claimed_at"]),
            interrupted=interrupted,
            solo_crashes=solo_crashes,
            job=record.get("job") if isinstance(record.get("job"), dict) else None,
        )
