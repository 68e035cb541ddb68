"""Operator restarts never blame good files.

The real daemon (``python -m daemon``) is killed for real: SIGKILLed at random moments while
small files are queued (a wave is dropped before each start, so every kill finds work in
flight): nothing may be lost, duplicated or quarantined. The service's own death never
charges a file (docs/spool.md); a real poison is found by the model workers instead
(tests/test_worker_wiring.py: the worker's hook ``_ARTD_WORKER_POISON``).
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

from daemon_harness import Daemon, files_under
from reliability_kit import (
    FULL,
    Ledger,
    assert_each_exactly_once,
    ledger_fixture,  # noqa: F401  (the ledger fixture)
    sidecar_reason,
    tmpfs_or_disk,
    wait_until,
)
from test_load import drop, settled, tiny_png

FILES, KILLS = (400, 16) if FULL else (200, 8)  # the required figure: 200 files, 8 kills
MAX_ATTEMPTS = 3  # the setting's default
QUICK = {"size": 192, "settle_seconds": 0.2, "max_batch": 16, "max_delay_ms": 50}


def count_in_log(daemon: Daemon, pattern: str) -> int:
    return len(re.findall(pattern, daemon.log))


def test_kill_9_at_random_moments_quarantines_no_good_file(
    pixel_checkpoint: Path, tmp_path: Path, ledger: Ledger
) -> None:
    rng = random.Random(17)
    payloads = [tiny_png(i) for i in range(FILES)]  # all different: none is a duplicate
    names = [f"q/{i // 50:02d}/f{i:03d}.png" for i in range(FILES)]
    wave = -(-FILES // (KILLS + 1))
    with tmpfs_or_disk(tmp_path / "fs", "256m") as fs:
        root = fs / "root"
        daemon = Daemon(root, pixel_checkpoint, max_attempts=MAX_ATTEMPTS, **QUICK)
        daemon.log_path = tmp_path / "daemon.log"
        hit = []
        for kill in range(KILLS):
            span = slice(kill * wave, (kill + 1) * wave)
            drop(root / "inbox", names[span], payloads[span])  # queued while it was down
            daemon.start()
            before = settled(root)
            time.sleep(rng.uniform(0.05, 1.0))  # a random moment of the work
            daemon.kill()
            hit.append(settled(root) - before)
        drop(root / "inbox", names[KILLS * wave :], payloads[KILLS * wave :])
        daemon.start()
        wait_until(lambda: settled(root) >= FILES, 120, "all settled", daemon)
        time.sleep(0.5)
        assert daemon.stop() == 0
        report = assert_each_exactly_once(root, names, ledger)
        assert report["quarantined"] == [], [
            (rel, sidecar_reason(root, rel)) for rel in report["quarantined"]
        ]
        assert len(report["out"]) == FILES and len(files_under(root / "archive")) == FILES
    resumed = sum(int(n) for n in re.findall(r"resuming (\d+) claimed", daemon.log))
    solo = count_in_log(daemon, r"solo crash")
    finished = count_in_log(daemon, r"finishing the commit")
    assert resumed >= KILLS, (resumed, hit)  # the kills did find work in flight
    assert solo == 0
    ledger.add(faults=KILLS)
    ledger.note(
        f"kill -9 restarts: {FILES} files, {KILLS} kills (files done between start and kill: "
        f"{hit}); {resumed} claims resumed, {solo} solo crashes charged (the service's death "
        f"charges none), {finished} commits finished from a published output; 0 quarantined"
    )
