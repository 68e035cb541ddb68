"""Durable file operations: the few system calls every part that writes to disk shares.

Checkpoints, the training run folder, the data cache, ``artd process``, the decoder
processes and the daemon's spool all write and read through these, so "readers see the old
file or the new one, never half" and "never follow a link someone planted" are written once.
The spool passes ``hook`` to number each step for its crash-point tests
(docs/reliability.md); everywhere else it is None and costs nothing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
Hook = Callable[[str], None]
# Some filesystems (certain network mounts) cannot fsync a directory; nothing more to do there.
_DIR_FSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP})


def _noop(_step: str) -> None:
    return None


def fsync_fd(fd: int) -> None:
    """Flush an open folder's entries (a rename or a new file) to disk."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise


def fsync_dir(path: str | os.PathLike[str], hook: Hook | None = None) -> None:
    """Flush a folder's entries to disk; ``hook("dir-flush")`` runs first."""
    (hook or _noop)("dir-flush")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsync_fd(fd)
    finally:
        os.close(fd)


def temp_name_for(path: str | os.PathLike[str]) -> str:
    """A dot-prefixed unique name beside ``path``: watchers and the inbox scan skip dotfiles."""
    return f".{Path(path).name}.{secrets.token_hex(4)}.tmp"


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes | bytearray | memoryview,
    *,
    temp: str | os.PathLike[str] | None = None,
    dir_fd: int | None = None,
    mode: int = 0o666,
    hook: Hook | None = None,
) -> None:
    """temp (same folder) -> fsync -> rename -> fsync folder: readers see old or new, never half.

    The temp (``temp``, else a unique dot-name beside ``path``) is created exclusively, a
    leftover of an earlier try removed first, so a hard link planted at its name is replaced,
    never written through. ``mode`` is masked by the umask as usual. With ``dir_fd``, ``path``
    and ``temp`` are names in that open folder. On any failure the temp is removed and
    ``path`` is untouched. ``hook`` is called with ``temp-open``, ``temp-write``, ``flush``,
    ``rename`` and ``dir-flush`` just before each step. Raises OSError.
    """
    step = hook or _noop
    target = os.fspath(path)
    temp_path = os.fspath(temp) if temp is not None else _beside(target, temp_name_for(target))
    step("temp-open")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp_path, dir_fd=dir_fd)
    fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, mode, dir_fd=dir_fd)
    try:
        try:
            step("temp-write")
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view) :]
            step("flush")
            os.fsync(fd)
        finally:
            os.close(fd)
        step("rename")
        os.replace(temp_path, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):  # the disk may refuse this too (EIO, EROFS)
            os.unlink(temp_path, dir_fd=dir_fd)
        raise
    if dir_fd is None:
        fsync_dir(os.path.dirname(target) or ".", hook)
    else:
        step("dir-flush")
        fsync_fd(dir_fd)


def _beside(target: str, name: str) -> str:
    return os.path.join(os.path.dirname(target), name)


def open_regular(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> BinaryIO:
    """Open for reading without following a symlink or blocking on a FIFO; regular files only.

    Raises OSError: ELOOP for a symlink, EINVAL ("not a regular file") for a folder, FIFO,
    socket or device."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
    return os.fdopen(fd, "rb")


def sha256_stream(handle: BinaryIO) -> str:
    """Hex SHA-256 of what is left to read in ``handle``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a regular file's bytes (links are not followed)."""
    with open_regular(path) as handle:
        return sha256_stream(handle)
