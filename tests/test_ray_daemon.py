"""The daemon with its model on a Ray cluster (docs/operations.md, "Beyond one machine: Ray"):
the real daemon (tests/daemon_harness.py) inside the kit's private network namespace, its
batches on model actors of a real two-node cluster (tests/ray_kit.py).

- 500 files; the second node ``kill -9``ed mid-run (every process of it, as a lost machine),
  then the daemon itself ``kill -9``ed twice at random moments and restarted: nothing lost,
  nothing duplicated, no good file quarantined, each input in one place; the loss shows in
  the metrics and on the page;
- a cluster that cannot be reached, or lacks the GPUs asked for: the daemon stays up, says
  why naming the setting, takes no file, and the inbox is untouched.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import Daemon, files_under, wait_for
from ray_kit import RayCluster, started_cluster, stopped_after
from test_worker_wiring import assert_each_once, drop, png, settled

FILES = 500
QUICK = {"settle_seconds": 0.2, "rescan_seconds": 0.5, "max_batch": 8, "max_delay_ms": 50}


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    """Two CPUs a node: one actor on each at first, and room on the head for both once the
    second node is gone."""
    yield from stopped_after(started_cluster(head_cpus=2, node2_cpus=2))


def ray_daemon(root: Path, checkpoint: Path, cluster: RayCluster, **settings: object) -> Daemon:
    ray = {"ray_address": cluster.address, "ray_actors": 2, "ray_cpus_per_actor": 1}
    return Daemon(root, checkpoint, **ray | QUICK | settings)


def metric(daemon: Daemon, name: str) -> float:
    found = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", daemon.metrics(), re.M)
    return sum(float(value) for value in found)


def test_a_lost_node_and_two_daemon_kills_lose_and_charge_nothing(
    cluster: RayCluster, pixel_checkpoint: Path, tmp_path: Path
) -> None:
    rng = random.Random(27)
    payloads = {f"r{i:03d}.png": png(5000 + i) for i in range(FILES)}
    root = tmp_path / "root"
    drop(root / "inbox", payloads)
    # 128 px: enough work per file that the loss and the kills land in it on a fast machine
    # (at 64 px the 500 files once settled before node2's raylet was even declared dead).
    daemon = ray_daemon(root, pixel_checkpoint, cluster, size=128)
    marks = sorted(rng.sample(range(int(FILES * 0.3), int(FILES * 0.8)), 2))
    seen: dict[str, object] = {}
    with cluster.namespace.entered():  # the daemon, its port and its Ray client inside
        daemon.start()
        status, health = daemon.health()
        (pool,) = health["workers"]
        assert status == 200 and pool["alive"] and pool["actors"] == 2, health
        wait_for(lambda: settled(root) >= FILES // 5, 120, f"a fifth done ({daemon.log_path})")
        cluster.kill_node2()  # the machine lost: its actor's batch dies at once
        wait_for(lambda: metric(daemon, "artd_worker_actors_lost") >= 1, 60, "the loss seen")
        assert settled(root) < FILES, "the node was lost after the work was done"
        seen["metrics"] = [
            line for line in daemon.metrics().splitlines() if line.startswith("artd_worker_")
        ]
        seen["page"] = daemon.health()[1]["workers"]
        for mark in marks:  # the daemon itself, twice, at random moments
            wait_for(lambda m=mark: settled(root) >= m, 180, f"{mark} done ({daemon.log_path})")
            time.sleep(rng.uniform(0.0, 0.5))
            assert settled(root) < FILES, "the kill would land after the work was done"
            daemon.kill()
            daemon.start()
        wait_for(lambda: settled(root) >= FILES, 240, f"all settled ({daemon.log_path})")
        time.sleep(0.5)
        assert daemon.stop() == 0
    assert_each_once(root, list(payloads))  # nothing lost, duplicated or quarantined
    log = daemon.log
    assert "solo crash" not in log and "crashed_repeatedly" not in log
    assert sum(int(n) for n in re.findall(r"resuming (\d+) claimed", log)) >= 1
    print(json.dumps(seen, indent=1))  # how the loss looked (pytest -s shows it)
    (lost,) = [w for w in seen["page"] if w["lost"]]  # type: ignore[union-attr]
    assert lost["alive"] and lost["lost"] >= 1, seen


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"ray_address": "127.0.0.1:1"}, "ray_address: cannot reach 127.0.0.1:1"),
        ({"ray_gpus_per_actor": 1}, "ray_gpus_per_actor"),
    ],
    ids=["unreachable", "no-gpus"],
)
def test_a_cluster_it_cannot_use_keeps_the_daemon_up_and_the_inbox_untouched(
    cluster: RayCluster, pixel_checkpoint: Path, tmp_path: Path, settings: dict, named: str
) -> None:
    root = tmp_path / "root"
    drop(root / "inbox", {"waits.png": png(1)})
    with cluster.namespace.entered():
        daemon = ray_daemon(root, pixel_checkpoint, cluster, **settings)
        started = time.monotonic()
        with daemon:
            wait_for(lambda: named in str(daemon.health()[1]["problems"]), 60, daemon.log)
            assert time.monotonic() - started < 30
            status, health = daemon.health()
            assert status == 503 and named in daemon.log, health
            time.sleep(1.5)  # settled and rescanned: still not taken
            assert files_under(root / "inbox") == [root / "inbox" / "waits.png"]
            assert files_under(root / "outbox") == [] and files_under(root / "quarantine") == []
            assert daemon.stop() == 0
