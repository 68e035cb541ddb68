"""Reserved names in ``.artd/reserved/``: which claim will write which output, archive or
quarantine name, so that racing instances never pick one name.

A reservation is keyed ``<area>/<relative path>`` and stored under the key's SHA-1. It is a
dangling symlink whose target names the owner ``<instance>/<claim id>`` (as Emacs lock files
are): created exclusively *with* its content, so a kill leaves none half-written. It is only
ever read with readlink, never followed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from daemon.sidecars import SUFFIX as JOB_SIDECAR_SUFFIX
from daemon.spool.crash_points import step
from daemon.spool.errors import SpoolError
from daemon.spool.names import ID_RE, SIDECAR_SUFFIX

_MAX_NAME_TRIES = 10_000


def owner(path: Path) -> tuple[str, str] | None:
    """``(instance, claim id)`` of a reservation, None if it is not one."""
    try:
        instance, _, claim_id = os.readlink(path).partition("/")
    except OSError:
        return None
    return (instance, claim_id) if ID_RE.fullmatch(claim_id) else None


def taken_with_sidecar(path: Path) -> bool:
    """An archive or quarantine name is taken when the file, its ``.error.json`` or its job
    sidecar (``.artd.json``) exists."""
    return any(
        os.path.lexists(f"{path}{tail}") for tail in ("", SIDECAR_SUFFIX, JOB_SIDECAR_SUFFIX)
    )


class Reservations:
    """The reservations folder, as one instance sees it."""

    def __init__(self, folder: Path, instance: str) -> None:
        self.folder = folder
        self.instance = instance

    def path(self, key: str) -> Path:
        """Where the reservation of ``key`` lives."""
        digest = hashlib.sha1(os.fsencode(key), usedforsecurity=False).hexdigest()
        return self.folder / digest

    def reserve(self, key: str, claim_id: str) -> bool:
        """Reserve ``key`` for ``claim_id``; True also when this claim holds it already."""
        path = self.path(key)
        step("reserve")
        try:
            os.symlink(f"{self.instance}/{claim_id}", path)
        except FileExistsError:
            return owner(path) == (self.instance, claim_id)
        return True

    def release(self, key: str) -> None:
        """Give up the reservation of ``key`` (whoever holds it: callers hold their own)."""
        step("unreserve")
        self.path(key).unlink(missing_ok=True)

    def first_free(
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
            if taken(base / rel) or not self.reserve(f"{area}/{rel}", claim_id):
                continue
            if taken(base / rel):  # finished by a peer just before we reserved
                self.release(f"{area}/{rel}")
                continue
            return rel
        raise SpoolError(f"no free name for {parent / name(1)} in {base}")

    def sweep(self, owners: set[str], held: dict[str, set[str] | None], active: set[str]) -> None:
        """Drop the reservations of ``owners`` that no record and no active claim holds.

        ``held`` maps each claim id with a record to the keys it reserves (None: the record
        is unreadable, keep all its reservations)."""
        names = {
            claim_id: None if keys is None else {self.path(key).name for key in keys}
            for claim_id, keys in held.items()
        }
        for entry in os.scandir(self.folder):
            found = owner(Path(entry.path))
            if found is None:
                step("sweep:unlink")
                os.unlink(entry.path)  # not a reservation of ours
                continue
            # An active claim without a record is in the middle of claim().
            kept = names.get(found[1], None if found[1] in active else set())
            if found[0] in owners and kept is not None and entry.name not in kept:
                step("sweep:unreserve")
                os.unlink(entry.path)
