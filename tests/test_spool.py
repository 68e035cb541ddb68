"""The spool on real folders: every input ends in exactly one place, whatever crashes when."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path, PurePosixPath

import pytest
from loguru import logger

from core.reasons import Reason
from daemon.spool import (
    SIDECAR_SUFFIX,
    TEMP_MARK,
    Claim,
    InstanceLockedError,
    Spool,
    SpoolError,
    new_claim_id,
)

REPO = Path(__file__).resolve().parents[1]
SECRET = b"TOP-SECRET-CONTENT-OUTSIDE-ROOT"


# --- helpers --------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def spool(root: Path) -> Iterator[Spool]:
    s = Spool(root, "a")
    s.prepare()
    yield s
    s.close()


def drop(spool: Spool, rel: str, data: bytes = b"image bytes") -> Path:
    path = spool.inbox / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def files(folder: Path) -> dict[str, bytes]:
    """Every regular file under ``folder`` (symlinks not followed) by relative path."""
    found = {}
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                found[path.relative_to(folder).as_posix()] = path.read_bytes()
    return found


def take(spool: Spool, rel: str, data: bytes = b"image bytes") -> Claim:
    claim = spool.claim(drop(spool, rel, data))
    assert claim is not None
    return claim


def reopen(spool: Spool) -> Spool:
    """What a restart sees: the old process is gone (lock released, memory lost)."""
    spool.close()
    fresh = Spool(spool.root, spool.instance, keep_originals=spool.keep_originals)
    fresh.prepare()
    return fresh


def assert_settled(spool: Spool) -> None:
    """No claim, record, reservation or temporary file is left anywhere."""
    assert os.listdir(spool.work_dir) == []
    assert os.listdir(spool.state / "reserved") == []
    leftovers = [p for p in spool.root.rglob("*") if TEMP_MARK in p.name]
    assert leftovers == []


def python(code: str, *args: object, **kw: object) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        **kw,
    )


def rewrite_record(spool: Spool, claim_id: str, **changes: object) -> None:
    path = spool.work_dir / f"{claim_id}.json"
    record = json.loads(path.read_text()) | changes
    path.write_text(json.dumps(record))


# --- candidates -----------------------------------------------------------------------

SKIPPED = [
    ".hidden.jpg",
    ".a.jpg.Xy12Zq",  # rsync's temporary name
    "a.jpg.part",
    "a.partial",
    "a.jpg.crdownload",
    "a.download",
    "a.tmp",
    "a.TMP",
    "a.temp",
    "~$draft.jpg",
    "a.swp",
    "Thumbs.db",
    "desktop.ini",
    ".DS_Store",
    "._a.jpg",  # AppleDouble
    ".sync/a.jpg",
    "sub/.cache/a.jpg",
]
TAKEN = ["a.jpg", "sub/b.png", "deep/er/c.webp", "no_extension", "a.tmp.jpg"]


def test_candidate_names(spool: Spool) -> None:
    for rel in SKIPPED + TAKEN:
        drop(spool, rel)
    for rel in SKIPPED:
        assert not spool.is_candidate(spool.inbox / rel), rel
    for rel in TAKEN:
        assert spool.is_candidate(spool.inbox / rel), rel
    found = {p.relative_to(spool.inbox).as_posix() for p in spool.scan_inbox()}
    assert found == set(TAKEN)


def test_special_files_are_never_candidates(spool: Spool, tmp_path: Path) -> None:
    messages: list[str] = []
    sink = logger.add(messages.append, level="WARNING")
    try:
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "secret.jpg").write_bytes(SECRET)
        (spool.inbox / "link.jpg").symlink_to(outside / "secret.jpg")
        (spool.inbox / "linkdir").symlink_to(outside, target_is_directory=True)
        os.mkfifo(spool.inbox / "pipe.jpg")
        drop(spool, "real.jpg")
        for _ in range(2):
            assert not spool.is_candidate(spool.inbox / "link.jpg")
            assert not spool.is_candidate(spool.inbox / "pipe.jpg")
            assert not spool.is_candidate(spool.inbox / "linkdir" / "secret.jpg")
            assert [p.name for p in spool.scan_inbox()] == ["real.jpg"]
        assert spool.claim(spool.inbox / "link.jpg") is None
        assert spool.claim(spool.inbox / "pipe.jpg") is None
        assert spool.claim(spool.inbox / "linkdir" / "secret.jpg") is None
        # Outside the inbox, or escaping it lexically.
        drop(spool, "sub/x.jpg")
        (spool.outbox / "o.jpg").write_bytes(b"x")
        assert not spool.is_candidate(spool.outbox / "o.jpg")
        assert not spool.is_candidate(spool.inbox / "sub" / ".." / ".." / "outbox" / "o.jpg")
        assert not spool.is_candidate(outside / "secret.jpg")
    finally:
        logger.remove(sink)
    # They stay where they are, untouched, and each was reported once.
    assert (spool.inbox / "link.jpg").is_symlink() and (spool.inbox / "pipe.jpg").exists()
    assert (outside / "secret.jpg").read_bytes() == SECRET
    assert sum("link.jpg" in m for m in messages) == 1
    assert sum("pipe.jpg" in m for m in messages) == 1


# --- claiming -------------------------------------------------------------------------


def test_claim_moves_the_file_and_records_it(spool: Spool) -> None:
    data = b"\xff\xd8 some jpeg"
    path = drop(spool, "sub/a.jpg", data)
    claim = spool.claim(path)
    assert claim is not None
    assert not path.exists()
    assert claim.work_path.parent == spool.work_dir and claim.work_path.suffix == ".jpg"
    assert claim.work_path.read_bytes() == data
    assert claim.rel_path == PurePosixPath("sub/a.jpg")
    assert claim.output_rel == PurePosixPath("sub/a.jpg.png")
    assert (claim.size, claim.attempts) == (len(data), 1)
    assert claim.sha256 == hashlib.sha256(data).hexdigest()
    record = json.loads((spool.work_dir / f"{claim.id}.json").read_text())
    assert record["state"] == "claimed"
    assert (record["rel_path"], record["output_rel"]) == ("sub/a.jpg", "sub/a.jpg.png")
    assert spool.claim(path) is None  # gone: nothing to claim twice
    with spool.open_claim(claim) as handle:
        assert handle.read() == data


def test_claim_ids_are_unique_and_time_ordered() -> None:
    ids = [new_claim_id() for _ in range(1000)]
    assert len(set(ids)) == 1000 and ids == sorted(ids)


RACER = """
import json, os, sys, time
from daemon.spool import Spool
root, name, go, reverse = sys.argv[1:5]
spool = Spool(root, name)
spool.prepare()
paths = list(spool.scan_inbox())
if reverse == "1":
    paths.reverse()
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
got = [str(c.rel_path) for c in map(spool.claim, paths) if c is not None]
print(json.dumps(got), flush=True)
"""


def test_claim_race_each_file_claimed_exactly_once(root: Path) -> None:
    with Spool(root, "setup") as setup:
        names = {f"d{i % 3}/f{i:02d}.jpg" for i in range(50)}
        for rel in names:
            drop(setup, rel, rel.encode())
    go = root / "go"
    racers = [python(RACER, root, f"r{i}", go, i % 2) for i in range(4)]
    for proc in racers:
        assert proc.stdout.readline().strip() == "ready"
    go.touch()
    results = [json.loads(proc.communicate(timeout=60)[0]) for proc in racers]
    claimed = [rel for got in results for rel in got]
    assert sorted(claimed) == sorted(names)  # every file once, none twice
    for i, got in enumerate(results):
        work = root / ".artd" / "work" / f"r{i}"
        assert len([n for n in os.listdir(work) if n.endswith(".json")]) == len(got)
    assert files(root / "inbox") == {}


# --- the instance lock ----------------------------------------------------------------

HOLDER = """
import sys, time
from daemon.spool import Spool
Spool(sys.argv[1], sys.argv[2]).prepare()
print("locked", flush=True)
time.sleep(120)
"""


def test_instance_lock_refused_while_alive_granted_after_sigkill(root: Path) -> None:
    holder = python(HOLDER, root, "gpu0")
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InstanceLockedError, match="gpu0"):
            Spool(root, "gpu0").prepare()
        with Spool(root, "gpu1"):  # another name is free
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    with Spool(root, "gpu0") as spool:
        with pytest.raises(InstanceLockedError):  # one holder per name, even in one process
            Spool(root, "gpu0").prepare()
        assert (spool.state / "heartbeats" / "gpu0").exists()


def test_unprepared_spool_refuses_to_move_files(root: Path) -> None:
    with pytest.raises(SpoolError):
        Spool(root, "../escape")
    spool = Spool(root, "a")
    spool.prepare_folders()
    with pytest.raises(SpoolError, match="prepare"):
        spool.claim(drop(spool, "a.jpg"))
    assert (spool.inbox / "a.jpg").exists()


# --- folder checks --------------------------------------------------------------------


def test_prepare_refuses_symlinked_or_non_folders(root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root.mkdir()
    (root / "outbox").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(SpoolError, match="outbox"):
        Spool(root, "a").prepare()
    (root / "outbox").unlink()
    (root / "archive").write_bytes(b"not a folder")
    with pytest.raises(SpoolError, match="archive"):
        Spool(root, "a").prepare()


def test_prepare_refuses_a_folder_on_another_filesystem(root: Path) -> None:
    (root / "archive").mkdir(parents=True)
    if subprocess.run(
        ["mount", "-t", "tmpfs", "none", root / "archive"], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with pytest.raises(SpoolError, match="archive"):
            Spool(root, "a").prepare()
    finally:
        subprocess.run(["umount", root / "archive"], check=True)


def test_prepare_refuses_an_unwritable_folder(root: Path) -> None:
    (root / "quarantine").mkdir(parents=True)
    if subprocess.run(["chattr", "+i", root / "quarantine"], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        with pytest.raises(SpoolError, match="quarantine"):
            Spool(root, "a").prepare()
    finally:
        subprocess.run(["chattr", "-i", root / "quarantine"], check=True)


# --- commit and names -----------------------------------------------------------------


@pytest.mark.parametrize("keep", [True, False])
def test_commit_writes_one_output_and_disposes_of_the_original(root: Path, keep: bool) -> None:
    with Spool(root, "a", keep_originals=keep) as spool:
        claim = take(spool, "sub/a.jpg", b"original")
        out = spool.commit(claim, b"output")
        assert out == spool.outbox / "sub" / "a.jpg.png"
        assert files(spool.outbox) == {"sub/a.jpg.png": b"output"}
        assert files(spool.archive) == ({"sub/a.jpg": b"original"} if keep else {})
        assert files(spool.inbox) == {}
        assert_settled(spool)


def test_names_never_collide(spool: Spool) -> None:
    spool.commit(take(spool, "s/a.jpg", b"jpg"), b"out-jpg")
    spool.commit(take(spool, "s/a.png", b"png"), b"out-png")
    spool.commit(take(spool, "s/a.jpg", b"jpg again"), b"out-jpg-2")  # same name, dropped later
    assert files(spool.outbox) == {
        "s/a.jpg.png": b"out-jpg",
        "s/a.png.png": b"out-png",
        "s/a.jpg (2).png": b"out-jpg-2",
    }
    assert files(spool.archive) == {
        "s/a.jpg": b"jpg",
        "s/a.png": b"png",
        "s/a (2).jpg": b"jpg again",
    }
    assert_settled(spool)


def test_in_flight_claim_of_another_instance_reserves_its_name(spool: Spool) -> None:
    with Spool(spool.root, "b") as other:
        first = take(other, "x.jpg", b"first")
        second = take(spool, "x.jpg", b"second")
        assert (first.output_rel, second.output_rel) == (
            PurePosixPath("x.jpg.png"),
            PurePosixPath("x.jpg (2).png"),
        )
        spool.commit(second, b"out-second")
        other.commit(first, b"out-first")
        assert files(spool.outbox) == {"x.jpg.png": b"out-first", "x.jpg (2).png": b"out-second"}
        assert_settled(other)
    assert_settled(spool)


def test_commit_refuses_to_write_through_a_symlinked_outbox_folder(
    spool: Spool, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    claim = take(spool, "sub/a.jpg")
    (spool.outbox / "sub").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(OSError, match="symlink"):
        spool.commit(claim, b"output")
    assert os.listdir(elsewhere) == []
    assert claim.work_path.exists()  # still claimed, nothing lost


# --- quarantine -----------------------------------------------------------------------


def test_quarantine_moves_the_file_beside_its_reason(spool: Spool) -> None:
    data = b"not really an image"
    claim = take(spool, "sub/q.jpg", data)
    details = {"n": 1, "p": Path("/x")}
    dest = spool.quarantine(claim, Reason.NOT_AN_IMAGE, "cannot identify", details)
    assert dest == spool.quarantine_dir / "sub" / "q.jpg"
    assert dest.read_bytes() == data
    sidecar = json.loads((spool.quarantine_dir / "sub" / f"q.jpg{SIDECAR_SUFFIX}").read_text())
    assert sidecar["reason"] == "not_an_image" and sidecar["message"] == "cannot identify"
    assert sidecar["original_path"] == "sub/q.jpg" and sidecar["instance"] == "a"
    assert (sidecar["size"], sidecar["attempts"]) == (len(data), 1)
    assert sidecar["sha256"] == hashlib.sha256(data).hexdigest()
    assert sidecar["details"] == {"n": 1, "p": "/x"}
    assert datetime.fromisoformat(sidecar["time"]).tzinfo is not None
    again = spool.quarantine(take(spool, "sub/q.jpg", b"second"), Reason.TRUNCATED, "short")
    assert again.name == "q (2).jpg" and again.read_bytes() == b"second"
    assert (again.parent / f"q (2).jpg{SIDECAR_SUFFIX}").exists()
    assert files(spool.outbox) == {} and files(spool.archive) == {}
    assert_settled(spool)


def test_swapped_in_symlink_is_moved_never_read(spool: Spool, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(SECRET)
    path = drop(spool, "a.jpg")
    assert spool.is_candidate(path)
    # The user swaps in a symlink after the check and before the rename inside claim().
    path.unlink()
    path.symlink_to(secret)
    assert spool._machine.take(path, PurePosixPath("a.jpg")) is None
    moved = spool.quarantine_dir / "a.jpg"
    assert moved.is_symlink()
    sidecar = json.loads((spool.quarantine_dir / f"a.jpg{SIDECAR_SUFFIX}").read_text())
    assert sidecar["reason"] == "not_a_regular_file"
    # The same for a FIFO: moved without opening it (opening would block).
    os.mkfifo(spool.inbox / "p.jpg")

    def hung(*_: object) -> None:
        raise TimeoutError("claim blocked on a FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        assert spool._machine.take(spool.inbox / "p.jpg", PurePosixPath("p.jpg")) is None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert (spool.quarantine_dir / f"p.jpg{SIDECAR_SUFFIX}").exists()
    assert secret.read_bytes() == SECRET
    assert all(SECRET not in data for data in files(spool.root).values())
    assert_settled(spool)


def test_open_claim_refuses_a_symlink(spool: Spool, tmp_path: Path) -> None:
    claim = take(spool, "a.jpg")
    (tmp_path / "secret").write_bytes(SECRET)
    claim.work_path.unlink()
    claim.work_path.symlink_to(tmp_path / "secret")
    with pytest.raises(OSError):
        spool.open_claim(claim)


# --- crash recovery -------------------------------------------------------------------

COMMIT_CRASHES = ["claimed", "temp_written", "output_final", "committed", "archived", "unrecorded"]


@pytest.mark.parametrize("crash", COMMIT_CRASHES)
def test_recover_finishes_a_commit_cut_at_any_step(spool: Spool, crash: str) -> None:
    claim = take(spool, "sub/a.jpg", b"original")
    if crash == "temp_written":
        temp = spool.outbox / "sub" / f".a.jpg.png{TEMP_MARK}{claim.id}"
        temp.parent.mkdir()
        temp.write_bytes(b"half an out")
    if COMMIT_CRASHES.index(crash) >= COMMIT_CRASHES.index("output_final"):
        spool._machine.write_output(claim, b"output")
    if COMMIT_CRASHES.index(crash) >= COMMIT_CRASHES.index("committed"):
        record = spool._machine.mark_committed(claim)
    if COMMIT_CRASHES.index(crash) >= COMMIT_CRASHES.index("archived"):
        spool._machine.dispose_original(record)
    if crash == "unrecorded":  # record gone, reservations not yet
        (spool.work_dir / f"{claim.id}.json").unlink()

    spool = reopen(spool)
    resumed = spool.recover()
    # Once the output is renamed into place the claim is done, record closed or not.
    finished = COMMIT_CRASHES.index(crash) >= COMMIT_CRASHES.index("output_final")
    assert [c.id for c in resumed] == ([] if finished else [claim.id])
    for again in resumed:
        assert again.attempts == 2 and again.output_rel == claim.output_rel
        assert (again.interrupted, again.solo_crashes, again.suspect) == (1, 0, True)
        spool.commit(again, b"output")
    assert files(spool.outbox) == {"sub/a.jpg.png": b"output"}
    assert files(spool.archive) == {"sub/a.jpg": b"original"}
    assert files(spool.inbox) == {}
    assert_settled(spool)


QUARANTINE_CRASHES = ["marked", "sidecar_written", "moved", "unrecorded"]


@pytest.mark.parametrize("crash", QUARANTINE_CRASHES)
def test_recover_finishes_a_quarantine_cut_at_any_step(spool: Spool, crash: str) -> None:
    claim = take(spool, "q.jpg", b"bad")
    record = spool._machine.mark_quarantining(claim, Reason.TRUNCATED, "ends early", None)
    if crash != "marked":
        spool._machine.move_to_quarantine(record)
    if crash == "sidecar_written":  # undo the rename: sidecar out, file still claimed
        os.rename(spool.quarantine_dir / "q.jpg", claim.work_path)
    if crash == "unrecorded":
        (spool.work_dir / f"{claim.id}.json").unlink()

    spool = reopen(spool)
    assert spool.recover() == []
    assert files(spool.quarantine_dir).keys() == {"q.jpg", f"q.jpg{SIDECAR_SUFFIX}"}
    assert (spool.quarantine_dir / "q.jpg").read_bytes() == b"bad"
    sidecar = json.loads((spool.quarantine_dir / f"q.jpg{SIDECAR_SUFFIX}").read_text())
    assert sidecar["reason"] == "truncated"
    assert_settled(spool)


def test_recover_after_a_crash_around_the_claim_rename(spool: Spool) -> None:
    # Intent written, rename never happened: the record goes, the file stays in the inbox.
    before = take(spool, "before.jpg", b"b")
    os.rename(before.work_path, spool.inbox / "before.jpg")
    rewrite_record(spool, before.id, state="claiming", attempts=0, size=None, sha256=None)
    # Renamed, record still "claiming": finished now, with its relative path.
    after = take(spool, "sub/after.jpg", b"a")
    rewrite_record(spool, after.id, state="claiming", attempts=0, size=None, sha256=None)
    # A claimed file whose record is gone: resumed under its work name.
    lost = take(spool, "lost.jpg", b"l")
    (spool.work_dir / f"{lost.id}.json").unlink()
    # A reservation whose claim never got a record.
    assert spool._machine.reservations.reserve("outbox/ghost.jpg.png", new_claim_id())

    spool = reopen(spool)
    resumed = {c.id: c for c in spool.recover()}
    assert resumed.keys() == {after.id, lost.id}
    assert resumed[after.id].rel_path == PurePosixPath("sub/after.jpg")
    assert resumed[after.id].sha256 == hashlib.sha256(b"a").hexdigest()
    assert resumed[after.id].attempts == 1
    assert resumed[lost.id].rel_path == PurePosixPath(lost.work_path.name)
    assert files(spool.inbox) == {"before.jpg": b"b"}
    for claim in resumed.values():
        spool.commit(claim, b"out")
    spool.commit(take(spool, "before.jpg", b"b"), b"out")
    assert files(spool.outbox).keys() == {
        "sub/after.jpg.png",
        "before.jpg.png",
        f"{lost.work_path.name}.png",
    }
    assert_settled(spool)


def test_attempts_count_every_restart_and_no_restart_charges_a_file(spool: Spool) -> None:
    """The service's own death never charges a file: restarts count ``interrupted``, and the
    ``solo`` marker of an artd that ran the model in the service is dropped, not charged."""
    claim = take(spool, "crashy.jpg")
    assert (claim.attempts, claim.interrupted, claim.solo_crashes) == (1, 0, 0)
    assert not claim.suspect
    for expected, solo in ((2, False), (3, True), (4, False), (5, True)):
        if solo:  # as an older artd marked a suspect alone in the model
            path = spool.work_dir / f"{claim.id}.json"
            path.write_text(json.dumps(json.loads(path.read_text()) | {"solo": True}))
        spool = reopen(spool)
        (again,) = spool.recover()
        assert (again.attempts, again.interrupted) == (expected, expected - 1)
        assert again.solo_crashes == 0 and again.suspect
        record = json.loads((spool.work_dir / f"{claim.id}.json").read_text())
        assert "solo" not in record
        claim = again
    # The pipeline records a model worker's solo crashes on the claim it quarantines.
    claim.solo_crashes = 3
    spool.quarantine(claim, Reason.CRASHED_REPEATEDLY, "the model worker died alone 3 times")
    sidecar = json.loads((spool.quarantine_dir / f"crashy.jpg{SIDECAR_SUFFIX}").read_text())
    assert (sidecar["attempts"], sidecar["interrupted"], sidecar["solo_crashes"]) == (5, 4, 3)
    assert_settled(spool)


def test_records_without_the_crash_counts_load_as_attempts(spool: Spool) -> None:
    claim = take(spool, "old.jpg")
    record = json.loads((spool.work_dir / f"{claim.id}.json").read_text())
    for field in ("interrupted", "solo_crashes"):
        del record[field]
    (spool.work_dir / f"{claim.id}.json").write_text(json.dumps(record | {"attempts": 3}))
    spool = reopen(spool)
    (old,) = spool.recover()
    assert (old.attempts, old.interrupted, old.solo_crashes) == (4, 3, 0)
    spool.commit(old, b"out")
    assert_settled(spool)


def test_an_output_under_a_name_reserved_by_another_claim_is_not_taken_for_ours(
    spool: Spool,
) -> None:
    claim = take(spool, "a.jpg", b"a")
    (spool.outbox / "a.jpg.png").write_bytes(b"someone else's")
    key = "outbox/a.jpg.png"
    spool._machine.reservations.release(key)
    assert spool._machine.reservations.reserve(key, new_claim_id())  # another claim's name
    spool = reopen(spool)
    (again,) = spool.recover()  # not finished as committed: resumed, output not trusted
    assert again.id == claim.id and again.interrupted == 1 and files(spool.archive) == {}


def test_release_keeps_the_claim_for_a_retry_and_for_the_next_start(spool: Spool) -> None:
    claim = take(spool, "a.jpg", b"a")
    spool.release(claim)
    assert claim.work_path.exists()
    assert spool.recover() == []  # still the caller's: a retry will commit it
    spool = reopen(spool)
    (again,) = spool.recover()
    spool.commit(again, b"out")
    assert files(spool.outbox) == {"a.jpg.png": b"out"}
    assert_settled(spool)


def test_recover_removes_stale_temporary_files(spool: Spool) -> None:
    old = spool.outbox / f".x.png{TEMP_MARK}{new_claim_id()}"
    young = spool.outbox / f".y.png{TEMP_MARK}{new_claim_id()}"
    for temp in (old, young):
        temp.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    spool.recover()
    assert not old.exists() and young.exists()  # young may be a live peer's write


CHAOS = """
import sys
from daemon.spool import Spool
spool = Spool(sys.argv[1], "w")
spool.prepare()
print("up", flush=True)

