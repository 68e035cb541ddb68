"""Two hosts on one network share: real servers, real mounts, real daemons (docs/network-shares.md).

Each share (``netfs_kit.share``: NFS from the kernel server or nfs-ganesha, SMB from Samba
through the kernel CIFS client) is exported on this machine over loopback and mounted twice,
with different options, so the two mounts keep their own caches as two hosts do. Each host
runs its own ``python -m daemon`` with its root on its own mount, ``ARTD_POLLING=true`` and its
own instance name. The ledger is read on the server's folder (no client cache in the way).

- the primitives the spool rests on (exclusive create, symlink reservations, one rename
  winning a claim, ``flock`` seen from the other mount and freed by ``kill -9``);
- polling mode takes files written through the other mount, and the writer sees the output;
- both hosts claim from one inbox: every file processed exactly once (400 files, 2,000 with
  ``RELIABILITY_FULL=1``);
- a host's daemon frozen with claims: its lock keeps the other host from reusing its name or
  adopting its work; ``kill -9`` frees the lock, the other adopts it, still exactly once.

Where no share can be served and mounted, each test is skipped with every step's error
(docs/network-shares.md says what ran where). ``NETFS_SELFTEST=1`` adds two bind mounts of a
local folder, only to check these tests' own logic on a machine without network filesystems.
"""

from __future__ import annotations

import fcntl
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import netfs_kit
import pytest
from daemon_harness import Daemon, files_under
from netfs_kit import Share
from reliability_kit import (
    FULL,
    Ledger,
    assert_each_exactly_once,
    ledger_fixture,  # noqa: F401  (the ledger fixture)
    metric,
    wait_until,
)
from test_load import drop, settled, tiny_png

FILES = 2_000 if FULL else 400  # the required figure is 2,000: `make soak` runs it
PICKUP_FILES = 8
# Polling (inotify sees no other host's writes), a 1 s settle, 8x8 model runs.
NET = {
    "polling": "true",
    "settle_seconds": 1.0,
    "rescan_seconds": 1,
    "size": 8,
    "max_batch": 64,
    "max_in_flight": 128,
}
ADOPTED = "adopting the unfinished work of dead instance 'host0'"
KINDS = [*netfs_kit.KINDS, *(["bind"] if netfs_kit.SELFTEST else [])]


@pytest.fixture(scope="module", params=KINDS)
def share(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Share]:
    base = tmp_path_factory.mktemp(f"netfs-{request.param}")
    try:
        with netfs_kit.share(request.param, base) as found:
            yield found
    finally:
        left = netfs_kit.mounted_under(base)
        for point in reversed(left):  # never leave a mount behind, whatever failed
            netfs_kit.unmount(Path(point))
        assert not left, f"mounts left behind: {left}"


def roots(share: Share, name: str) -> tuple[Path, Path, Path]:
    """``name``'s root as host 0 and host 1 see it, and on the server."""
    return share.hosts[0] / name, share.hosts[1] / name, share.export / name


def host_daemon(root: Path, checkpoint: Path, instance: str, logs: Path) -> Daemon:
    daemon = Daemon(root, checkpoint, instance=instance, **NET)
    daemon.log_path = logs / f"daemon-{instance}.log"  # beside the share, not on it
    return daemon


def start_all(*daemons: Daemon) -> None:
    for daemon in daemons:
        daemon.start(wait=False)
    for daemon in daemons:
        wait_until(daemon.ready, 120, "daemon ready", daemon)


def claims_of(server_root: Path, instance: str) -> list[Path]:
    return sorted((server_root / ".artd" / "work" / instance).glob("*.json"))


def appears(path: Path, timeout: float) -> float | None:
    """Seconds until ``path`` exists, None after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if path.exists():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


# --- the primitives --------------------------------------------------------------------------

_HOLD = """\
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("held", flush=True)
time.sleep(600)
"""


def lock_is_free(path: Path) -> bool:
    """Whether an exclusive flock on ``path`` is granted now (released at once if it is)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the lock
    return True


