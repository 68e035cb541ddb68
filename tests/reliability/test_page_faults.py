"""The page under fire (docs/soak.md, "The page under fire"): a real daemon SIGKILLed at
every step of a retry, and the hostile HTTP corpus fired at a daemon while it works.

Kill points: ``_ARTD_RETRY_KILL_AT=<step>`` (daemon.web.requeue.STEPS, test-only, read at
import) makes the daemon SIGKILL itself just before that step of a retry POST. Each step
gets its own root holding one good photo in the quarantine (``too_many_pixels`` under a
low ``max_pixels`` that the operator has since raised, the way a good file gets there
for real), a daemon that dies in the POST, an immediate restart (within
``RECOVER_AFTER_S``, when a half-done retry must be left alone: it may be a live peer's),
and a restart after it (which finishes the retry); a retry that had not moved the file yet
is simply asked for again. The photo must be exactly once at every moment (by content:
quarantine, held aside, inbox, work/ or outbox) and end exactly once in the outbox.

The HTTP corpus is test_api_security's (imported, not copied): traversals, planted
symlinks and a hard link, malformed requests, refused POSTs, a 1 GB body, a connection
flood and slow-loris clients, with files dropped all along and a real retry in the middle.
Every answer is a 4xx or a closed connection, and the ledger is untouched.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import shutil
import threading
import time
from pathlib import Path

import pytest
import test_api_security as security
from daemon_harness import Daemon
from page_client import TOKEN, photo, post_retry
from reliability_kit import (
    FULL,
    Ledger,
    ledger_fixture,  # noqa: F401  (the ledger fixture)
    tree_snapshot,
    wait_until,
)
from soak_kit import (
    HELD_MARK,
    Drops,
    account,
    encoded,
    escapes,
    photo_crop,
    small_image,
    where,
)

from daemon.service import ADOPT_EVERY_S
from daemon.spool import SIDECAR_SUFFIX
from daemon.web.requeue import RECOVER_AFTER_S, STEPS

pytestmark = pytest.mark.usefixtures("one_thread")

LOW_PIXELS = 100_000  # every photo of page_client.PHOTOS is larger: too_many_pixels
KILL_ENV = "_ARTD_RETRY_KILL_AT"
# The steps killed: every one in `make soak`; in the short form one per kind of state the
# files are in (each step costs three daemon starts).
KILLED = (
    STEPS
    if FULL
    else (
        "record:rename", "take:rename", "take:dir-flush", "place:sidecar-move", "place:move",
        "place:inbox-flush", "sidecar:unlink", "drop:unlink",
    )
)  # fmt: skip
# Restarted at once after the kill (besides the restart after RECOVER_AFTER_S): every step
# in `make soak`, one per kind of state in the short form (each start costs seconds).
AT_ONCE = (
    set(STEPS)
    if FULL
    else {"record:rename", "take:dir-flush", "place:move", "place:inbox-flush", "drop:unlink"}
)
# Steps before the file is taken aside: the retry never happened, ask again.
BEFORE_TAKE = {s for s in STEPS if s.startswith("record:")} | {"take:rename"}


def payload(i: int) -> bytes:
    """A full-size real photo, different bytes for each ``i``."""
    name = ("astronaut", "coffee", "chelsea", "rocket")[i % 4]
    return encoded(photo(name), "JPEG", quality=70 + i)


def copies(root: Path, digest: str) -> list[str]:
    """Every place under the root that holds the photo's bytes or an output made from it."""
    found = []
    for area in ("inbox", "quarantine", ".artd/work"):
        for dirpath, _dirs, names in os.walk(root / area):
            for name in names:
                path = Path(dirpath, name)
                if name.endswith(SIDECAR_SUFFIX) or path.is_symlink():
                    continue
                if hashlib.sha256(path.read_bytes()).hexdigest() == digest:
                    found.append(path.relative_to(root).as_posix())
    report = where(root)
    found += [f"outbox ({n}x)" for d, n in report.outbox.items() if d == digest]
    return found


def records(root: Path) -> list[str]:
    folder = root / ".artd" / "page" / "retry"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def post_dies(daemon: Daemon, file: str) -> None:
    """A retry POST during which the daemon kills itself: no answer comes back."""
    try:
        code, answer = post_retry(daemon.port, file, TOKEN)
    except (OSError, http.client.HTTPException):
        code, answer = None, None
    assert daemon.proc is not None
    assert daemon.proc.wait(30) == -9, (code, answer, daemon.log[-3000:])


