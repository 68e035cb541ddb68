"""Model workers: the network in a supervised process of its own, so that its death (a crash,
the OOM killer, an operator's ``kill -9``, a hang) is seen by the service, which lives on and
charges a file only by the rule of :class:`CrashLedger`. Not wired into the pipeline yet
(docs/spool.md, "Model workers (not yet wired)").

Every kind of worker has the same four-call shape (:class:`ModelWorker`, as rq's and huey's
workers all boot, loop and stop alike): ``start`` with a checkpoint, ``run`` a batch, report
``health``, ``stop``. :class:`LocalModelWorker` is one child process on this host; another kind
(a Ray actor) can stand in for it behind the same calls and exceptions.

The modules, one concern each:

- ``interface``: :class:`ModelWorker` and what it takes, gives back and raises;
- ``ledger``: the crash-charging rule, :class:`CrashLedger`;
- ``local``: :class:`LocalModelWorker`, the service's side of a child on this host;
- ``supervision``: the child as the service holds it: waiting on it within bounds, its death;
- ``child``: the child process: its main loop, heartbeat thread and the poison hook;
- ``messages``: the control messages over the pipe and the answers' layout;
- ``segments``: the shared memory: naming, growth, copy in and out, drop.
"""

from daemon.workers.child import HEARTBEAT_INTERVAL_S, POISON_ENV
from daemon.workers.interface import (
    STOP_TIMEOUT_S,
    BatchTiming,
    EngineOptions,
    ModelInfo,
    ModelWorker,
    ResultPixels,
    WorkerDied,
    WorkerHealth,
    WorkerResult,
    WorkerUnavailable,
)
from daemon.workers.ledger import SOLO_CRASH_LIMIT, CrashLedger, CrashVerdict
from daemon.workers.local import (
    BATCH_TIMEOUT_S,
    HEARTBEAT_TIMEOUT_S,
    START_TIMEOUT_S,
    LocalModelWorker,
)
from daemon.workers.segments import SEGMENT_PREFIX

__all__ = [
    "BATCH_TIMEOUT_S",
    "HEARTBEAT_INTERVAL_S",
    "HEARTBEAT_TIMEOUT_S",
    "POISON_ENV",
    "SEGMENT_PREFIX",
    "SOLO_CRASH_LIMIT",
    "START_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "BatchTiming",
    "CrashLedger",
    "CrashVerdict",
    "EngineOptions",
    "LocalModelWorker",
    "ModelInfo",
    "ModelWorker",
    "ResultPixels",
    "WorkerDied",
    "WorkerHealth",
    "WorkerResult",
    "WorkerUnavailable",
]
