"""The spool: the daemon's on-disk state machine (docs/spool.md).

Every input is in exactly one place at every instant and every move is a rename on one
filesystem, so a ``kill -9`` anywhere leaves a state that ``recover()`` finishes::

    inbox/<rel> --claim--> .artd/work/<instance>/<id><suffix> + <id>.json (the record)
                --commit--> outbox/<rel><ext> final, record "committed", original -> archive/
                --quarantine--> quarantine/<rel> + <rel>.error.json

The public API is :class:`Spool`, one per instance name (``prepare()``/``close()`` or
``with``): ``scan_inbox()``, ``is_candidate()``, ``claim()``, ``open_claim()``,
``commit()``, ``quarantine()``, ``release()``, ``recover()``, ``adopt_stale()``,
``heartbeat()``, ``remove_empty_dirs()``, ``can_write()``; a :class:`Claim` is what it hands
out (``interrupted`` counts the restarts that found it unfinished, for the record: they
charge it nothing).
Nothing here follows a symlink and nothing outside ``root`` is read, moved or written.

The modules, one concern each:

- ``spool``: the :class:`Spool` facade, the instance lock and the inbox scan;
- ``machine``: claim -> commit | quarantine, each state recorded before its move;
- ``recovery``: ``recover()`` (a published output finishes its claim before any
  interruption is counted), adoption of dead instances' work, sweeps;
- ``records``: the claim records and their :class:`State`;
- ``reservations``: output, archive and quarantine names reserved across instances;
- ``names``: which inbox names are never taken, claim ids, temporary names, name fitting;
- ``folders``: the layout under ``root`` and walking it without following symlinks;
- ``steps``: the test-only crash points and the durable writes that name each step;
- ``errors``: the exceptions, and :data:`DISK_ERRNOS`.
"""

from daemon.spool.errors import DISK_ERRNOS, DisposeError, InstanceLockedError, SpoolError
from daemon.spool.folders import STATE_DIR
from daemon.spool.names import SIDECAR_SUFFIX, TEMP_MARK, is_temporary_name, new_claim_id
from daemon.spool.records import Claim
from daemon.spool.spool import Spool

__all__ = [
    "DISK_ERRNOS",
    "SIDECAR_SUFFIX",
    "STATE_DIR",
    "TEMP_MARK",
    "Claim",
    "DisposeError",
    "InstanceLockedError",
    "Spool",
    "SpoolError",
    "is_temporary_name",
    "new_claim_id",
]
