"""The daemon with its model in workers (daemon.workers, docs/spool.md "Model workers"): real
daemon subprocesses (tests/daemon_harness.py), real worker processes, real ``kill -9``.

- a poison (the worker's test hook, ``_ARTD_WORKER_POISON``) is quarantined as
  ``crashed_repeatedly`` after ``max_attempts`` solo crashes of the worker, every other file
  of its batches comes out, and the service process lives on;
- ``kill -9`` of the worker while files are in it: nothing lost, duplicated or quarantined;
- ``kill -9`` of the service while a file is alone in the worker, again and again: nothing is
  charged (an artd that ran the model in the service quarantined it at the third);
- a worker that cannot start: the service stays up, says why, takes no file, loses nothing,
  and serves once a good checkpoint is there;
- ``artd process`` with the same poison: the poison is rejected, the run goes on.

Small and fast: a tiny checkpoint, 64 px images. The slow batches that a kill can land in
come from a denoise checkpoint asked for many steps.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import seeded_model, textured_image
from daemon_harness import Daemon, files_under, outputs, quarantined, wait_for
from test_oneshot import artd
from test_sampling_commands import save_denoise_checkpoint

from core.checkpoint import CheckpointMeta, save_checkpoint
from core.outputs.encoding import read_metadata
from daemon.decoders import SEGFAULT_MARKER

MAX_ATTEMPTS = 3  # the setting's default
QUICK = {"settle_seconds": 0.2, "rescan_seconds": 0.5}
SLOW = {"strength": 1.0, "steps": 100}  # batches of about a second: something to kill


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    textured_image(64, 48, seed=seed).save(buffer, "PNG")
    return buffer.getvalue()


def drop(inbox: Path, payloads: dict[str, bytes]) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    for name, data in payloads.items():
        temp = inbox / f".{name}.part"
        temp.write_bytes(data)
        temp.rename(inbox / name)


def settled(root: Path) -> int:
    return len(outputs(root)) + len(quarantined(root))


def worker(daemon: Daemon) -> dict[str, Any]:
    (only,) = daemon.health()[1]["workers"]
    return only


def loads_torch(pid: int) -> bool:
    """Whether the process has torch's library mapped (read from /proc, not asked)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def metric(daemon: Daemon, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", daemon.metrics(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def assert_each_once(root: Path, names: list[str], *, quarantine: frozenset[str] = frozenset()):
    """Every input has exactly one output (or, for ``quarantine``, a quarantine entry), the
    original archived, nothing left in the inbox or work/."""
    assert outputs(root) == sorted(f"{n}.png" for n in names if n not in quarantine)
    assert quarantined(root) == sorted(quarantine)
    assert sorted(p.name for p in files_under(root / "archive")) == sorted(
        n for n in names if n not in quarantine
    )
    assert files_under(root / "inbox") == []
    assert files_under(root / ".artd" / "work") == []


