"""The spool's folders, and reaching into them without following a symlink.

Folders under inbox/, outbox/, archive/ and quarantine/ are opened one component at a time
with ``O_NOFOLLOW`` and every move or write in them goes through that descriptor, so a
folder swapped for a symlink mid-way cannot redirect it outside ``root``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from core.durable import NOFOLLOW
from daemon.spool.crash_points import step
from daemon.spool.errors import SpoolError

STATE_DIR = ".artd"


@dataclass(frozen=True)
class Layout:
    """Where everything of one instance lives under ``root`` (all on one filesystem)."""

    root: Path
    inbox: Path
    outbox: Path
    quarantine: Path
    archive: Path
    state: Path
    work_root: Path  # .artd/work: one folder per instance
    work: Path  # this instance's claims and records
    locks: Path
    reserved: Path
    heartbeats: Path

    @classmethod
    def of(cls, root: Path, instance: str) -> Layout:
        """The layout under ``root`` (already resolved) for ``instance``."""
        state = root / STATE_DIR
        return cls(
            root=root,
            inbox=root / "inbox",
            outbox=root / "outbox",
            quarantine=root / "quarantine",
            archive=root / "archive",
            state=state,
            work_root=state / "work",
            work=state / "work" / instance,
            locks=state / "locks",
            reserved=state / "reserved",
            heartbeats=state / "heartbeats",
        )

    def shared_folders(self) -> list[Path]:
        """The folders every instance shares, root first (its own work folder is not one)."""
        return [
            *(self.root, self.inbox, self.outbox, self.quarantine, self.archive, self.state),
            *(self.work_root, self.locks, self.reserved, self.heartbeats),
        ]


def kind(mode: int) -> str:
    """What a non-regular file is, in words: ``symlink``, ``folder``, ``FIFO``, ..."""
    kinds = {stat.S_ISLNK: "symlink", stat.S_ISDIR: "folder", stat.S_ISFIFO: "FIFO"}
    kinds |= {stat.S_ISSOCK: "socket", stat.S_ISCHR: "device", stat.S_ISBLK: "device"}
    return next((name for test, name in kinds.items() if test(mode)), "special file")


def create_folders(layout: Layout) -> None:
    """Create the shared folders; refuse symlinks, other filesystems and unwritable folders."""
    folders = layout.shared_folders()
    for folder in folders:
        try:
            folder.mkdir(parents=folder == layout.root, exist_ok=True)
            mode = os.lstat(folder).st_mode
        except OSError as exc:
            raise SpoolError(f"cannot create folder {folder}: {exc}") from exc
        if not stat.S_ISDIR(mode):
            raise SpoolError(f"{folder} is a {kind(mode)}; spool folders must be real folders")
    root_dev = os.lstat(layout.root).st_dev
    foreign = [str(f) for f in folders if os.lstat(f).st_dev != root_dev]
    if foreign:
        raise SpoolError(
            f"spool folders must be on the filesystem of {layout.root} (moves are renames); "
            f"on another one: {', '.join(foreign)}"
        )
    unwritable = [str(f) for f in folders[1:] if not can_write(f)]
    if unwritable:
        raise SpoolError(f"cannot write in folder(s): {', '.join(unwritable)}")
    if not can_symlink(layout.reserved):
        raise SpoolError(
            f"cannot create symlinks in {layout.reserved} (output reservations are symlinks); "
            "on an SMB share, mount it with the mfsymlinks option (docs/network-shares.md)"
        )


def can_symlink(folder: Path) -> bool:
    """Create, read back and remove a symlink in ``folder``: what smbnetfs, and kernel CIFS
    without ``mfsymlinks``, refuse (ENOSYS, EPERM) once files are already claimed."""
    probe = folder / f".artd-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.symlink("probe", probe)
        ok = os.readlink(probe) == "probe"
        os.unlink(probe)
    except OSError:
        return False
    return ok


def can_write(folder: Path) -> bool:
    """Create and remove a file in ``folder``: what a full inode table, a read-only mount,
    a failing disk or missing permissions refuse (statvfs and access() can miss some)."""
    probe = folder / f".artd-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600))
        os.unlink(probe)
    except OSError:
        return False
    return True


def touch(path: Path) -> None:
    """Create ``path`` if missing and set its modification time to now (never through a link)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | NOFOLLOW, 0o644)
    try:
        os.utime(fd)
    finally:
        os.close(fd)


def try_lock(path: Path) -> int | None:
    """An exclusive flock on ``path`` (created if missing), or None if another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def unlock(fd: int) -> None:
    """Release and close a lock of :func:`try_lock`."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def locate(inbox: Path, path: Path) -> tuple[Path, PurePosixPath] | None:
    """``(absolute path, path relative to the inbox)``, or None outside the inbox."""
    path = Path(path)
    if ".." in path.parts:
        return None
    path = Path(os.path.abspath(path))
    if not path.is_relative_to(inbox):
        # Reached through a symlinked root: judge the real folder it lies in.
        path = Path(os.path.realpath(path.parent)) / path.name
        if not path.is_relative_to(inbox):
            return None
    rel = PurePosixPath(path.relative_to(inbox).as_posix())
    return (path, rel) if rel.parts else None


def _in_the_way(exc: OSError, path: Path) -> OSError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return NotADirectoryError(errno.ENOTDIR, "a symlink or file is in the way", str(path))
    return exc


def open_folder(base: Path, rel: PurePosixPath, create: bool = True) -> int:
    """A descriptor of ``base/rel``, each component opened relative to the last without
    following symlinks (and created if missing when ``create``): a folder swapped for a
    symlink at any instant cannot redirect a move or a write outside the root.
    NotADirectoryError when something else is in the way."""
    flags = os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW
    path = base
    try:
        fd = os.open(base, flags)
    except OSError as exc:
        raise _in_the_way(exc, path) from exc
    try:
        for part in rel.parts:
            path = path / part
            if create:
                try:
                    os.stat(part, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    step("mkdir")
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, dir_fd=fd)
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                raise _in_the_way(exc, path) from exc
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def unlink_inside(path: Path) -> None:
    """Remove ``path`` unless its folder is reached through a symlink."""
    if os.path.realpath(path.parent) == str(path.parent):  # never through a symlink
        if os.path.lexists(path):
            step("recover:unlink")
        path.unlink(missing_ok=True)


def prune_empty(folder: str, cutoff: float, keep: frozenset[str] = frozenset()) -> None:
    """Remove the empty sub-folders of ``folder`` last changed before ``cutoff``, deepest
    first; dot folders (someone else's temporary ones), symlinks and the sub-folders named
    in ``keep`` (the presets' folders) are left alone."""
    try:
        with os.scandir(folder) as it:
            subfolders = [e for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for entry in subfolders:
        if entry.name.startswith("."):
            continue
        try:
            changed = entry.stat(follow_symlinks=False).st_mtime  # before we prune it
        except OSError:
            continue
        prune_empty(entry.path, cutoff)
        if changed < cutoff and entry.name not in keep:
            with contextlib.suppress(OSError):  # a writer got there first
                os.rmdir(entry.path)
