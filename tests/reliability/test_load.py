"""Load: a 10,000-file backlog-plus-flood, memory at 1,000 vs 10,000 files, an inotify queue
overflowed under a stopped daemon (SIGSTOP), three instances racing for one inbox.

Roots live on a tmpfs where the kernel lets us mount one (fsync is free there, so the test
measures the daemon, not this machine's disk); files are tiny and the model runs at 8x8.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
from daemon_harness import Daemon, files_under
from PIL import Image
from reliability_kit import (
    FULL,
    Ledger,
    assert_each_exactly_once,
    ledger_fixture,  # noqa: F401  (the ledger fixture)
    metric,
    proc_status,
    tmpfs_or_disk,
    wait_until,
)

FLOOD = 10_000
SMALL = 1_000
RACE = 6_000 if not FULL else 20_000
MEMORY_GROWTH_LIMIT_KB = 60_000  # VmHWM at 10,000 files over VmHWM at 1,000
FAST = {"size": 8, "settle_seconds": 0.2, "max_batch": 64, "max_in_flight": 128}


def tiny_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def drop(inbox: Path, names: list[str], payloads: list[bytes]) -> None:
    """As a well-behaved uploader: a hidden temporary name, then a rename."""
    for i, name in enumerate(names):
        path = inbox / name
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.parent / f".{path.name}.part"
        temp.write_bytes(payloads[i % len(payloads)])
        temp.rename(path)


def names_for(prefix: str, count: int) -> list[str]:
    return [f"{prefix}/{i // 1000:02d}/f{i:05d}.png" for i in range(count)]


def settled(root: Path) -> int:
    return len(files_under(root / "outbox")) + len(files_under(root / "quarantine"))


def test_memory_stays_flat_from_1000_to_10000_files_backlog_and_flood(
    pixel_checkpoint: Path, tmp_path: Path, ledger: Ledger
) -> None:
    payloads = [tiny_png(i) for i in range(64)]
    with tmpfs_or_disk(tmp_path / "fs", "768m") as fs:
        figures = {}
        for label, backlog, flood in (("1k", SMALL, 0), ("10k", FLOOD // 2, FLOOD // 2)):
            root = fs / f"root-{label}"
            waiting = names_for("backlog", backlog)
            drop(root / "inbox", waiting, payloads)  # left while the daemon was stopped
            daemon = Daemon(root, pixel_checkpoint, instance=f"load{label}", **FAST)
            daemon.log_path = tmp_path / f"daemon-{label}.log"
            started = time.monotonic()
            daemon.start()
            flooded = names_for("flood", flood)
            writer = threading.Thread(target=drop, args=(root / "inbox", flooded, payloads))
            writer.start()
            total = backlog + flood
            wait_until(lambda r=root, t=total: settled(r) >= t, 600, f"{label} settled", daemon)
            writer.join()
            elapsed = time.monotonic() - started
            status = proc_status(daemon.proc.pid)  # type: ignore[union-attr]
            assert daemon.stop() == 0
            report = assert_each_exactly_once(root, waiting + flooded, ledger)
            assert len(report["out"]) == total
            figures[label] = (status, elapsed, total)
    (hwm_1k, rss_1k), (hwm_10k, rss_10k) = (
        (figures[k][0]["VmHWM"], figures[k][0]["VmRSS"]) for k in ("1k", "10k")
    )
    rate = figures["10k"][2] / figures["10k"][1]
    ledger.note(
        f"load: VmHWM {hwm_1k // 1024} MiB at 1,000 files, {hwm_10k // 1024} MiB at 10,000 "
        f"(VmRSS {rss_1k // 1024} -> {rss_10k // 1024}); 10,000 files (5,000 backlog + 5,000 "
        f"flood) in {figures['10k'][1]:.0f}s from start = {rate:.0f} files/s"
    )
    assert hwm_10k - hwm_1k < MEMORY_GROWTH_LIMIT_KB, (hwm_1k, hwm_10k)


def test_three_instances_race_while_one_is_stopped_through_an_inotify_overflow(
    pixel_checkpoint: Path, tmp_path: Path, ledger: Ledger
) -> None:
    payloads = [tiny_png(i) for i in range(64)]
    with tmpfs_or_disk(tmp_path / "fs", "768m") as fs:
        root = fs / "root"
        daemons = [Daemon(root, pixel_checkpoint, instance=f"gpu{i}", **FAST) for i in range(3)]
        for daemon in daemons:
            daemon.log_path = tmp_path / f"daemon-{daemon.env['ARTD_INSTANCE']}.log"
            daemon.start(wait=False)
        for daemon in daemons:
            wait_until(daemon.ready, 120, "instance ready", daemon)
        stopped = daemons[0].proc
        assert stopped is not None
        names = names_for("race", RACE)
        try:
            # Several inotify events per file: far more than the kernel queues (16,384 by
            # default) for a process that is not reading them.
            os.kill(stopped.pid, signal.SIGSTOP)
            drop(root / "inbox", names, payloads)
        finally:
            os.kill(stopped.pid, signal.SIGCONT)
        wait_until(lambda: settled(root) >= RACE, 600, "the race settled", daemons[1])
        time.sleep(1.0)
        processed = [metric(d, "artd_files_processed_total") for d in daemons]
        for daemon in daemons:
            assert daemon.stop() == 0
        assert sum(processed) == RACE, processed
        assert_each_exactly_once(root, names, ledger)
        assert len(files_under(root / "archive")) == RACE
    ledger.add(faults=1)
    ledger.note(f"race: {RACE} files, processed per instance {[int(p) for p in processed]}")
