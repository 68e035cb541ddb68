"""The crash-charging rule: which file a dead worker is charged to (:class:`CrashLedger`), pure
logic in the service's memory (docs/spool.md, "Model workers": "What charges a file")."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

SOLO_CRASH_LIMIT = 3  # CrashLedger: consecutive solo crashes that quarantine a file

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class CrashVerdict(Generic[K]):
    """What to do with the files of a batch whose worker died: ``retry`` these batches (in
    order), quarantine ``quarantine`` as ``crashed_repeatedly``; ``charged`` got a solo crash."""

    retry: list[list[K]] = field(default_factory=list)
    quarantine: list[K] = field(default_factory=list)
    charged: list[K] = field(default_factory=list)


class CrashLedger(Generic[K]):
    """Which file a dead worker is charged to, in memory, keyed by claim (any hashable key).

    - A batch of two or more whose worker died is retried as its two halves (down to single
      files); none of its files is charged.
    - A file is charged a *solo crash* only when it was alone in a worker that died **and**
      it had been in a worker that died before (it was already a suspect): a file that
      happened to be alone at its first death (a quiet inbox) is not charged for it.
    - A file is quarantined after ``limit`` (:data:`SOLO_CRASH_LIMIT`, 3) *consecutive* solo
      crashes: each counted death had it alone, and nothing of it succeeded in between.
    - Any answer from the worker for a file (an image or its own InferenceError) clears it.

    So a poison is set aside after at most ``max(1, ceil(log2(batch))) + limit`` worker deaths
    (4 alone, 8 in a batch of 32) while its batch-mates come out. An operator's ``kill -9``
    cannot charge a file it did not kill twice, the second time alone, nor quarantine one with
    fewer than ``max(1, ceil(log2(batch))) + limit`` kills, each landing while that file's
    shrinking share of its batch was in the worker. A plain ``kill`` (SIGTERM) never charges:
    the worker answers its batch first. The service's own death charges nothing: the ledger
    lives in its memory and starts empty. Thread-safe: batches on a pool of workers (Ray
    actors) die and succeed concurrently."""

    def __init__(self, limit: int = SOLO_CRASH_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self._deaths: dict[K, int] = {}
        self._solo: dict[K, int] = {}
        self._lock = threading.RLock()

    def died(self, batch: Sequence[K]) -> CrashVerdict[K]:
        """The worker died with ``batch`` in it (:class:`WorkerDied`)."""
        if not batch:
            raise ValueError("a worker cannot die of an empty batch")
        with self._lock:
            return self._died(batch)

    def _died(self, batch: Sequence[K]) -> CrashVerdict[K]:
        suspects = {key: self._deaths.get(key, 0) > 0 for key in batch}
        for key in batch:
            self._deaths[key] = self._deaths.get(key, 0) + 1
        if len(batch) > 1:
            half = len(batch) // 2
            return CrashVerdict(retry=[list(batch[:half]), list(batch[half:])])
        key = batch[0]
        if not suspects[key]:
            return CrashVerdict(retry=[[key]])
        self._solo[key] = self._solo.get(key, 0) + 1
        if self._solo[key] >= self.limit:
            self.forget([key])
            return CrashVerdict(quarantine=[key], charged=[key])
        return CrashVerdict(retry=[[key]], charged=[key])

    def succeeded(self, keys: Iterable[K]) -> None:
        """The worker answered for these files (result or per-item error): counts cleared."""
        self.forget(keys)

    def forget(self, keys: Iterable[K]) -> None:
        """These files left the pipeline otherwise (quarantined, released, stopping)."""
        with self._lock:
            for key in keys:
                self._deaths.pop(key, None)
                self._solo.pop(key, None)

    def solo_crashes(self, key: K) -> int:
        return self._solo.get(key, 0)

    def deaths(self, key: K) -> int:
        return self._deaths.get(key, 0)

    def __len__(self) -> int:
        return len(self._deaths)
