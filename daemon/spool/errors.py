"""The spool's exceptions, and which system errors mean "the disk" rather than "this file"."""

from __future__ import annotations

import errno

# The disk, not the file: claim() raises these instead of skipping the file.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


class SpoolError(Exception):
    """The spool's folders are misconfigured or unusable; the message names the folder."""


class InstanceLockedError(SpoolError):
    """The instance name is held by another live process."""


class DisposeError(OSError):
    """commit(): the output is published, archiving the original failed. Never quarantine
    such a claim (its output exists): commit() it again later, or leave it to recover()."""