@pytest.mark.timeout(1800)  # up to 43 daemon starts, at seconds each on shared cores
def test_kill_9_at_every_step_of_a_retry(
    pixel_checkpoint: Path, tmp_path: Path, ledger: Ledger
) -> None:
    # One daemon quarantines one photo per step, under a low pixel limit.
    source = tmp_path / "source"
    names = [f"step{i:02d}.jpg" for i in range(len(KILLED))]
    datas = [payload(i) for i in range(len(KILLED))]
    digests = [hashlib.sha256(d).hexdigest() for d in datas]
    with Daemon(source, pixel_checkpoint, instance="src", max_pixels=LOW_PIXELS) as daemon:
        for name, data in zip(names, datas, strict=True):
            (source / "inbox" / f".{name}").write_bytes(data)
            os.rename(source / "inbox" / f".{name}", source / "inbox" / name)
        done = lambda: all((source / "quarantine" / n).exists() for n in names)  # noqa: E731
        wait_until(done, 120, "the photos quarantined", daemon)
        time.sleep(0.3)
        assert daemon.stop() == 0
    # Each step's root: that photo and its .error.json, as a restored backup would hold.
    daemons, killed_at, states = [], [], {}
    for i, step in enumerate(KILLED):
        root = tmp_path / f"s{i:02d}" / "root"
        (root / "quarantine").mkdir(parents=True)
        for name in (names[i], names[i] + SIDECAR_SUFFIX):
            shutil.copy2(source / "quarantine" / name, root / "quarantine" / name)
        # A job sidecar quarantined with it travels back too (step place:sidecar-move).
        (root / "quarantine" / f"{names[i]}.artd.json").write_text('{"strength": 0.5}')
        daemon = Daemon(root, pixel_checkpoint, instance=f"s{i:02d}", page_token=TOKEN)
        daemon.log_path = tmp_path / f"daemon-s{i:02d}.log"
        daemon.env[KILL_ENV] = step
        daemon.start()
        post_dies(daemon, names[i])
        killed_at.append(time.monotonic())
        after_kill = copies(root, digests[i])
        assert len(after_kill) == 1, (step, after_kill)
        del daemon.env[KILL_ENV]
        states[step] = (after_kill[0], "-")
        if step in AT_ONCE:
            # Restarted at once: a retry record younger than RECOVER_AFTER_S is left alone
            # (it could be a live peer's); the file must still be exactly once.
            daemon.start()
            if after_kill[0].startswith("inbox/"):
                # Processed: its output committed *and* its claimed original archived (between
                # the two, both are seen: a moment, not a duplicate; one that stays fails here).
                done = lambda r=root, d=digests[i]: copies(r, d) == ["outbox (1x)"]  # noqa: E731
                wait_until(done, 60, f"{step}: the moved photo processed", daemon)
            now = copies(root, digests[i])
            assert len(now) == 1, (step, now)
            daemon.kill()  # and killed again, at whatever it was doing
            states[step] = (after_kill[0], now[0])
        daemons.append(daemon)
    # Restarted once every record is older than RECOVER_AFTER_S: the start finishes them.
    time.sleep(max(0.0, killed_at[-1] + RECOVER_AFTER_S + 1 - time.monotonic()))
    asked_again = []
    for i, (step, daemon) in enumerate(zip(KILLED, daemons, strict=True)):
        root = daemon.root
        daemon.start()
        finished = lambda r=root: not [n for n in records(r) if not n.startswith(".")]  # noqa: E731
        wait_until(finished, 30, f"{step}: the start finishing the retry", daemon)
        if (root / "quarantine" / names[i]).exists():
            assert step in BEFORE_TAKE, (step, copies(root, digests[i]))
            code, answer = post_retry(daemon.port, names[i], TOKEN)
            assert code == 200, (step, code, answer)
            asked_again.append(step)
        out = lambda r=root, d=digests[i]: where(r).outbox[d] == 1  # noqa: E731
        wait_until(out, 60, f"{step}: the photo's output", daemon)
        time.sleep(0.3)
        assert daemon.stop() == 0
        final = where(root)
        assert copies(root, digests[i]) == ["outbox (1x)"], (step, copies(root, digests[i]))
        assert not list((root / "quarantine").rglob("*")), (step, list(root.rglob("quarantine/*")))
        assert not final.work and not final.inbox and not final.temps, (step, final)
        leftover = [n for n in records(root) if not n.startswith(".")]
        assert not leftover, (step, leftover)
    assert set(asked_again) <= BEFORE_TAKE
    stale_temps = sum(len(records(d.root)) for d in daemons)  # dot-named record temps
    ledger.add(
        faults=len(KILLED) + len(AT_ONCE), files_in=len(KILLED), outputs=len(KILLED), cases=0
    )
    placed = sum(1 for a, _ in states.values() if a.startswith("inbox/"))
    held = sum(1 for a, _ in states.values() if HELD_MARK in a)
    ledger.note(
        f"page retry kills: {len(KILLED)} steps killed in the POST ({len(AT_ONCE)} of them "
        f"restarted within {RECOVER_AFTER_S:.0f}s and killed again); after the first kill "
        f"the photo was in the quarantine "
        f"{len(KILLED) - placed - held}x, held aside {held}x, in the inbox {placed}x; a restart "
        f"after {RECOVER_AFTER_S:.0f}s finished every retry, {len(asked_again)} asked again "
        f"(never moved); each photo exactly once in the outbox; record temp files left "
        f"{stale_temps}"
    )