@pytest.fixture(scope="module")
def denoise(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_denoise_checkpoint(tmp_path_factory.mktemp("denoise") / "denoise.safetensors")


def test_a_poison_is_quarantined_by_the_worker_and_the_service_lives_on(
    pixel_checkpoint: Path, tmp_path: Path
) -> None:
    payloads = {f"f{i}.png": png(100 + i) for i in range(8)}
    poison = "f3.png"
    root = tmp_path / "root"
    # One batch of eight: one shape, a batching delay longer than decoding them all takes.
    daemon = Daemon(root, pixel_checkpoint, max_batch=8, max_delay_ms=1500, **QUICK)
    daemon.env["_ARTD_WORKER_POISON"] = hashlib.sha256(payloads[poison]).hexdigest()
    with daemon:
        assert daemon.proc is not None
        service, first_worker = daemon.proc.pid, worker(daemon)["pid"]
        drop(root / "inbox", payloads)
        wait_for(lambda: settled(root) >= len(payloads), 90, f"all settled (log: {daemon.log})")
        time.sleep(0.3)
        assert daemon.proc.poll() is None and daemon.proc.pid == service  # never restarted
        status, health = daemon.health()
        deaths = metric(daemon, 'artd_worker_deaths_total{kind="signal"}')
        restarts = metric(daemon, "artd_worker_restarts_total")
        serving = worker(daemon)
        # The network, and torch with it, lives only in the worker; the service never loads it.
        torch_in = {pid: loads_torch(pid) for pid in (service, serving["pid"])}
        assert daemon.stop() == 0
    assert torch_in == {service: False, serving["pid"]: True}
    assert_each_once(root, list(payloads), quarantine=frozenset({poison}))
    sidecar = json.loads((root / "quarantine" / f"{poison}.error.json").read_text())
    assert (sidecar["reason"], sidecar["solo_crashes"]) == ("crashed_repeatedly", MAX_ATTEMPTS)
    assert "alone in it" in sidecar["message"]
    # Dead in the batch of 8, of 4 and of 2 (charged nothing), then 3 times alone.
    assert deaths == 3 + MAX_ATTEMPTS, daemon.log
    assert restarts >= deaths - 1 and serving["restarts"] == restarts
    assert serving["pid"] != first_worker and serving["alive"] and status == 200
    assert health["problems"] == []
    assert daemon.log.count("solo crash") == MAX_ATTEMPTS  # the third quarantines it
    for name in set(payloads) - {poison}:
        meta = read_metadata((root / "outbox" / f"{name}.png").read_bytes())
        assert meta["artd:input_sha256"] == hashlib.sha256(payloads[name]).hexdigest()


def test_kill_9_of_the_worker_mid_batch_loses_and_charges_nothing(
    denoise: Path, tmp_path: Path
) -> None:
    rng = random.Random(5)
    payloads = {f"k{i:02d}.png": png(200 + i) for i in range(24)}
    root = tmp_path / "root"
    kills = 0
    with Daemon(root, denoise, max_batch=4, max_delay_ms=200, **QUICK, **SLOW) as daemon:
        assert daemon.proc is not None
        service = daemon.proc.pid
        drop(root / "inbox", payloads)
        for _ in range(4):  # fewer than any file would need to be quarantined (docs/spool.md)
            wait_for(lambda: worker(daemon)["busy"] and worker(daemon)["pid"], 60, "a batch")
            pid = worker(daemon)["pid"]
            time.sleep(rng.uniform(0.05, 0.4))  # somewhere in the batch
            os.kill(pid, signal.SIGKILL)
            kills += 1
            wait_for(lambda p=pid: worker(daemon)["pid"] not in (None, p), 60, "a restart")
        wait_for(lambda: settled(root) >= len(payloads), 120, f"all settled ({daemon.log_path})")
        time.sleep(0.3)
        deaths = metric(daemon, 'artd_worker_deaths_total{kind="signal"}')
        assert daemon.proc.poll() is None and daemon.proc.pid == service
        assert daemon.stop() == 0
    assert_each_once(root, list(payloads))
    assert 1 <= deaths <= kills, daemon.log
    assert "killed by SIGKILL" in daemon.log


def test_kill_9_of_the_service_with_a_file_alone_in_the_worker_charges_nothing(
    denoise: Path, tmp_path: Path
) -> None:
    """One file per batch, so each kill lands while a file is alone in the model: an artd
    that ran the model in the service quarantined such a file at the third kill."""
    payloads = {f"s{i}.png": png(300 + i) for i in range(3)}
    root = tmp_path / "root"
    daemon = Daemon(root, denoise, max_batch=1, **QUICK, **SLOW)
    drop(root / "inbox", payloads)
    kills = MAX_ATTEMPTS + 1
    for _ in range(kills):
        daemon.start()
        wait_for(lambda: worker(daemon)["busy"] and worker(daemon)["pid"], 60, "a file in it")
        pid = worker(daemon)["pid"]
        daemon.kill()
        # The worker goes with its service (it watches its parent).
        wait_for(lambda p=pid: not os.path.exists(f"/proc/{p}"), 10, "the worker to exit")
    assert settled(root) < len(payloads), "finished before the kills: nothing was tested"
    daemon.start()
    wait_for(lambda: settled(root) >= len(payloads), 60, "all settled")
    time.sleep(0.3)
    assert daemon.stop() == 0
    assert_each_once(root, list(payloads))
    resumed = sum(int(n) for n in re.findall(r"resuming (\d+) claimed", daemon.log))
    assert resumed >= kills, daemon.log
    assert "solo crash" not in daemon.log and "crashed_repeatedly" not in daemon.log


def test_a_worker_that_cannot_start_keeps_the_service_up_and_takes_no_file(
    tmp_path: Path,
) -> None:
    checkpoint = tmp_path / "models" / "model.safetensors"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"not a checkpoint" * 64)
    root = tmp_path / "root"
    with Daemon(root, checkpoint, **QUICK) as daemon:
        status, health = daemon.health()
        assert status == 503, health
        (problem,) = health["problems"]
        assert "no model worker serves" in problem and str(checkpoint) in problem
        (down,) = health["workers"]
        assert not down["alive"] and down["error"] and "model.safetensors" in down["error"]
        assert "artd_worker_up" in daemon.metrics()
        assert "the model worker cannot start" in daemon.log
        drop(root / "inbox", {"waits.png": png(1)})
        time.sleep(2.0)  # settled and rescanned several times over: still not taken
        assert files_under(root / "inbox") == [root / "inbox" / "waits.png"]
        assert outputs(root) == [] and quarantined(root) == []
        # A good checkpoint at the path: the watcher loads it, the file comes out.
        save_checkpoint(checkpoint, seeded_model(0).state_dict(), CheckpointMeta(epoch=4))
        wait_for(lambda: outputs(root) == ["waits.png.png"], 60, f"served ({daemon.log_path})")
        status, health = daemon.health()
        assert status == 200 and health["problems"] == [] and worker(daemon)["alive"]
        assert daemon.stop() == 0
    assert_each_once(root, ["waits.png"])


def test_artd_process_loses_only_the_poison_not_the_run(
    pixel_checkpoint: Path, tmp_path: Path
) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    payloads = {f"p{i}.png": png(400 + i) for i in range(3)}
    drop(source, payloads)
    # And a file that crashes its decoder (a real SIGSEGV, daemon.decoders' test hook).
    (source / "crash.png").write_bytes(SEGFAULT_MARKER + png(499))
    env = {
        "_ARTD_WORKER_POISON": hashlib.sha256(payloads["p1.png"]).hexdigest(),
        "_ARTD_TEST_SEGFAULT": "1",
    }
    done = artd("process", source, "--out", out, "--checkpoint", pixel_checkpoint,
                "--size", "64", "--device", "cpu", env=env)  # fmt: skip
    assert done.returncode == 2, done.stderr  # some rejected, the rest written
    assert sorted(p.name for p in out.iterdir()) == ["p0.png.png", "p2.png.png"]
    assert "rejected" in done.stderr and "crashed_repeatedly" in done.stderr
    assert re.search(r"rejected \S*crash\.png: decoder_crashed", done.stderr), done.stderr
    assert "decoder worker died on" in done.stderr  # twice: the second death rejects it
    # Dead in the batch of three and in its half [p1, p2] (p0 came out), then 3 times alone.
    assert done.stderr.count("died with") == 2 + MAX_ATTEMPTS, done.stderr
