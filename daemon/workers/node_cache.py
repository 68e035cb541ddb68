"""A checkpoint's bytes as a file on a Ray node: ``<temp>/artd-checkpoints/<sha256>/<name>``.

A Ray actor gets the checkpoint's bytes (through the object store), not a path: its node may
not see the service's disk. Both kinds of actor load from a file here: the daemon's model
actors (daemon.workers.ray_actor) and the actors of ``artd process --ray``
(daemon.oneshot_ray), whose supervised model worker reloads from it after a crash. An entry is
written once per node and checkpoint (atomically, and checked against its sha256 before it is
reused); entries nobody used for :data:`IDLE_S` are removed by the next writer.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from core.durable import write_atomic

FOLDER = "artd-checkpoints"  # under the node's temp folder
IDLE_S = 3600.0  # an entry nobody used for this long is removed


def node_checkpoint(name: str, sha256: str, fetch: Callable[[], bytes]) -> Path:
    """The checkpoint ``sha256`` as a file named ``name`` (the loader reads an epoch from the
    name) on this node; ``fetch()`` gives its bytes when the file is not here yet. Raises
    OSError when this node's disk cannot hold it."""
    cache = Path(tempfile.gettempdir(), FOLDER)
    folder = cache / sha256
    path = folder / (name or "model")
    try:
        fresh = hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except OSError:
        fresh = False
    if not fresh:
        data = fetch()
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    touch(folder)
    now = time.time()
    for entry in cache.iterdir():
        with contextlib.suppress(OSError):
            if entry != folder and now - entry.stat().st_mtime > IDLE_S:
                shutil.rmtree(entry)
    return path


def touch(folder: Path) -> None:
    """Mark an entry as in use (an actor whose worker may reload from it does this at every
    batch)."""
    with contextlib.suppress(OSError):
        os.utime(folder)
