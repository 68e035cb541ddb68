"""Shape-grouped dynamic batching: a batch leaves when full or when its oldest item is due.

Pure bookkeeping with an injectable clock, so its timing rules are testable without threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Group(Generic[T]):
    first_at: float
    items: list[T] = field(default_factory=list)


class Batcher(Generic[T]):
    """Collects items per key (the image shape: only equal shapes stack into one tensor)."""

    def __init__(
        self,
        max_batch: int,
        max_delay_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._clock = clock
        self._groups: dict[Hashable, _Group[T]] = {}

    def __len__(self) -> int:
        return sum(len(group.items) for group in self._groups.values())

    def add(self, key: Hashable, item: T) -> list[T] | None:
        """Queue ``item``; returns its group as a batch at once when that fills it."""
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(self._clock())
        group.items.append(item)
        if len(group.items) >= self.max_batch:
            del self._groups[key]
            return group.items
        return None

    def due(self) -> list[list[T]]:
        """Every group whose oldest item has waited ``max_delay_s``, oldest first."""
        now = self._clock()
        ready = [
            key for key, group in self._groups.items() if now - group.first_at >= self.max_delay_s
        ]
        ready.sort(key=lambda key: self._groups[key].first_at)
        return [self._groups.pop(key).items for key in ready]

    def seconds_to_next(self) -> float | None:
        """Time until the next group is due (None when nothing waits)."""
        if not self._groups:
            return None
        oldest = min(group.first_at for group in self._groups.values())
        return max(0.0, oldest + self.max_delay_s - self._clock())

    def drain(self) -> list[list[T]]:
        """Everything still waiting, regardless of age (shutdown)."""
        batches = [group.items for group in self._groups.values()]
        self._groups.clear()
        return batches
