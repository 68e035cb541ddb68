"""The shared memory between the service and its child: naming, growth, copy in and out, drop.

Segments (``multiprocessing.shared_memory``) are POSIX segments named
``artd-mw-<service pid>-<worker>-<kind>-<token>`` under /dev/shm, all created, grown and
unlinked by the service; the child only attaches:

- ``beat`` (64 bytes): at 0, a float64 ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for
  every process) the child's heartbeat thread writes every ``HEARTBEAT_INTERVAL_S``
  (daemon.workers.child), busy or not (the network releases the GIL, so a long batch keeps
  beating); at 8, an int64: the number of the batch the child has taken (set before anything
  else is done with it, back to 0 before its answer is sent). A death with the batch's number
  there had the batch in it (``WorkerDied``); a death before it was taken, or after it was
  answered, is not the batch's: the worker is restarted and the batch sent again, once.
- ``in``: the batch as one C-contiguous ``(N, H, W, C)`` uint8 array. The service copies each
  image into it: the one copy in. The child hands ``Inference.run`` views of it, whose
  ``np.stack`` is the copy the in-process path makes too.
- ``out``: the results, packed one after the other (daemon.workers.messages): each image's HWC
  uint8 pixels and, for an RGBA result, the model's own composited RGB (what a JPEG is made
  of). The child writes each result there (after ``np.asarray(image)``, the conversion from
  PIL's own pixel layout that any caller of ``Inference.run`` wanting an array pays); the
  service copies each out, the one copy out, so the segment can take the next batch while the
  results are encoded. A result that does not fit (never, while outputs are the inputs' size)
  comes pickled over the pipe instead.

Segments grow (to the next power of two, at least 1 MiB) when a batch needs more and are
reused otherwise; ``LocalModelWorker.stop`` unlinks them. A service killed with ``kill -9``
leaves none behind either: multiprocessing's resource tracker, a process of its own, unlinks
what the service registered once the service and its children are gone.
"""

from __future__ import annotations

import contextlib
import secrets
import struct
from collections.abc import Sequence
from multiprocessing import shared_memory

import numpy as np

SEGMENT_PREFIX = "artd-mw-"
BEAT = struct.Struct("=dq")  # heartbeat time, number of the batch held
_MIN_SEGMENT = 1 << 20


def create(owner: str, kind: str, size: int) -> shared_memory.SharedMemory:
    """A new ``kind`` segment of worker ``owner`` (``<service pid>-<worker>``), at least
    ``size`` bytes."""
    capacity = max(_MIN_SEGMENT if kind != "beat" else 64, 1 << max(0, size - 1).bit_length())
    name = f"{SEGMENT_PREFIX}{owner}-{kind}-{secrets.token_hex(4)}"
    return shared_memory.SharedMemory(name=name, create=True, size=capacity)


def kind_of(name: str) -> str:
    """The kind (``beat``, ``in``, ``out``) a segment's name says."""
    return name.rsplit("-", 2)[-2]


def drop(segment: shared_memory.SharedMemory) -> None:
    with contextlib.suppress(BufferError):  # a view still held: the mapping dies with us
        segment.close()
    with contextlib.suppress(FileNotFoundError):
        segment.unlink()


def copy_in(
    segment: shared_memory.SharedMemory, items: list[np.ndarray], shape: tuple[int, ...]
) -> None:
    """The batch into ``segment`` as one ``(N, H, W, C)`` array: the one copy in."""
    view = np.ndarray((len(items), *shape), np.uint8, buffer=segment.buf)
    for index, item in enumerate(items):
        view[index] = item
    del view


def copy_out(segment: shared_memory.SharedMemory, offset: int, shape: Sequence[int]) -> np.ndarray:
    view = np.ndarray(tuple(shape), np.uint8, buffer=segment.buf, offset=offset)
    try:
        return view.copy()
    finally:
        del view


def put(segment: shared_memory.SharedMemory, offset: int, array: np.ndarray) -> int:
    """Write ``array`` at ``offset``; the offset after it."""
    view = np.ndarray(array.shape, np.uint8, buffer=segment.buf, offset=offset)
    view[...] = array
    del view
    return offset + array.nbytes