@pytest.mark.timeout(300)
def test_a_running_daemon_finishes_a_retry_cut_by_a_kill(
    pixel_checkpoint: Path, tmp_path: Path
) -> None:
    """A retry killed with its file held aside is finished by the running daemon's periodic
    recovery (daemon.service, every ADOPT_EVERY_S), with no restart and no new POST."""
    root = tmp_path / "root"
    data = payload(7)
    digest = hashlib.sha256(data).hexdigest()
    with Daemon(root, pixel_checkpoint, instance="low", max_pixels=LOW_PIXELS) as daemon:
        (root / "inbox" / ".held.jpg").write_bytes(data)
        os.rename(root / "inbox" / ".held.jpg", root / "inbox" / "held.jpg")
        wait_until(lambda: (root / "quarantine" / "held.jpg").exists(), 60, "quarantined", daemon)
        time.sleep(0.3)
        assert daemon.stop() == 0
    daemon = Daemon(root, pixel_checkpoint, instance="page", page_token=TOKEN)
    daemon.log_path = tmp_path / "daemon-page.log"
    daemon.env[KILL_ENV] = "place:move"  # taken aside, not yet in the inbox
    daemon.start()
    post_dies(daemon, "held.jpg")
    killed = time.monotonic()
    del daemon.env[KILL_ENV]
    daemon.start()  # at once: the record is younger than RECOVER_AFTER_S, the start leaves it
    held = copies(root, digest)
    assert len(held) == 1 and HELD_MARK in held[0], held
    assert [n for n in records(root) if not n.startswith(".")], records(root)
    out = lambda: where(root).outbox[digest] == 1  # noqa: E731
    # The first periodic recovery after the record is RECOVER_AFTER_S old: about 30 s after
    # the start (ADOPT_EVERY_S), or the one after it; nothing else touches the root meanwhile.
    wait_until(out, RECOVER_AFTER_S + 2 * ADOPT_EVERY_S + 15, "the retry finished", daemon)
    waited = time.monotonic() - killed
    time.sleep(0.3)
    assert daemon.stop() == 0
    assert waited >= RECOVER_AFTER_S, waited  # not finished under a live retry's feet
    assert copies(root, digest) == ["outbox (1x)"], copies(root, digest)
    assert not [n for n in records(root) if not n.startswith(".")], records(root)
    assert not list((root / "quarantine").rglob("*")), list((root / "quarantine").rglob("*"))


def malformed_requests() -> list[bytes]:
    marks = security.test_malformed_requests_get_4xx.pytestmark  # type: ignore[attr-defined]
    return next(m.args[1] for m in marks if m.name == "parametrize")


def plant(root: Path, outside: Path) -> set[str]:
    """test_api_security's planted links: symlinks out of outbox/ and archive/, a hard link
    to an outside image in outbox/. Returns the names the ledger leaves out."""
    outbox, archive = root / "outbox", root / "archive"
    (outbox / "leak.png").symlink_to(outside / "secret.png")
    (outbox / "linkdir").symlink_to(outside)
    (outbox / "sub").mkdir(exist_ok=True)
    (outbox / "sub" / "up.png").symlink_to("../../../outside/secret.png")
    os.link(outside / "secret.png", outbox / "hard.png")
    (archive / "leak.jpg").symlink_to(outside / "secret.jpg")
    (archive / "linkdir").symlink_to(outside)
    return {"hard.png"}


