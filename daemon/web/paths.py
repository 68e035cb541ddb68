"""URL paths to files inside one allowed folder: nothing outside it is ever opened.

A relative path from a URL is decoded once, then refused when it is absolute, empty, holds
``.``/``..``/empty parts, a NUL, a backslash or a dot-name (the spool's temporary files),
or is longer than a file system allows. The file is then reached one component at a time,
each opened relative to the last with ``O_NOFOLLOW`` (daemon.spool.folders.open_folder), so
a symlink anywhere on the way (planted, or swapped in mid-request) is refused, not
followed. Only regular files are opened, and served files must have a single link: a hard
link placed in the outbox cannot expose a file that lives elsewhere.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from core.durable import NOFOLLOW
from daemon.spool.folders import open_folder

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


class BadPath(ValueError):
    """The path can never name a file the page serves (-> 400)."""


def parse_rel(raw: str) -> PurePosixPath:
    """A URL path segment (still percent-encoded) as a safe relative path; BadPath if not."""
    try:
        text = unquote(raw, errors="strict")
    except UnicodeDecodeError as exc:
        raise BadPath("not UTF-8") from exc
    return check_rel(text)


def check_rel(text: str) -> PurePosixPath:
    """``text`` (decoded) as a relative path with only plain parts; BadPath otherwise."""
    if not text or "\x00" in text or "\\" in text:
        raise BadPath("empty, NUL or backslash")
    if len(os.fsencode(text)) > MAX_PATH_BYTES:
        raise BadPath("too long")
    if text.startswith("/"):
        raise BadPath("absolute")
    parts = text.split("/")
    for part in parts:
        if part in ("", ".", "..") or part.startswith("."):
            raise BadPath("empty, dot or dot-dot part")
        if len(os.fsencode(part)) > MAX_NAME_BYTES:
            raise BadPath("name too long")
    return PurePosixPath(*parts)


def open_inside(base: Path, rel: PurePosixPath, *, single_link: bool = False) -> int:
    """A read descriptor of the regular file ``base/rel``, reached without following any
    symlink. OSError (ENOENT, ELOOP, ENOTDIR, EINVAL) when there is no such file."""
    folder = open_folder(base, rel.parent, create=False)
    try:
        fd = os.open(rel.name, os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW, dir_fd=folder)
    finally:
        os.close(folder)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or (single_link and info.st_nlink != 1):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a plain regular file", str(rel))
    return fd


def lstat_inside(base: Path, rel: PurePosixPath) -> os.stat_result | None:
    """``lstat`` of ``base/rel`` reached without following symlinks; None if not there."""
    try:
        folder = open_folder(base, rel.parent, create=False)
    except OSError:
        return None
    try:
        return os.stat(rel.name, dir_fd=folder, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(folder)
