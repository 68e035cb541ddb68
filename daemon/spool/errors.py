"""The spool's exceptions, and which system errors mean "the disk" rather than "this file"."""

from __future__ import annotations

import errno

# The disk is full (or the quota spent): waiting for room may help; the bytes asked count.
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# The disk, not the file: claim() raises these instead of skipping the file.
DISK_ERRNOS = SPACE_ERRNOS | {errno.EIO, errno.EROFS}
# Commit failures that mean "the disk, not the file": keep the claim and retry later.
# EPERM: an immutable (chattr +i) or otherwise locked folder, not the file's fault either.
RESOURCE_ERRNOS = DISK_ERRNOS | {errno.EACCES, errno.EPERM}


class SpoolError(Exception):
    """The spool's folders are misconfigured or unusable; the message names the folder."""


class InstanceLockedError(SpoolError):
    """The instance name is held by another live process."""


class DisposeError(OSError):
    """commit(): the output is published, archiving the original failed. Never quarantine
    such a claim (its output exists): commit() it again later, or leave it to recover()."""
