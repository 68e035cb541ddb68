"""Operator restarts never blame good files; a real poison still ends in the quarantine.

Both run the real daemon (``python -m daemon``) and kill it for real. The kill test SIGKILLs
it at random moments while small files are queued (a wave is dropped before each start, so
every kill finds work in flight): nothing may be lost, duplicated or quarantined. The poison
test plants a test-only hook (``_ARTD_POISON_SHA256``) that makes the process SIGKILL itself
whenever one input is in the model: the process dies once in a batch, then ``max_attempts``
times with the poison alone in the model, and the next start quarantines it as
``crashed_repeatedly`` while the rest of its batch comes out.
"""

from __future__ import annotations

import hashlib
import json
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
    solo = count_in_log(daemon, r"was alone in the model when the process died")
    finished = count_in_log(daemon, r"finishing the commit")
    assert resumed >= KILLS, (resumed, hit)  # the kills did find work in flight
    ledger.add(faults=KILLS)
    ledger.note(
        f"kill -9 restarts: {FILES} files, {KILLS} kills (files done between start and kill: "
        f"{hit}); {resumed} claims resumed, {solo} solo crashes charged, {finished} commits "
        "finished from a published output; 0 quarantined"
    )


def test_a_poison_is_quarantined_after_its_solo_crashes_and_its_batch_comes_out(
    pixel_checkpoint: Path, tmp_path: Path, ledger: Ledger
) -> None:
    payloads = [tiny_png(1000 + i) for i in range(8)]
    names = [f"batch/f{i}.png" for i in range(8)]
    poison = names[3]
    root = tmp_path / "root"
    drop(root / "inbox", names, payloads)
    # Decoded together and batched together (one shape, a long batching delay).
    settings = QUICK | {"max_batch": 8, "max_delay_ms": 1000}
    daemon = Daemon(root, pixel_checkpoint, max_attempts=MAX_ATTEMPTS, **settings)
    daemon.env["_ARTD_POISON_SHA256"] = hashlib.sha256(payloads[3]).hexdigest()
    deaths = []
    for _start in range(MAX_ATTEMPTS + 3):
        proc = daemon.start(wait=False).proc
        assert proc is not None
        done = lambda p=proc: p.poll() is not None or settled(root) >= len(names)  # noqa: E731
        wait_until(done, 60, "a death or the end")
        if proc.poll() is None:
            break  # this start survived: the poison was set aside
        deaths.append(proc.returncode)
    # 7 outputs, the poison and its sidecar (written first).
    wait_until(lambda: settled(root) >= len(names) + 1, 30, "all settled", daemon)
    time.sleep(0.3)
    assert daemon.stop() == 0
    # One death with the poison in a batch (not its fault yet), then one per solo run.
    assert deaths == [-9] * (1 + MAX_ATTEMPTS), deaths
    report = assert_each_exactly_once(root, names, ledger)
    assert report["quarantined"] == [poison]
    assert sorted(report["out"]) == sorted(set(names) - {poison})
    sidecar = json.loads((root / "quarantine" / f"{poison}.error.json").read_text())
    assert (sidecar["reason"], sidecar["solo_crashes"]) == ("crashed_repeatedly", MAX_ATTEMPTS)
    ledger.add(faults=len(deaths))
    ledger.note(
        f"poison: {len(deaths)} deaths (1 in a batch + {MAX_ATTEMPTS} alone in the model), "
        f"then quarantined as crashed_repeatedly; its {len(names) - 1} batch-mates came out"
    )