def test_the_primitives_the_spool_rests_on_hold_across_the_two_mounts(
    share: Share, tmp_path: Path, ledger: Ledger
) -> None:
    zero, one, server = roots(share, "primitives")
    zero.mkdir()
    assert appears(one, 30) is not None, "a folder made on host 0 never showed on host 1"

    # Exclusive create (temporary names, records): the other host gets EEXIST.
    os.close(os.open(zero / "excl", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    with pytest.raises(FileExistsError):
        os.open(one / "excl", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    # Reservations are dangling symlinks created exclusively and read with readlink.
    os.symlink("host0/00000000000000000001-0badcafe", zero / "reserved")
    with pytest.raises(FileExistsError):
        os.symlink("host1/00000000000000000002-0badcafe", one / "reserved")
    assert os.readlink(one / "reserved") == "host0/00000000000000000001-0badcafe"

    # A claim: both hosts rename one inbox name; exactly one rename wins.
    (zero / "drop.png").write_bytes(b"x" * 100)
    assert appears(one / "drop.png", 30) is not None
    os.rename(zero / "drop.png", zero / "claimed-by-0")
    with pytest.raises(FileNotFoundError):
        os.rename(one / "drop.png", one / "claimed-by-1")
    assert sorted(p.name for p in server.iterdir() if p.name.startswith(("drop", "claimed"))) == [
        "claimed-by-0"
    ]

    # The instance lock: held through host 0, refused through host 1, freed by kill -9.
    lock = zero / "host0.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert appears(one / "host0.lock", 30) is not None
        time.sleep(1.0)
        assert not lock_is_free(one / "host0.lock"), "host 1 got a lock host 0 holds"
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        killed = time.monotonic()
        wait_until(lambda: lock_is_free(one / "host0.lock"), 120, "the lock freed by kill -9")
        freed = time.monotonic() - killed
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)

    # Adoption renames a whole work folder, records and files together.
    (zero / "work-a").mkdir()
    (zero / "work-a" / "claim.json").write_text("{}")
    os.rename(one / "work-a", one / "adopted")
    assert (server / "adopted" / "claim.json").read_text() == "{}"
    ledger.note(
        f"{share.kind} primitives: {share.describe()}; lock free {freed:.1f}s after kill -9"
    )


# --- polling through the other mount ---------------------------------------------------------


def test_polling_takes_files_written_through_the_other_mount(
    share: Share, pixel_checkpoint: Path, tmp_path: Path, ledger: Ledger
) -> None:
    zero, one, server = roots(share, "pickup")
    daemon = host_daemon(zero, pixel_checkpoint, "host0", tmp_path)
    start_all(daemon)
    names = [f"up/f{i}.png" for i in range(PICKUP_FILES)]
    taken, seen_back = [], []
    for i, name in enumerate(names):
        drop(one / "inbox", [name], [tiny_png(i)])  # written by host 1, which runs nothing
        waited = appears(server / "outbox" / f"{name}.png", 60)
        assert waited is not None, f"{name} was never processed\n{daemon.log[-3000:]}"
        taken.append(waited)
        # ... and the uploader sees its result through its own mount (its own caches).
        back = appears(one / "outbox" / f"{name}.png", 120)
        assert back is not None, f"host 1 never saw the output of {name}"
        seen_back.append(back)
    wait_until(lambda: settled(server) >= len(names), 30, "all settled", daemon)
    assert daemon.stop() == 0
    assert_each_exactly_once(server, names, ledger)
    ledger.note(
        f"{share.kind} polling: {len(names)} files written through host 1, taken by host 0 in "
        f"median {statistics.median(taken):.1f}s (max {max(taken):.1f}s, settle 1 s, rescan "
        f"1 s); output seen through host 1 {statistics.median(seen_back):.2f}s later "
        f"(max {max(seen_back):.2f}s)"
    )


# --- two hosts, one inbox ---------------------------------------------------------------------


def drop_from_both(hosts: tuple[Path, Path], names: list[str]) -> list[threading.Thread]:
    """Two uploaders, one per host, each writing every other file (temp name, then rename)."""
    payloads = [tiny_png(i) for i in range(64)]
    writers = []
    for h, host in enumerate(hosts):
        mine = names[h::2]
        writer = threading.Thread(target=drop, args=(host / "inbox", mine, payloads))
        writer.start()
        writers.append(writer)
    return writers


def net_names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}/{i // 500:02d}/f{i:05d}.png" for i in range(count)]


def test_two_hosts_process_each_file_exactly_once(
    share: Share, pixel_checkpoint: Path, tmp_path: Path, ledger: Ledger
) -> None:
    zero, one, server = roots(share, "race")
    daemons = [
        host_daemon(zero, pixel_checkpoint, "host0", tmp_path),
        host_daemon(one, pixel_checkpoint, "host1", tmp_path),
    ]
    start_all(*daemons)
    names = net_names("race", FILES)
    started = time.monotonic()
    writers = drop_from_both((zero, one), names)
    wait_until(lambda: settled(server) >= FILES, 120 + FILES, "both hosts done", daemons[0])
    elapsed = time.monotonic() - started
    for writer in writers:
        writer.join()
    time.sleep(1.0)
    processed = [int(metric(d, "artd_files_processed_total")) for d in daemons]
    for daemon in daemons:
        assert daemon.stop() == 0
    report = assert_each_exactly_once(server, names, ledger)
    assert len(report["out"]) == FILES and len(files_under(server / "archive")) == FILES
    assert sum(processed) == FILES, processed
    ledger.note(
        f"{share.kind} two hosts: {FILES} files in {elapsed:.0f}s ({FILES / elapsed:.0f}/s), "
        f"processed {processed[0]} by host 0 + {processed[1]} by host 1; lost 0, duplicated 0"
    )


def test_a_killed_host_keeps_its_work_until_its_lock_is_free_then_it_is_adopted(
    share: Share, pixel_checkpoint: Path, tmp_path: Path, ledger: Ledger
) -> None:
    zero, one, server = roots(share, "adopt")
    first = host_daemon(zero, pixel_checkpoint, "host0", tmp_path)
    second = host_daemon(one, pixel_checkpoint, "host1", tmp_path)
    start_all(first, second)
    names = net_names("adopt", FILES)
    writers = drop_from_both((zero, one), names)
    assert first.proc is not None
    # Freeze host 0 while it holds claims: alive (its lock held) but doing nothing.

    def mid_run() -> bool:
        return settled(server) >= FILES // 4 and len(claims_of(server, "host0")) >= 3

    wait_until(mid_run, 300, "host 0 holding claims mid-run", first)
    os.kill(first.proc.pid, signal.SIGSTOP)
    held = len(claims_of(server, "host0"))
    try:
        # 1. Its lock is seen from host 1: the name cannot be reused there ...
        impostor = host_daemon(one, pixel_checkpoint, "host0", tmp_path / "impostor")
        impostor.log_path.parent.mkdir()
        impostor.start(wait=False)
        assert impostor.proc is not None
        assert impostor.proc.wait(120) != 0, "a second 'host0' started while the first lives"
        assert "in use by a live process" in impostor.log, impostor.log[-2000:]
        # ... and a restart of host 1 (adoption runs at start) leaves its work alone.
        assert second.stop() == 0
        second.start()
        time.sleep(3.0)
        assert ADOPTED not in second.log, "host 1 adopted the work of a live instance"
        assert len(claims_of(server, "host0")) == held
    finally:
        os.kill(first.proc.pid, signal.SIGKILL)  # 2. host 0 dies for real
        first.proc.wait(10)
    killed = time.monotonic()
    lock = one / ".artd" / "locks" / "host0.lock"
    wait_until(lambda: lock_is_free(lock), 120, "host 0's lock freed by its death")
    freed = time.monotonic() - killed
    # 3. The next start of host 1 adopts what host 0 had claimed.
    assert second.stop() == 0
    second.start()
    wait_until(lambda: ADOPTED in second.log, 60, "the adoption", second)
    for writer in writers:
        writer.join()
    wait_until(lambda: settled(server) >= FILES, 120 + FILES, "all settled", second)
    time.sleep(1.0)
    assert second.stop() == 0
    report = assert_each_exactly_once(server, names, ledger)
    assert len(report["out"]) == FILES and report["quarantined"] == []
    assert claims_of(server, "host0") == []
    ledger.add(faults=1)
    ledger.note(
        f"{share.kind} kill -9 and adoption: {FILES} files; host 0 frozen with {held} claims "
        f"(lock refused a second 'host0' and a restart of host 1 left them), killed, lock free "
        f"{freed:.1f}s later, adopted by host 1's next start; {len(report['out'])} out, "
        "0 quarantined, lost 0, duplicated 0"
    )
