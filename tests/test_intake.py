"""Intake against real watchdog observers, real files and real threads."""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import daemon.intake as intake_mod
from daemon.intake import Intake

SETTLE = 0.4
TEMP_SUFFIXES = (".part", ".tmp", ".crdownload")


# ----- simple real stand-ins for Spool.is_candidate / Spool.scan_inbox -----


def make_is_candidate(inbox: Path) -> Callable[[Path], bool]:
    def is_candidate(path: Path) -> bool:
        try:
            rel = path.relative_to(inbox)
        except ValueError:
            return False
        if any(part.startswith((".", "~$")) for part in rel.parts):
            return False
        if path.name.endswith(TEMP_SUFFIXES):
            return False
        try:
            return stat.S_ISREG(os.lstat(path).st_mode)
        except OSError:
            return False

    return is_candidate


def make_scan(inbox: Path) -> Callable[[], Iterator[Path]]:
    def scan() -> Iterator[Path]:
        for root, dirs, files in os.walk(inbox):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if not name.startswith("."):
                    yield Path(root, name)

    return scan


class Consumer:
    """Takes paths and claims them by rename out of the inbox, as the spool does."""

    def __init__(self, intake: Intake, inbox: Path, claimed: Path) -> None:
        self.intake, self.inbox, self.claimed = intake, inbox, claimed
        claimed.mkdir(exist_ok=True)
        self.handed: Counter[str] = Counter()
        self.handed_at: dict[str, float] = {}
        self.contents: dict[str, bytes] = {}
        self.lost = 0  # handed out but gone: a duplicate after a claim, or a bad hand-out

    def run(self, until: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if until():
                return True
            self.intake.wait(0.05)
            for path in self.intake.take(64):
                rel = path.relative_to(self.inbox).as_posix()
                self.handed[rel] += 1
                self.handed_at[rel] = time.monotonic()
                dest = self.claimed / f"{rel.replace('/', '__')}.{self.handed[rel]}"
                try:
                    os.rename(path, dest)
                except FileNotFoundError:
                    self.lost += 1
                    continue
                self.contents[rel] = dest.read_bytes()
        return until()

    def linger(self, seconds: float) -> None:
        self.run(lambda: False, seconds)


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    return path


@pytest.fixture
def make_intake(inbox: Path) -> Iterator[Callable[..., Intake]]:
    made: list[Intake] = []

    def make(**kwargs: object) -> Intake:
        kwargs.setdefault("settle_seconds", SETTLE)
        kwargs.setdefault("rescan_seconds", 0.5)
        intake = Intake(
            inbox, is_candidate=make_is_candidate(inbox), scan=make_scan(inbox), **kwargs
        )
        made.append(intake)
        return intake

    yield make
    for intake in made:
        intake.stop()


@pytest.fixture
def consumer(inbox: Path, tmp_path: Path) -> Callable[[Intake], Consumer]:
    return lambda intake: Consumer(intake, inbox, tmp_path / "claimed")


def write(path: Path, data: bytes) -> float:
    """Open, write, close; returns the time of the close."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return time.monotonic()


# ----- tests -----


def test_closed_file_is_handed_out_at_once_and_only_once(make_intake, consumer, inbox):
    intake = make_intake()
    intake.start()
    got = consumer(intake)
    closed_at = write(inbox / "a.jpg", b"x" * 5000)
    assert got.run(lambda: "a.jpg" in got.handed, timeout=5)
    assert got.handed_at["a.jpg"] - closed_at < SETTLE / 2  # the close event, not the settle timer
    # Right after a claim (a rename out of the inbox) the next close is still seen at once.
    closed_at = write(inbox / "b.jpg", b"y")
    assert got.run(lambda: "b.jpg" in got.handed, timeout=5)
    assert got.handed_at["b.jpg"] - closed_at < SETTLE / 2
    got.linger(1.2)  # rescans come and go
    assert got.handed == {"a.jpg": 1, "b.jpg": 1} and got.lost == 0
    assert got.contents["a.jpg"] == b"x" * 5000
    assert intake.pending() == 0 and intake.healthy


def test_slow_writer_is_taken_only_when_complete(make_intake, consumer, inbox):
    intake = make_intake(settle_seconds=0.5)
    intake.start()
    got = consumer(intake)
    chunks = [bytes([i]) * 1000 for i in range(8)]
    closed_at: list[float] = []

    def slow_writer() -> None:
        with open(inbox / "slow.png", "wb") as f:
            for i, chunk in enumerate(chunks):
                if i:
                    time.sleep(0.2)
                f.write(chunk)
                f.flush()
            # Complete once the last chunk is written: no sleep after it, so a loaded
            # machine that delays this thread cannot make the comparison below fail.
            closed_at.append(time.monotonic())

    writer = threading.Thread(target=slow_writer)
    writer.start()
    assert got.run(lambda: "slow.png" in got.handed, timeout=8)
    writer.join()
    assert got.handed_at["slow.png"] >= closed_at[0]
    assert got.contents["slow.png"] == b"".join(chunks)
    got.linger(0.8)
    assert got.handed == {"slow.png": 1}


def test_rsync_style_temp_then_rename(make_intake, consumer, inbox):
    intake = make_intake()
    intake.start()
    got = consumer(intake)
    data = os.urandom(20_000)
    temp = inbox / ".photo.jpg.Xy12Ab"
    write(temp, data)
    time.sleep(SETTLE + 0.3)  # long enough for the temp to settle, were it a candidate
    os.rename(temp, inbox / "photo.jpg")
    renamed_at = time.monotonic()
    assert got.run(lambda: "photo.jpg" in got.handed, timeout=5)
    assert got.handed_at["photo.jpg"] - renamed_at < SETTLE / 2
    got.linger(0.8)
    assert got.handed == {"photo.jpg": 1}
    assert got.contents["photo.jpg"] == data


def test_file_moved_in_from_outside_is_complete_at_once(make_intake, consumer, inbox, tmp_path):
    intake = make_intake()
    intake.start()
    got = consumer(intake)
    write(tmp_path / "outside.jpg", b"moved")
    os.rename(tmp_path / "outside.jpg", inbox / "moved.jpg")
    moved_at = time.monotonic()
    assert got.run(lambda: "moved.jpg" in got.handed, timeout=5)
    assert got.handed_at["moved.jpg"] - moved_at < SETTLE / 2
    assert got.contents["moved.jpg"] == b"moved"


def test_files_present_at_start_settle_by_time(make_intake, consumer, inbox):
    write(inbox / "old1.jpg", b"1")
    write(inbox / "sub" / "old2.jpg", b"2")
    intake = make_intake()
    started = time.monotonic()
    intake.start()
    got = consumer(intake)
    assert got.run(lambda: len(got.handed) == 2, timeout=5)
    assert min(got.handed_at.values()) - started >= SETTLE  # no close event: wait the settle time
    assert set(got.handed) == {"old1.jpg", "sub/old2.jpg"}


def test_rescan_finds_files_while_the_observer_is_dead(make_intake, consumer, inbox, monkeypatch):
    monkeypatch.setattr(intake_mod, "HEALTH_CHECK_SECONDS", 60.0)  # keep it dead: only scans remain
    intake = make_intake(rescan_seconds=0.3)
    intake.start()
    got = consumer(intake)
    got.linger(0.2)
    intake._observer.stop()  # what an observer crash looks like
    intake._observer.join()
    assert not intake.healthy
    write(inbox / "unseen.jpg", b"u")
    assert got.run(lambda: "unseen.jpg" in got.handed, timeout=5)
    assert got.contents["unseen.jpg"] == b"u"


def test_polling_mode_finds_files(make_intake, consumer, inbox):
    intake = make_intake(polling=True, rescan_seconds=30.0)  # only the poller can see it
    intake.start()
    got = consumer(intake)
    write(inbox / "share.jpg", b"s" * 100)
    assert got.run(lambda: "share.jpg" in got.handed, timeout=6)
    assert got.contents["share.jpg"] == b"s" * 100 and intake.healthy


def test_copied_tree_is_found_whole(make_intake, consumer, inbox, tmp_path):
    intake = make_intake()
    intake.start()
    got = consumer(intake)
    source = tmp_path / "album"
    expected = set()
    for d in ("a", "a/b", "c"):
        for i in range(10):
            write(source / d / f"{i}.jpg", f"{d}/{i}".encode())
            expected.add(f"album/{d}/{i}.jpg")
    shutil.copytree(source, inbox / "album")
    assert got.run(lambda: set(got.handed) == expected, timeout=8)
    got.linger(0.8)
    assert all(n == 1 for n in got.handed.values()) and got.lost == 0
    assert got.contents["album/a/b/3.jpg"] == b"a/b/3"


def test_rejected_names_are_never_handed_out(make_intake, consumer, inbox, tmp_path):
    intake = make_intake()
    intake.start()
    got = consumer(intake)
    for name in (".hidden.jpg", "x.part", "y.tmp", "z.crdownload", "~$doc.jpg", ".dir/in.jpg"):
        write(inbox / name, b"no")
    write(tmp_path / "secret.txt", b"secret")
    os.symlink(tmp_path / "secret.txt", inbox / "link.jpg")
    os.mkfifo(inbox / "fifo.jpg")
    write(inbox / "good.jpg", b"yes")
    assert got.run(lambda: "good.jpg" in got.handed, timeout=5)
    got.linger(SETTLE + 0.8)  # past the settle time and a rescan
    assert got.handed == {"good.jpg": 1}


def ready_count(intake: Intake) -> int:
    with intake._cond:
        return sum(entry.ready for entry in intake._tracked.values())


def test_hand_out_rechecks_name_type_and_size(make_intake, consumer, inbox, tmp_path):
    intake = make_intake(rescan_seconds=30.0)
    intake.start()
    write(inbox / "grows.jpg", b"a" * 10)
    write(inbox / "swapped.jpg", b"b" * 10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and ready_count(intake) < 2:
        intake.wait(0.05)
    assert ready_count(intake) == 2
    write(tmp_path / "other", b"other")
    os.remove(inbox / "swapped.jpg")
    os.symlink(tmp_path / "other", inbox / "swapped.jpg")
    with open(inbox / "grows.jpg", "ab") as f:  # its writer came back
        f.write(b"more")
        f.flush()
        assert intake.take(10) == []
        f.write(b"!")
    got = consumer(intake)
    assert got.run(lambda: "grows.jpg" in got.handed, timeout=5)
    assert got.contents["grows.jpg"] == b"a" * 10 + b"more!"
    got.linger(SETTLE + 0.3)
    assert got.handed == {"grows.jpg": 1}


def test_wait_reports_news_once(make_intake, inbox):
    intake = make_intake(rescan_seconds=30.0)
    intake.start()
    assert intake.wait(0.1) is False
    write(inbox / "n.jpg", b"n")
    assert intake.wait(3.0) is True
    started = time.monotonic()
    assert intake.wait(0.2) is False  # not taken, but no new news: the caller is not spun
    assert time.monotonic() - started >= 0.15
    assert intake.take(5) == [inbox / "n.jpg"]
    assert intake.take(5) == []


def test_empty_file_at_close_waits_for_settle(make_intake, consumer, inbox):
    intake = make_intake()
    intake.start()
    got = consumer(intake)
    closed_at = write(inbox / "empty.jpg", b"")
    assert got.run(lambda: "empty.jpg" in got.handed, timeout=5)
    assert got.handed_at["empty.jpg"] - closed_at >= SETTLE * 0.9


def test_500_files_each_handed_out_exactly_once(make_intake, consumer, inbox):
    intake = make_intake(settle_seconds=0.3, rescan_seconds=0.5)
    intake.start()
    got = consumer(intake)
    names = {f"batch/{i:03d}.jpg" for i in range(500)}
    for name in sorted(names):
        write(inbox / name, name.encode())
    assert got.run(lambda: set(got.handed) == names, timeout=15)
    got.linger(1.0)
    assert all(n == 1 for n in got.handed.values()) and got.lost == 0
    assert all(got.contents[name] == name.encode() for name in names)
    assert intake.pending() == 0


def test_tracker_is_bounded_and_rescan_finds_the_rest(make_intake, consumer, inbox, monkeypatch):
    monkeypatch.setattr(intake_mod, "MAX_TRACKED", 5)
    intake = make_intake(settle_seconds=0.2, rescan_seconds=0.3)
    intake.start()
    names = {f"{i:02d}.jpg" for i in range(30)}
    for name in names:
        write(inbox / name, b"n")
    time.sleep(0.3)
    assert len(intake._tracked) <= 5
    got = consumer(intake)
    assert got.run(lambda: set(got.handed) == names, timeout=10)
    assert all(n == 1 for n in got.handed.values()) and got.lost == 0


@pytest.mark.parametrize("how", ["delete", "move_away"])
def test_inbox_replaced_under_a_running_intake(make_intake, consumer, inbox, tmp_path, how):
    intake = make_intake(rescan_seconds=1.0)
    intake.start()
    got = consumer(intake)
    write(inbox / "before.jpg", b"b")
    assert got.run(lambda: "before.jpg" in got.handed, timeout=5)
    if how == "delete":
        shutil.rmtree(inbox)
    else:
        inbox.rename(tmp_path / "inbox.old")
    got.linger(0.7)  # the intake copes with a missing inbox
    inbox.mkdir()
    write(inbox / "after.jpg", b"a")
    assert got.run(lambda: "after.jpg" in got.handed, timeout=5)
    assert got.contents["after.jpg"] == b"a"
    write(inbox / "later.jpg", b"l")  # the new observer works: a close event, quick
    closed_at = time.monotonic()
    assert got.run(lambda: "later.jpg" in got.handed, timeout=5)
    assert got.handed_at["later.jpg"] - closed_at < SETTLE / 2
    assert intake.observer_restarts >= 1 and intake.healthy


def test_stop_is_idempotent_and_joins_threads(inbox):
    before = set(threading.enumerate())
    never_started = Intake(inbox, is_candidate=make_is_candidate(inbox), scan=make_scan(inbox))
    never_started.stop()  # harmless
    intake = Intake(inbox, is_candidate=make_is_candidate(inbox), scan=make_scan(inbox))
    intake.start()
    assert intake.healthy
    started = set(threading.enumerate()) - before
    assert any(t.name == "artd-intake" for t in started)
    intake.stop()
    intake.stop()
    time.sleep(0.1)
    assert not any(t.is_alive() for t in started)
    assert not intake.healthy
    assert intake.wait(0.01) is False
    with pytest.raises(RuntimeError):
        intake.start()
