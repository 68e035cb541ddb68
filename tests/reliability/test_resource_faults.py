"""Resource faults under a running daemon: a full disk, I/O errors, a read-only root,
permission denied, the inbox deleted and re-created.

Expected everywhere: the daemon stays up, a partial output is removed, the input stays claimed
(or in the inbox) and is retried, intake pauses while the disk refuses writes and resumes
when it accepts them again, ``/healthz`` answers 503 and says why, and in the end every input
has exactly one output.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, textured_image
from daemon_harness import Daemon, files_under, outputs
from reliability_kit import (
    Ledger,
    assert_each_exactly_once,
    fill_up,
    ledger_fixture,  # noqa: F401  (the ledger fixture)
    loop_ext4,
    read_only,
    sidecar_reason,
    temp_files,
    tmpfs,
    unmount,
    wait_until,
)

EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_LOGFLUSH = 1  # flush the journal, then fail every later I/O with EIO
NOBODY = 65534


def stage(folder: Path, names: list[str], seed: int, size: tuple[int, int] = (96, 64)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        textured_image(*size, seed=seed + i).save(folder / name, "JPEG", quality=90)


def move_in(staging: Path, inbox: Path) -> None:
    """Renames need no free space: inputs arrive even on a full disk."""
    for path in sorted(staging.iterdir()):
        os.rename(path, inbox / path.name)


def failing(daemon: Daemon, *words: str) -> bool:
    status, report = daemon.health()
    text = " ".join(str(p) for p in report["problems"]).lower()  # type: ignore[union-attr]
    return status == 503 and all(w.lower() in text for w in words)


def test_full_disk_read_only_root_and_vanishing_inbox(
    pixel_checkpoint: Path, tmp_path: Path, ledger: Ledger
) -> None:
    with tmpfs(tmp_path / "fs", "24m") as fs:
        root, staging = fs / "root", fs / "staging"
        daemon = Daemon(root, pixel_checkpoint, settle_seconds=0.2, size=256)
        daemon.log_path = tmp_path / "daemon.log"  # outside the filesystem under test
        daemon.start()
        inbox = root / "inbox"
        names: list[str] = []

        # 1. Full before anything is claimed: claims fail, intake pauses, /healthz says why.
        batch = [f"full-{i}.jpg" for i in range(4)]
        stage(staging, batch, seed=0)
        ballast = fill_up(fs)
        move_in(staging, inbox)
        names += batch
        wait_until(lambda: failing(daemon, "no space"), 20, "503 naming the full disk", daemon)
        assert outputs(root) == []
        ballast.unlink()
        wait_until(lambda: len(outputs(root)) == 4, 60, "resume after space returns", daemon)
        wait_until(lambda: daemon.health()[0] == 200, 20, "healthy again", daemon)
        ledger.add(faults=1)

        # 2. Full while outputs are written: claims fit, outputs do not.
        smallest = min(p.stat().st_size for p in files_under(root / "outbox"))
        batch = [f"half-{i}.jpg" for i in range(4)]
        stage(staging, batch, seed=10)
        ballast = fill_up(fs)
        os.truncate(ballast, max(0, ballast.stat().st_size - max(64 << 10, smallest // 2)))
        move_in(staging, inbox)
        names += batch
        wait_until(lambda: failing(daemon, "cannot write outputs"), 30, "503: outputs", daemon)
        time.sleep(1.0)
        assert len(outputs(root)) == 4, "an output was published on a full disk"
        assert not temp_files(root / "outbox"), "a partial output was left behind"
        assert files_under(root / ".artd" / "work"), "the claims should be kept for a retry"
        assert not files_under(root / "quarantine"), "a full disk is not the file's fault"
        ballast.unlink()
        # Space is back: everything resumes promptly, not after the longest back-off.
        wait_until(lambda: len(outputs(root)) == 8, 20, "retries after space returns", daemon)
        wait_until(lambda: daemon.health()[0] == 200, 20, "healthy again", daemon)
        ledger.add(faults=1)

        # 3. Read-only root: the daemon stays up and says so; remounted writable, it goes on.
        batch = [f"ro-{i}.jpg" for i in range(3)]
        stage(staging, batch, seed=20)
        move_in(staging, inbox)
        names += batch
        with read_only(fs):
            wait_until(lambda: daemon.health()[0] == 503, 20, "503 on a read-only root", daemon)
            time.sleep(6)  # past a housekeeping round (heartbeat, folder checks)
            assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log[-3000:]
            assert daemon.health()[0] == 503
        wait_until(lambda: len(outputs(root)) == 11, 60, "resume after remount rw", daemon)
        wait_until(lambda: daemon.health()[0] == 200, 20, "healthy again", daemon)
        ledger.add(faults=1)

        # 4. The inbox deleted under the daemon (it re-creates it), then deleted and re-created.
        shutil.rmtree(inbox)
        wait_until(inbox.is_dir, 15, "inbox re-created by the daemon", daemon)
        stage(inbox, ["back-0.jpg"], seed=30)
        wait_until(lambda: len(outputs(root)) == 12, 30, "file in re-created inbox", daemon)
        shutil.rmtree(inbox)
        inbox.mkdir()
        stage(inbox / "sub", ["back-1.jpg"], seed=31)
        names += ["back-0.jpg", "sub/back-1.jpg"]
        wait_until(lambda: len(outputs(root)) == 13, 30, "file after inbox swap", daemon)
        ledger.add(faults=2)
        assert daemon.stop() == 0
        report = assert_each_exactly_once(root, names, ledger)
        assert report["quarantined"] == []


def test_io_errors_keep_the_daemon_up_and_lose_nothing(
    pixel_checkpoint: Path, tmp_path: Path, ledger: Ledger
) -> None:
    """EIO from a real filesystem: ext4's shutdown ioctl fails every later I/O with EIO
    (as a dying disk does); after a repair (remount) a restart finishes the work."""
    mount_point = tmp_path / "ext4"
    with loop_ext4(mount_point, tmp_path / "disk.img", size_mb=64):
        root = mount_point / "root"
        names = [f"img{i:02d}.jpg" for i in range(24)]
        stage(tmp_path / "src", names, seed=0, size=(320, 240))
        daemon = Daemon(root, pixel_checkpoint, settle_seconds=0.2, size=256, max_batch=2)
        daemon.log_path = tmp_path / "daemon.log"
        daemon.start()
        # A careful writer: the bytes are durable before the file appears in the inbox (a
        # file not yet flushed when the disk dies is lost to the kernel, not to the daemon).
        staging = mount_point / "staging"
        shutil.copytree(tmp_path / "src", staging)
        os.sync()
        for name in names:
            os.rename(staging / name, root / "inbox" / name)
        wait_until(lambda: len(outputs(root)) >= 3, 60, "first outputs", daemon)
        fd = os.open(mount_point, os.O_RDONLY)
        try:
            try:
                fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_LOGFLUSH))
            except OSError as exc:
                pytest.skip(f"ext4 shutdown ioctl refused here: {exc}")
        finally:
            os.close(fd)
        wait_until(lambda: daemon.health()[0] == 503, 20, "503 on I/O errors", daemon)
        time.sleep(6)  # a housekeeping round on a dead disk
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log[-3000:]
        _, report = daemon.health()
        assert report["problems"], report
        assert daemon.stop() == 0, daemon.log[-3000:]
        ledger.add(faults=1)
    # The repair: mount the same filesystem again (the journal is replayed) and restart.
    done = subprocess.run(["mount", "-o", "loop", str(tmp_path / "disk.img"), str(mount_point)])
    assert done.returncode == 0
    try:
        daemon.start()
        wait_until(lambda: len(outputs(root)) + len(files_under(root / "quarantine")) >= 24, 90,
                   "the rest after the repair", daemon)  # fmt: skip
        time.sleep(1)
        assert daemon.stop() == 0
        report = assert_each_exactly_once(root, names, ledger)
        assert report["quarantined"] == [], [sidecar_reason(root, r) for r in report["quarantined"]]
    finally:
        unmount(mount_point)


def test_permission_denied_on_one_input_folder_and_the_outbox(
    pixel_checkpoint: Path, tmp_path: Path, ledger: Ledger
) -> None:
    """The daemon without root's power to ignore permissions (as a service user runs it): a
    file or a folder it may not read costs that file only; an outbox it may not write pauses
    intake and says why, until it is fixed."""
    root = tmp_path / "root"
    daemon = Daemon(root, pixel_checkpoint, settle_seconds=0.2)
    start_without_dac_override(daemon)
    inbox = root / "inbox"
    stage(inbox, ["ok-0.jpg", "ok-1.jpg", "locked.jpg"], seed=0)
    os.chown(inbox / "locked.jpg", NOBODY, NOBODY)
    os.chmod(inbox / "locked.jpg", 0o600)  # someone else's, unreadable for the daemon
    stage(inbox / "private", ["hidden.jpg"], seed=5)
    os.chown(inbox / "private", NOBODY, NOBODY)
    os.chmod(inbox / "private", 0o700)  # someone else's folder, not listable
    wait_until(lambda: len(outputs(root)) == 2, 60, "readable files processed", daemon)
    wait_until(lambda: (root / "quarantine" / "locked.jpg").exists(), 30, "quarantined", daemon)
    assert sidecar_reason(root, "locked.jpg") == "unreadable"
    assert (inbox / "private" / "hidden.jpg").exists()

    os.chown(root / "outbox", NOBODY, NOBODY)  # the outbox turns unwritable for the daemon
    stage(inbox, ["later.jpg"], seed=9)
    wait_until(lambda: failing(daemon), 30, "503 while the outbox refuses writes", daemon)
    assert not (root / "quarantine" / "later.jpg").exists()
    os.chown(root / "outbox", 0, 0)
    wait_until(lambda: len(outputs(root)) == 3, 40, "resumed after the fix", daemon)
    wait_until(lambda: daemon.health()[0] == 200, 20, "healthy again", daemon)
    assert daemon.stop() == 0
    ledger.add(faults=3)
    shutil.rmtree(inbox / "private")
    names = ["ok-0.jpg", "ok-1.jpg", "locked.jpg", "later.jpg"]
    report = assert_each_exactly_once(root, names, ledger)
    assert report["quarantined"] == ["locked.jpg"]


def start_without_dac_override(daemon: Daemon) -> None:
    """Root, minus the capabilities that bypass file permissions (setpriv, util-linux)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot drop capabilities")
    daemon.root.mkdir(parents=True, exist_ok=True)
    log = open(daemon.log_path, "ab")  # noqa: SIM115 (kept open for the child's lifetime)
    drop = "--bounding-set=-dac_override,-dac_read_search,-fowner"
    daemon.proc = subprocess.Popen(
        [setpriv, "--inh-caps=-all", drop, sys.executable, "-m", "daemon"],
        cwd=ROOT,
        env=daemon.env,
        stdout=log,
        stderr=log,
    )
    log.close()
    wait_until(daemon.ready, 90, "daemon ready", daemon)