def process(claim):
    with spool.open_claim(claim) as handle:
        data = handle.read()
    if data.startswith(b"bad"):
        spool.quarantine(claim, "not_an_image", "test")
    else:
        spool.commit(claim, b"out:" + data)

for claim in spool.recover():
    process(claim)
for path in list(spool.scan_inbox()):
    claim = spool.claim(path)
    if claim is not None:
        process(claim)
"""


def test_kill_9_at_random_instants_loses_and_duplicates_nothing(root: Path) -> None:
    inputs = {
        f"d{i % 3}/f{i:02d}.jpg": (b"bad" if i % 7 == 0 else b"good") + bytes([i])
        for i in range(40)
    }
    with Spool(root, "setup") as setup:
        for rel, data in inputs.items():
            drop(setup, rel, data)
    rng = random.Random(1234)
    for _ in range(8):
        proc = python(CHAOS, root)
        assert proc.stdout.readline().strip() == "up"
        time.sleep(rng.uniform(0.0, 0.08))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    final = python(CHAOS, root)
    final.communicate(timeout=60)
    assert final.returncode == 0

    spool = Spool(root, "w")
    spool.prepare()
    good = {rel: data for rel, data in inputs.items() if not data.startswith(b"bad")}
    bad = {rel: data for rel, data in inputs.items() if data.startswith(b"bad")}
    assert files(spool.inbox) == {}
    assert files(spool.outbox) == {f"{rel}.png": b"out:" + data for rel, data in good.items()}
    assert files(spool.archive) == good
    sidecars = {f"{rel}{SIDECAR_SUFFIX}" for rel in bad}
    quarantined = files(spool.quarantine_dir)
    assert quarantined.keys() == bad.keys() | sidecars
    assert {rel: quarantined[rel] for rel in bad} == bad
    assert_settled(spool)
    spool.close()


# --- adoption and housekeeping --------------------------------------------------------


def test_adopt_stale_takes_over_a_dead_instance_only(root: Path) -> None:
    dead = Spool(root, "dead")
    dead.prepare()
    waiting = take(dead, "w.jpg", b"w")
    committed = take(dead, "c.jpg", b"c")
    dead._machine.write_output(committed, b"out-c")
    dead._machine.mark_committed(committed)
    dead.close()  # the process is gone: its lock is free
    alive = Spool(root, "alive")
    alive.prepare()
    busy = take(alive, "busy.jpg", b"b")

    with Spool(root, "me") as me:
        adopted = me.adopt_stale()
        assert [c.id for c in adopted] == [waiting.id]
        assert adopted[0].work_path.parent == me.work_dir and adopted[0].attempts == 2
        assert not (root / ".artd" / "work" / "dead").exists()
        assert busy.work_path.exists()  # a live instance's work is left alone
        assert me.adopt_stale() == []
        me.commit(adopted[0], b"out-w")
        assert files(me.outbox) == {"c.jpg.png": b"out-c", "w.jpg.png": b"out-w"}
        assert files(me.archive) == {"c.jpg": b"c", "w.jpg": b"w"}
        assert os.listdir(me.work_dir) == []
    alive.commit(busy, b"out-b")
    assert_settled(alive)
    alive.close()


def test_remove_empty_dirs_keeps_young_full_and_hidden_folders(spool: Spool) -> None:
    old = time.time() - 3600
    for rel in ("old/empty/nested", "young", ".hidden", "full"):
        (spool.inbox / rel).mkdir(parents=True)
    drop(spool, "full/x.jpg")
    for rel in ("old/empty/nested", "old/empty", "old", ".hidden", "full"):
        os.utime(spool.inbox / rel, (old, old))
    spool.remove_empty_dirs()
    assert sorted(os.listdir(spool.inbox)) == [".hidden", "full", "young"]
    spool.remove_empty_dirs(older_than=0)
    assert sorted(os.listdir(spool.inbox)) == [".hidden", "full"]


def test_heartbeat_touches_its_file(spool: Spool) -> None:
    beat = spool.state / "heartbeats" / "a"
    os.utime(beat, (0, 0))
    spool.heartbeat()
    assert time.time() - beat.stat().st_mtime < 60
