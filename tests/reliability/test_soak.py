"""The mixed soak (docs/soak.md): one real daemon for ``SOAK_MINUTES`` of mixed drops,
hot reloads, page traffic and periodic ``kill -9``, ending in the ledger.

Under ``RELIABILITY_FULL=1`` (``make soak``) it runs 30 minutes unless ``SOAK_MINUTES``
says otherwise; in ``make test`` about 75 seconds. Throughout:

- drops (a thread): crops of real photographs (scikit-image) and small images into the
  inbox, its preset folders and plain sub-folders, a third of the photos with a job sidecar
  (``x.jpg.artd.json``, written first); bad files (not images, truncated photos, headers
  claiming billions of pixels, files that segfault a decoder, photos whose job sidecar is
  malformed) and entries of the hostile corpus (test_hostile_inputs.build_corpus); each
  written as one of four copy tools would (dot-name then rename, ``.part`` then rename,
  written elsewhere then ``mv``, one plain write);
- the page (a thread): /api/status, /api/recent, thumbnails, full outputs, and retry POSTs
  with the token on quarantined files;
- hot reloads: a new checkpoint promoted over the served one (written beside, renamed);
- ``kill -9`` at random moments (not in the last quarter: that is the memory window), each
  followed by a restart; drops go on while the daemon is down.

The ledger (printed in the suite's summary): files in, out, quarantined by reason, lost,
duplicated, escapes, leftovers in work/, and the daemon's memory. Inputs are identified by
content (soak_kit). Must hold: lost 0, duplicated 0, escapes 0, every input exactly once in
the outbox or the quarantine, no good file quarantined, memory flat.

``SOAK_RSS_LOG=FILE`` writes the daemon's RSS samples (seconds into the life, life, kB,
seconds into the soak) and the times of the kills and promotions as JSON. Switches:
``SOAK_PRESETS=0`` runs without presets (and without sidecars naming a preset's model),
``SOAK_SIDECARS=0`` without job sidecars, for a tree that lacks those features.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import seeded_model, textured_image
from daemon_harness import Daemon
from page_client import TOKEN, post_retry
from PIL import Image
from reliability_kit import (
    FULL,
    Ledger,
    ledger_fixture,  # noqa: F401  (the ledger fixture)
    tree_snapshot,
    wait_until,
)
from soak_kit import (
    JOB_SUFFIX,
    Drops,
    PageTraffic,
    RssSampler,
    account,
    encoded,
    escapes,
    make_decoy,
    memory,
    photo_crop,
    promote_checkpoint,
    small_image,
    where,
)
from test_hostile_inputs import build_corpus, huge_headers, valid_sources

from core.checkpoint import CheckpointMeta, save_checkpoint
from daemon.decoders import SEGFAULT_MARKER

pytestmark = pytest.mark.usefixtures("one_thread")

MINUTES = float(os.environ.get("SOAK_MINUTES") or (30 if FULL else 1.25))
PRESETS_ON = os.environ.get("SOAK_PRESETS", "1") != "0"
SIDECARS_ON = os.environ.get("SOAK_SIDECARS", "1") != "0"
LONG = MINUTES >= 10
KILL_GAP_S = (60.0, 150.0) if LONG else (12.0, 25.0)
RELOAD_EVERY_S = 150.0 if LONG else 25.0
RETRY_EVERY_S = 20.0 if LONG else 8.0
# No kills in the last quarter (the last 40% in short runs): one long life for memory.
KILL_UNTIL = 0.75 if LONG else 0.6
WARMUP_S = 120.0 if LONG else 15.0  # a fresh life: allocator, models, the first reloads
BACKLOG = 40  # at most this many images waiting in the inbox: drops pause beyond it
# Memory is flat when, in the long last life, after its warm-up: the median of its last
# minute is within MEMORY_GROWTH_MIB of its first minute's (a third of the window each in
# short runs), and no life peaks more than MEMORY_LIFE_PEAK_MIB above the first life's.
MEMORY_GROWTH_MIB = 64.0
MEMORY_LIFE_PEAK_MIB = 150.0
SETTINGS = {
    "size": 64,
    "settle_seconds": 0.2,
    "max_batch": 8,
    "max_delay_ms": 50,
    "max_attempts": 3,
    "page_token": TOKEN,
    "page_index_seconds": 1,
}
FOLDERS_PLAIN = ("", "misc/", "misc/deep/", "camera/2026/")
FOLDERS_PRESET = ("sketch/", "wide/", "watercolour/", "watercolour/sub/")


def presets(second: Path) -> dict[str, dict[str, object]]:
    return {
        "sketch": {"size": 48, "resize": "stretch"},
        "wide": {"size": 96, "output_format": "webp"},
        "watercolour": {"checkpoint": str(second), "size": 64, "output_format": "jpeg"},
    }


def job_sidecars() -> list[str]:
    jobs = ['{"size": 40}', '{"output_format": "jpeg", "size": 48}']
    jobs += ['{"resize": "stretch", "size": 56}', '{"seed": 7, "size": 72}']
    if PRESETS_ON:
        jobs += ['{"model": "watercolour"}', '{"model": "default", "size": 32}']
    return jobs


class Dropper(threading.Thread):
    """The mixed drops (module docstring), paced so the inbox backlog stays bounded."""

    def __init__(self, root: Path, staging: Path, corpus: Path, seed: int) -> None:
        super().__init__(name="soak-drops", daemon=True)
        self.root, self.inbox, self.staging = root, root / "inbox", staging
        self.rng = random.Random(seed)
        self.drops = Drops()
        self.corpus = corpus
        self.corpus_kinds = build_corpus(corpus)
        self.bombs = list(huge_headers(valid_sources()).items())
        self.halt = threading.Event()
        self.error: BaseException | None = None
        self.n = 0
        self.folders = FOLDERS_PLAIN + (FOLDERS_PRESET if PRESETS_ON else ())
        self.jobs = job_sidecars()

    def backlog(self) -> int:
        return sum(
            1
            for _d, _s, names in os.walk(self.inbox)
            for name in names
            if not name.endswith(JOB_SUFFIX)
        )

    def one(self) -> None:
        rng, n = self.rng, self.n
        self.n += 1
        folder = rng.choice(self.folders)
        roll = rng.random()
        job = None
        if roll < 0.40:
            data, ext = photo_crop(rng)
            kind, label = "good", "photo"
            if SIDECARS_ON and rng.random() < 0.33:
                job, label = rng.choice(self.jobs).encode(), "photo+sidecar"
        elif roll < 0.58:
            data, ext, kind, label = small_image(rng), ".png", "good", "small"
        elif roll < 0.62 and SIDECARS_ON:
            data, ext = photo_crop(rng)
            job, kind, label = b'{"size": 64,,}', "bad", "bad sidecar"
        elif roll < 0.68:
            data = f"not an image, drop {n}\n".encode() * 20
            ext, kind, label = ".jpg", "bad", "not an image"
        elif roll < 0.74:
            whole, ext = photo_crop(rng)
            data = whole[: rng.randint(len(whole) // 5, len(whole) * 9 // 10)]
            kind, label = "any", "truncated photo"
        elif roll < 0.78:
            name, bomb = rng.choice(self.bombs)
            data = bomb + f"#{n}".encode()  # trailing bytes: still a bomb, unique content
            ext, kind, label = Path(name).suffix, "bad", "bomb"
        elif roll < 0.80:
            data = SEGFAULT_MARKER + f"{n}".encode() * 8
            ext, kind, label = ".jpg", "bad", "decoder segfault"
        elif roll < 0.85:
            image = encoded(seeded_image(rng), "WEBP" if rng.random() < 0.5 else "TIFF")
            data, ext, kind, label = image, ".webp", "good", "small"
        else:
            rel = rng.choice(sorted(self.corpus_kinds))
            data = (self.corpus / rel).read_bytes()
            kind = {"ok": "good", "bad": "bad"}.get(self.corpus_kinds[rel], "any")
            target = f"hostile/{n:06d}/{rel}"
            self.drops.drop(self.inbox, target, data, kind, "hostile corpus", rng, self.staging)
            return
        if data[:4] == b"II*\x00" or data[:4] == b"MM\x00*":
            ext = ".tiff"
        rel = f"{folder}{label.split()[0].replace('+', '-')}-{n:06d}{ext}"
        self.drops.drop(self.inbox, rel, data, kind, label, rng, self.staging, job)

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                if self.backlog() > BACKLOG:
                    self.halt.wait(0.2)
                    continue
                self.one()
                self.halt.wait(self.rng.uniform(0.02, 0.3))
        except BaseException as exc:  # raised by stop()
            self.error = exc

    def stop(self) -> None:
        self.halt.set()
        self.join(60)
        if self.error is not None:
            raise self.error


def seeded_image(rng: random.Random) -> Image.Image:
    return textured_image(rng.randint(16, 80), rng.randint(16, 80), seed=rng.getrandbits(31))


def retry_records(root: Path) -> list[Path]:
    folder = root / ".artd" / "page" / "retry"
    return (
        [p for p in folder.glob("*.json") if not p.name.startswith(".")] if folder.is_dir() else []
    )


def quiet(root: Path, dropper: Dropper) -> bool:
    """Nothing waiting: no image in the inbox, no claim in work/, no retry half-done."""
    work = root / ".artd" / "work"
    busy = any(files for _d, _s, files in os.walk(work))
    return dropper.backlog() == 0 and not busy and not retry_records(root)


@pytest.mark.timeout(int(MINUTES * 60) + 900)  # the drain and the ledger after it
def test_mixed_soak(pixel_checkpoint: Path, tmp_path: Path, ledger: Ledger) -> None:
    rng = random.Random(1717)
    root, outside = tmp_path / "root", tmp_path / "outside"
    make_decoy(outside, rng)
    decoy = tree_snapshot(outside)
    models = tmp_path / "models"
    models.mkdir()
    served = models / "served.safetensors"  # promoted over, so a copy of the session's one
    shutil.copyfile(pixel_checkpoint, served)
    second = models / "watercolour.safetensors"
    save_checkpoint(second, seeded_model(5).state_dict(), CheckpointMeta(epoch=2))
    settings = dict(SETTINGS)
    if PRESETS_ON:
        settings["presets"] = json.dumps(presets(second))
    daemon = Daemon(root, served, instance="soak", **settings)
    daemon.env["_ARTD_TEST_SEGFAULT"] = "1"  # the decoder-segfault files crash for real
    daemon.log_path = tmp_path / "daemon-soak.log"

    dropper = Dropper(root, tmp_path / "staging", tmp_path / "corpus", seed=17)

    def retried(digest: str) -> None:
        dropper.drops.mark_any(digest)  # it may come out this time (its sidecar stays)

    daemon.start()
    sampler = RssSampler(daemon)  # made now: its times and `started`'s agree
    page = PageTraffic(daemon, random.Random(99), RETRY_EVERY_S, retried)
    started = time.monotonic()
    end = started + MINUTES * 60
    kill_until = started + KILL_UNTIL * MINUTES * 60
    next_kill = started + rng.uniform(*KILL_GAP_S)
    next_reload = started + RELOAD_EVERY_S
    kills, reloads, downtime = 0, 0, 0.0
    promoted: list[float] = []  # seconds since the start, for SOAK_RSS_LOG
    killed: list[float] = []
    for thread in (dropper, sampler, page):
        thread.start()
    try:
        while (now := time.monotonic()) < end:
            assert daemon.proc is not None
            if daemon.proc.poll() is not None:
                raise AssertionError(f"the daemon died on its own:\n{daemon.log[-6000:]}")
            for thread in (dropper, sampler, page):
                if thread.error is not None:
                    raise thread.error
            if now >= next_kill and now < kill_until:
                daemon.kill()
                kills += 1
                killed.append(now - started)
                down = time.monotonic()
                time.sleep(rng.uniform(0.0, 2.0))  # drops go on while it is down
                daemon.start()
                downtime += time.monotonic() - down
                next_kill = time.monotonic() + rng.uniform(*KILL_GAP_S)
            if now >= next_reload:
                promote_checkpoint(served, 100 + reloads)
                reloads += 1
                promoted.append(now - started)
                next_reload = now + RELOAD_EVERY_S
            time.sleep(0.2)
        dropper.stop()
        wait_until(lambda: quiet(root, dropper), 300, "the queue drained", daemon)
        page.stop()
        # A retry cut short by a kill is finished by the next retry (or start) once its
        # record is older than daemon.web.requeue.RECOVER_AFTER_S: poke it, then drain again.
        if (root / ".artd" / "page" / "retry").is_dir():
            time.sleep(1.0)
            post_retry(daemon.port, "no-such-file.jpg", TOKEN)
        time.sleep(3.0)  # the last files' settle and rescans
        wait_until(lambda: quiet(root, dropper), 300, "the queue drained again", daemon)
        time.sleep(2.0)
        sampler.stop()
        assert daemon.stop() == 0
    finally:
        for thread in (dropper, sampler, page):
            thread.halt.set()
    elapsed = time.monotonic() - started

    found = where(root)
    tally = account(dropper.drops, found)
    escaped = escapes(root, outside, decoy)
    mem = memory(sampler.samples, WARMUP_S, sampler.parts)
    if os.environ.get("SOAK_RSS_LOG"):  # the samples, for a closer look at a trend
        figures = {"samples": sampler.samples, "reloads": promoted, "kills": killed}
        Path(os.environ["SOAK_RSS_LOG"]).write_text(json.dumps(figures))
    reasons = ", ".join(f"{r} {n}" for r, n in found.reasons.most_common())
    labels = ", ".join(f"{k} {n}" for k, n in dropper.drops.labels.most_common())
    styles = ", ".join(f"{k} {n}" for k, n in dropper.drops.styles.most_common())
    http = ", ".join(f"{k} {n}" for k, n in sorted(page.statuses.items()))
    posts = ", ".join(f"{k} {n}" for k, n in sorted(page.retried.items()))
    leftovers = len(found.work) + len(found.inbox) + len(found.held) + len(found.temps)
    ledger.add(
        files_in=tally.files_in,
        outputs=tally.out,
        quarantined=tally.quarantined,
        lost=len(tally.lost),
        duplicated=len(tally.duplicated) + len(tally.unknown),
        escapes=len(escaped),
        faults=kills + reloads,
    )
    ledger.note(
        f"soak: {elapsed / 60:.1f} min ({MINUTES:g} asked), presets {'on' if PRESETS_ON else 'off'}"
        f", sidecars {'on' if SIDECARS_ON else 'off'}; {tally.files_in} files in ({labels}; "
        f"copied as {styles}); out {tally.out}, quarantined {tally.quarantined} ({reasons}); "
        f"lost {len(tally.lost)}, duplicated {len(tally.duplicated) + len(tally.unknown)}, "
        f"escapes {len(escaped)}, good files quarantined {len(tally.good_quarantined)}, "
        f"leftover in work/ {len(found.work)} (inbox {len(found.inbox)}, held by a retry "
        f"{len(found.held)}, temp files {len(found.temps)})"
    )
    ledger.note(
        f"soak: {kills} kill -9 + restarts ({downtime:.0f}s down in all), {reloads} checkpoint "
        f"promotions, outputs by {len(found.models)} models; page {http}, connection refused "
        f"while down {page.down}; retry POSTs {posts} ({len(page.retried_files)} moved back); "
        f"stale .error.json without its file {len(found.stray_sidecars)}; job sidecars left "
        f"in the inbox {len(found.jobs_in_inbox)}, left in the quarantine by a retry of "
        f"their image {len(found.jobs_orphaned)}"
    )
    ledger.note("soak " + mem.line())

    assert not tally.lost, f"lost: {tally.lost[:10]}"
    assert not tally.duplicated, f"duplicated: {tally.duplicated[:10]}"
    assert not tally.unknown, f"outputs/quarantine entries of no input: {tally.unknown[:10]}"
    assert not escaped, escaped
    assert not tally.good_quarantined, tally.good_quarantined[:10]
    assert not tally.bad_out, f"bad files came out: {tally.bad_out[:10]}"
    assert not found.unreadable_outputs, found.unreadable_outputs[:5]
    assert leftovers == 0, (found.work[:5], found.inbox[:5], found.held[:5], found.temps[:5])
    assert not page.errors, page.errors[:5]
    assert not found.jobs_in_inbox, found.jobs_in_inbox[:5]
    assert kills >= (1 if not LONG else 8), kills
    assert reloads == 0 or len(found.models) >= 2, found.models
    assert mem.last_mib - mem.first_mib < MEMORY_GROWTH_MIB, mem
    first_peak = mem.peaks_by_life[0]
    assert all(p - first_peak < MEMORY_LIFE_PEAK_MIB for p in mem.peaks_by_life), mem
    assert Counter(dropper.drops.kinds.values())["good"] > 0
