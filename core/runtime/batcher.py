"""Shape-grouped batching, the one batcher of the inference path.

Only images of one shape stack into one tensor. The daemon batches dynamically: a batch
leaves when full or when its oldest item is due (:class:`Batcher`). ``artd process`` and
``Engine.run_images`` have everything at hand and take :func:`by_shape`'s batches at once. Pure
bookkeeping with an injectable clock, so its timing rules are testable without threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


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


def by_shape(
    items: Iterable[T], shape: Callable[[T], Hashable], max_batch: int
) -> Iterator[list[T]]:
    """``items`` in batches of one ``shape(item)`` and at most ``max_batch``, nothing waiting:
    each full batch as soon as it fills, then the partial ones. Within a shape the items
    keep their order, so the batches are the same whatever the other shapes are."""
    batcher: Batcher[T] = Batcher(max_batch, max_delay_s=0.0)
    for item in items:
        full = batcher.add(shape(item), item)
        if full:
            yield full
    yield from batcher.drain()


def map_by_shape(
    items: Sequence[T],
    shape: Callable[[T], Hashable],
    max_batch: int,
    run: Callable[[list[T]], Sequence[R]],
) -> list[R]:
    """``run`` on :func:`by_shape`'s batches of ``items``: one result per item, in order."""
    results: list[R | None] = [None] * len(items)
    for batch in by_shape(range(len(items)), lambda i: shape(items[i]), max_batch):
        for i, result in zip(batch, run([items[i] for i in batch]), strict=True):
            results[i] = result
    return results  # type: ignore[return-value]
