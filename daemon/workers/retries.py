"""A batch through a model worker, retried by the crash-charging rule (:class:`CrashLedger`):
what the daemon's pipeline and ``artd process`` both do with a batch.

The batch goes to the worker; when the worker dies with it (:class:`WorkerDied`), the
ledger's verdict says which parts to send again (its halves, down to single files) and which
file to set aside as ``crashed_repeatedly``. Each part that comes back is answered with the
model that computed it (a restart reloads the checkpoint from its path, which may hold a newer
file by then). When no worker can serve (:class:`WorkerUnavailable`) the files not yet
answered are handed back untouched: that is never a file's fault.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from core.diffusion.sampler_settings import SamplerRequest
from core.outputs.settings import OutputSettings
from daemon.workers.interface import (
    ModelInfo,
    ModelWorker,
    WorkerDied,
    WorkerResult,
    WorkerUnavailable,
)
from daemon.workers.ledger import CrashLedger, CrashVerdict

K = TypeVar("K", bound=Hashable)


@dataclass
class BatchOutcome(Generic[K]):
    """What became of each file of a batch: ``answered`` (a result or the item's own
    InferenceError, with the model that computed it), ``crashed`` (quarantine it as
    ``crashed_repeatedly``, with this message), or ``left`` (not answered: the worker became
    unavailable, ``unavailable`` says why, or the caller is stopping)."""

    answered: dict[K, tuple[WorkerResult, ModelInfo | None]] = field(default_factory=dict)
    crashed: dict[K, str] = field(default_factory=dict)
    left: list[K] = field(default_factory=list)
    unavailable: WorkerUnavailable | None = None
    deaths: list[WorkerDied] = field(default_factory=list)


OnDeath = Callable[[WorkerDied, list[K], CrashVerdict[K]], None]


def run_batch(
    worker: ModelWorker,
    ledger: CrashLedger[K],
    keys: Sequence[K],
    images: Sequence[np.ndarray],
    sha256s: Sequence[str],
    request: SamplerRequest | None,
    output: OutputSettings,
    *,
    on_death: OnDeath[K] | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> BatchOutcome[K]:
    """Run one batch (``keys``: one distinct key per image, the ledger's) through ``worker``
    until every file is answered, set aside or left (module docstring). Never raises
    WorkerDied or WorkerUnavailable."""
    if not len(keys) == len(images) == len(sha256s):
        raise ValueError(f"{len(keys)} keys, {len(images)} images, {len(sha256s)} hashes")
    index = {key: i for i, key in enumerate(keys)}
    if len(index) != len(keys):
        raise ValueError("the keys of a batch must be distinct")
    outcome: BatchOutcome[K] = BatchOutcome()
    todo: deque[list[K]] = deque([list(keys)])
    while todo:
        part = todo.popleft()
        if stopping():
            outcome.left += part
            continue
        try:
            results = worker.run(
                [images[index[k]] for k in part], [sha256s[index[k]] for k in part], request, output
            )
        except WorkerDied as died:
            outcome.deaths.append(died)
            verdict = ledger.died(part)
            for key in verdict.quarantine:
                outcome.crashed[key] = (
                    f"the model worker died {ledger.limit} times in a row with this file "
                    f"alone in it (last: {died.cause})"
                )
            todo.extendleft(reversed(verdict.retry))
            if on_death is not None:
                on_death(died, part, verdict)
            continue
        except WorkerUnavailable as exc:
            outcome.unavailable = exc
            outcome.left += part
            while todo:
                outcome.left += todo.popleft()
            break
        ledger.succeeded(part)
        model = worker.model
        for key, result in zip(part, results, strict=True):
            outcome.answered[key] = (result, model)
    return outcome