def test_hostile_http_corpus_while_files_flow(
    pixel_checkpoint: Path, tmp_path: Path, ledger: Ledger
) -> None:
    rng = random.Random(16)
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(security.MARKER)
    secret = photo("chelsea")
    info = security.PngImagePlugin.PngInfo()
    info.add_text("secret", security.MARKER.decode())
    secret.save(outside / "secret.png", "PNG", pnginfo=info)
    secret.save(outside / "secret.jpg", "JPEG", comment=security.MARKER)
    daemon = Daemon(root, pixel_checkpoint, page_token=TOKEN, settle_seconds=0.2)
    daemon.log_path = tmp_path / "daemon.log"
    daemon.start()
    drops = Drops()
    staging = tmp_path / "staging"
    inbox = root / "inbox"
    first = encoded(photo("astronaut"), "JPEG", quality=90)
    drops.drop(inbox, "astronaut.jpg", first, "good", "photo", rng, staging)
    digest = hashlib.sha256(first).hexdigest()
    wait_until(lambda: where(root).outbox[digest] == 1, 60, "the first output", daemon)
    planted = plant(root, outside)
    decoy = tree_snapshot(outside)
    bad = b"not an image at all\n" * 8
    drops.drop(inbox, "bad.jpg", bad, "bad", "not an image", rng, staging)
    stop = threading.Event()

    def flow() -> None:
        n = 0
        while not stop.is_set():
            if rng.random() < 0.5:
                data, ext = photo_crop(rng)
            else:
                data, ext = small_image(rng), ".png"
            drops.drop(inbox, f"flow/{n:05d}{ext}", data, "good", "flow", rng, staging)
            n += 1
            stop.wait(0.15)

    dropper = threading.Thread(target=flow, daemon=True)
    dropper.start()
    fired = 0
    try:
        for path in security.TRAVERSALS:
            security.test_traversal_and_planted_links_are_refused(daemon, path)
            fired += 1
        for request in malformed_requests():
            security.test_malformed_requests_get_4xx(daemon, request)
            fired += 1
        security.test_bad_posts_are_refused_before_the_body(daemon)
        fired += 20
        # A real retry in the middle of it: the bad file goes back and is quarantined again.
        wait_until(lambda: (root / "quarantine" / "bad.jpg").exists(), 60, "bad.jpg held")
        code, answer = post_retry(daemon.port, "bad.jpg", TOKEN)
        assert code == 200, answer
        security.test_a_1gb_body_is_refused_without_being_read(daemon)
        security.test_too_many_connections_are_closed_not_queued_forever(daemon)
        # Slow-loris: it drops coffee as during-the-attack.jpg itself (in the ledger too).
        coffee = photo("coffee")
        drops.expected[hashlib.sha256(encoded(coffee, "JPEG", quality=90)).hexdigest()] += 1
        security.test_slow_loris_clients_are_cut_off_and_files_keep_flowing(daemon)
        fired += 1 + 1 + 80 + 24
    finally:
        stop.set()
        dropper.join(30)
    wait_until(lambda: (root / "quarantine" / "bad.jpg").exists(), 60, "bad.jpg held again")

    def settled() -> bool:
        return not account(drops, where(root, skip=lambda p: p.name in planted)).lost

    wait_until(settled, 120, "every drop settled", daemon)
    time.sleep(0.5)
    status, health = daemon.health()
    assert status == 200, health
    assert daemon.stop() == 0
    found = where(root, skip=lambda p: p.name in planted)
    tally = account(drops, found)
    escaped = escapes(root, outside, decoy)
    ledger.add(
        faults=fired,
        files_in=tally.files_in,
        outputs=tally.out,
        quarantined=tally.quarantined,
        lost=len(tally.lost),
        duplicated=len(tally.duplicated) + len(tally.unknown),
        escapes=len(escaped),
    )
    ledger.note(
        f"page HTTP corpus: {fired} hostile requests (test_api_security's traversals, "
        f"malformed requests, refused POSTs, a 1 GB body, 80 connections, 24 slow clients) "
        f"and one retry, while {tally.files_in} files flowed: out {tally.out}, quarantined "
        f"{tally.quarantined}; lost {len(tally.lost)}, duplicated {len(tally.duplicated)}, "
        f"escapes {len(escaped)}"
    )
    assert not tally.lost and not tally.duplicated and not tally.unknown, tally
    assert not tally.good_quarantined and not tally.bad_out, tally
    assert not escaped, escaped
    assert not found.work and not found.inbox and not found.temps, found
    # The planted links were never followed and are still what was planted.
    assert os.readlink(root / "outbox" / "leak.png") == str(outside / "secret.png")
