"""The ``current`` pointer: the symlink naming the checkpoint the daemon serves.

Only a promotion moves it (the trainer's gate, or an operator); the daemon follows it on
every reload (``load_checkpoint`` resolves it through :func:`~core.checkpoint.resolve_current`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from loguru import logger

from core.checkpoint.files import load_checkpoint
from core.checkpoint.meta import CheckpointError
from core.durable import fsync_dir, temp_name_for


def promote(current: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Atomically make the symlink ``current`` point at ``target``.

    ``target`` must load and validate first. The link is relative when ``target`` lies under
    ``current``'s folder (the tree can then be moved or mounted elsewhere), absolute otherwise.
    A new link is made beside ``current`` under a dot-name and renamed over it, so readers
    see the old target or the new one, never nothing; a regular file at ``current`` is
    replaced, a directory is refused.
    """
    pointer = Path(current)
    real_target = load_checkpoint(target).path
    try:
        folder = pointer.parent.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"cannot use the pointer's folder: {exc}", pointer) from exc
    if real_target.is_relative_to(folder):
        link_text = os.path.relpath(real_target, folder)
    else:
        link_text = str(real_target)
    temp_link = folder / temp_name_for(pointer)
    try:
        os.symlink(link_text, temp_link)
        try:
            os.replace(temp_link, folder / pointer.name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_link)
            raise
        fsync_dir(folder)
    except OSError as exc:
        raise CheckpointError(f"cannot point at {real_target}: {exc}", pointer) from exc
    logger.info("promoted {} -> {}", pointer, link_text)
