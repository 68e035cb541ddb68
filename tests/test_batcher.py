"""core.runtime.batcher: the timing rules, with a hand-driven clock, and one-shot batches by
shape."""

from __future__ import annotations

import pytest

from core.runtime.batcher import Batcher, by_shape


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_full_group_leaves_at_once_and_shapes_never_mix() -> None:
    batcher: Batcher[int] = Batcher(max_batch=3, max_delay_s=1.0, clock=Clock())
    assert batcher.add((8, 8), 1) is None
    assert batcher.add((16, 8), 2) is None
    assert batcher.add((8, 8), 3) is None
    assert batcher.add((8, 8), 4) == [1, 3, 4]
    assert len(batcher) == 1
    assert batcher.drain() == [[2]]
    assert len(batcher) == 0


def test_partial_group_waits_max_delay_oldest_first() -> None:
    clock = Clock()
    batcher: Batcher[str] = Batcher(max_batch=8, max_delay_s=0.5, clock=clock)
    batcher.add("a", "a1")
    clock.now += 0.2
    batcher.add("b", "b1")
    assert batcher.due() == []
    assert batcher.seconds_to_next() == pytest.approx(0.3)
    clock.now += 0.3
    assert batcher.due() == [["a1"]]
    clock.now += 0.2
    batcher.add("a", "a2")
    assert batcher.due() == [["b1"]]
    assert batcher.seconds_to_next() == pytest.approx(0.5)


def test_zero_delay_sends_every_item_alone_and_empty_has_no_deadline() -> None:
    batcher: Batcher[int] = Batcher(max_batch=4, max_delay_s=0.0, clock=Clock())
    assert batcher.seconds_to_next() is None
    batcher.add("k", 1)
    assert batcher.due() == [[1]]
    with pytest.raises(ValueError):
        Batcher(max_batch=0, max_delay_s=0.1)


def test_by_shape_chunks_each_shape_in_order_and_never_mixes_them() -> None:
    items = ["a1", "b1", "a2", "a3", "b2", "a4", "c1"]
    batches = list(by_shape(items, shape=lambda item: item[0], max_batch=3))
    assert batches[0] == ["a1", "a2", "a3"]  # full: out at once
    assert sorted(batches[1:]) == [["a4"], ["b1", "b2"], ["c1"]]
    assert list(by_shape([], shape=len, max_batch=2)) == []
