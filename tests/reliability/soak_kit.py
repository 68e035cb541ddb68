"""What the mixed soak and the page fault suite share: a content ledger (where every input's
bytes ended, by SHA-256), an escape check, an RSS sampler, page traffic, checkpoint
promotion and the drops (real photos, small images, hostile files, job sidecars).

Inputs are told apart by their content, not their names: an output carries its input's
SHA-256 (``artd:input_sha256``), a quarantined file is its input's own bytes. So renames
(``x (2).jpg``), retries from the quarantine and preset formats (``.webp``, ``.jpg``) never
hide a lost or a doubled file: every dropped payload must be found exactly as many times as
it was dropped, in ``outbox/`` or ``quarantine/``, and nowhere else.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import random
import statistics
import threading
import time
import urllib.error
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import skimage.data
from conftest import seeded_model
from daemon_harness import Daemon
from page_client import TOKEN, api, fetch, post_retry
from PIL import Image
from reliability_kit import model_worker_pids, proc_status, sha

from core.checkpoint import CheckpointMeta, save_checkpoint
from core.outputs.encoding import read_metadata
from daemon.spool import SIDECAR_SUFFIX, TEMP_MARK

JOB_SUFFIX = ".artd.json"  # daemon.sidecars.SUFFIX: a job sidecar beside an image
HELD_MARK = ".artd-retry-"  # daemon.web.requeue: a file a retry has taken aside
SPOOL_AREAS = frozenset({"inbox", "outbox", "archive", "quarantine", ".artd"})
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry")
# What the page may answer: no 5xx ever (a refused connection while it is down is fine).
PAGE_ERRORS = range(500, 600)


# --- payloads -----------------------------------------------------------------------------


_PHOTO_CACHE: dict[str, np.ndarray] = {}


def photo_pixels(name: str) -> np.ndarray:
    if name not in _PHOTO_CACHE:
        pixels = getattr(skimage.data, name)()
        if pixels.ndim == 2:
            pixels = np.stack([pixels] * 3, axis=-1)
        _PHOTO_CACHE[name] = np.ascontiguousarray(pixels[..., :3])
    return _PHOTO_CACHE[name]


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def photo_crop(rng: random.Random, longest: int = 160) -> tuple[bytes, str]:
    """A random crop of a real photograph, scaled to at most ``longest`` px: (bytes, ext)."""
    name = rng.choice(PHOTOS)
    pixels = photo_pixels(name)
    height, width = pixels.shape[:2]
    h, w = rng.randint(height // 3, height), rng.randint(width // 3, width)
    top, left = rng.randint(0, height - h), rng.randint(0, width - w)
    image = Image.fromarray(pixels[top : top + h, left : left + w])
    scale = min(1.0, longest / max(h, w))
    image = image.resize((max(8, int(w * scale)), max(8, int(h * scale))))
    if rng.random() < 0.7:
        return encoded(image, "JPEG", quality=rng.randint(70, 95)), ".jpg"
    return encoded(image, "PNG"), ".png"


def small_image(rng: random.Random) -> bytes:
    pixels = np.random.default_rng(rng.getrandbits(32)).integers(0, 256, (12, 16, 3), np.uint8)
    return encoded(Image.fromarray(pixels), "PNG")


# --- drops --------------------------------------------------------------------------------


def _write_via(path: Path, data: bytes, style: str, staging: Path) -> None:
    """Write ``data`` at ``path`` as one of several real copy tools would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(os.fsencode(path.name)) > 200:
        style = "direct"  # no room for a temporary name's prefix or suffix
    if style == "dot-rename":  # rsync, careful uploaders
        temp = path.parent / f".{path.name}.{os.getpid()}"
    elif style == "part-rename":  # browsers, curl -o x.part
        temp = path.parent / f"{path.name}.part"
    elif style == "mv-in":  # written elsewhere on the same filesystem, then mv
        staging.mkdir(parents=True, exist_ok=True)
        temp = staging / f"{path.name[:200]}.{time.monotonic_ns()}"
    else:  # "direct": one open-write-close at the final name
        path.write_bytes(data)
        return
    temp.write_bytes(data)
    os.rename(temp, path)


STYLES = ("dot-rename", "part-rename", "mv-in", "direct")


@dataclass
class Drops:
    """Every payload dropped, by kind: "good" must come out, "bad" must be quarantined,
    "any" may do either (a truncated file that still holds every pixel, a retried file)."""

    expected: Counter[str] = field(default_factory=Counter)
    kinds: dict[str, str] = field(default_factory=dict)
    labels: Counter[str] = field(default_factory=Counter)
    styles: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def drop(
        self,
        inbox: Path,
        rel: str,
        data: bytes,
        kind: str,
        label: str,
        rng: random.Random,
        staging: Path,
        job: bytes | None = None,
    ) -> None:
        digest = sha(data)
        with self.lock:
            old = self.kinds.get(digest)
            self.kinds[digest] = kind if old in (None, kind) else "any"
            self.expected[digest] += 1
            self.labels[label] += 1
        path = inbox / rel
        if job is not None:  # the sidecar first, as docs/operations.md asks
            _write_via(path.with_name(path.name + JOB_SUFFIX), job, "part-rename", staging)
        style = rng.choice(STYLES)
        with self.lock:
            self.styles[style] += 1
        _write_via(path, data, style, staging)

    def mark_any(self, digest: str) -> None:
        with self.lock:
            self.kinds[digest] = "any"


# --- the content ledger -------------------------------------------------------------------


@dataclass
class Where:
    """Where the payloads are now, by SHA-256 of the input."""

    outbox: Counter[str] = field(default_factory=Counter)
    quarantine: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    reason_of: dict[str, str] = field(default_factory=dict)
    inbox: list[str] = field(default_factory=list)
    work: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    temps: list[str] = field(default_factory=list)
    unreadable_outputs: list[str] = field(default_factory=list)
    stray_sidecars: list[str] = field(default_factory=list)
    models: Counter[str] = field(default_factory=Counter)
    jobs_in_inbox: list[str] = field(default_factory=list)  # job sidecars left behind
    jobs_orphaned: list[str] = field(default_factory=list)  # in quarantine, image gone


def _regular_files(folder: Path) -> list[Path]:
    found = []
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(dirpath, name)
            if not path.is_symlink() and path.is_file():
                found.append(path)
    return found


def where(root: Path, skip: Callable[[Path], bool] = lambda _p: False) -> Where:
    """Scan the root (never following a symlink); ``skip`` leaves planted test files out."""
    found = Where()
    for path in _regular_files(root / "outbox"):
        rel = path.relative_to(root).as_posix()
        if skip(path):
            continue
        if TEMP_MARK in path.name:
            found.temps.append(rel)
            continue
        try:
            meta = read_metadata(path.read_bytes())
            digest = meta["artd:input_sha256"]
        except (OSError, ValueError, KeyError) as exc:
            found.unreadable_outputs.append(f"{rel}: {exc}")
            continue
        found.outbox[digest] += 1
        found.models[str(meta.get("artd:model_sha256", "?"))[:12]] += 1
    quarantine = root / "quarantine"
    for path in _regular_files(quarantine):
        rel = path.relative_to(root).as_posix()
        name = path.name
        if skip(path):
            continue
        if name.endswith(JOB_SUFFIX):
            if not path.with_name(name.removesuffix(JOB_SUFFIX)).exists():
                found.jobs_orphaned.append(rel)
            continue
        if name.endswith(SIDECAR_SUFFIX):
            image = path.with_name(name.removesuffix(SIDECAR_SUFFIX))
            if not image.exists():
                found.stray_sidecars.append(rel)
            continue
        if TEMP_MARK in name:
            found.temps.append(rel)
            continue
        digest = sha(path.read_bytes())
        found.quarantine[digest] += 1
        if name.startswith(HELD_MARK):
            found.held.append(rel)
            continue
        reason = "?"
        with contextlib.suppress(OSError, ValueError):
            sidecar = path.with_name(name + SIDECAR_SUFFIX)
            reason = str(json.loads(sidecar.read_text()).get("reason", "?"))
        found.reasons[reason] += 1
        found.reason_of[digest] = reason
    for path in _regular_files(root / "inbox"):
        if skip(path):
            continue
        rel = path.relative_to(root).as_posix()
        (found.jobs_in_inbox if path.name.endswith(JOB_SUFFIX) else found.inbox).append(rel)
    for path in _regular_files(root / ".artd" / "work"):
        found.work.append(path.relative_to(root).as_posix())
    return found


@dataclass
class Account:
    files_in: int
    out: int
    quarantined: int
    lost: list[str]
    duplicated: list[str]
    unknown: list[str]
    good_quarantined: list[str]
    bad_out: list[str]


def account(drops: Drops, found: Where) -> Account:
    """Each payload found exactly as often as it was dropped, in outbox + quarantine."""
    seen = found.outbox + found.quarantine
    lost = [d for d, n in drops.expected.items() if seen[d] < n]
    dup = [d for d, n in drops.expected.items() if seen[d] > n]
    unknown = [d for d in seen if d not in drops.expected]
    good_q = [d for d, k in drops.kinds.items() if k == "good" and found.quarantine[d]]
    good_q = [f"{d[:12]} ({found.reason_of.get(d, '?')})" for d in good_q]
    bad_out = [d for d, k in drops.kinds.items() if k == "bad" and found.outbox[d]]
    return Account(
        files_in=sum(drops.expected.values()),
        out=sum(found.outbox.values()),
        quarantined=sum(found.quarantine.values()),
        lost=lost,
        duplicated=dup,
        unknown=unknown,
        good_quarantined=good_q,
        bad_out=bad_out,
    )


def escapes(root: Path, outside: Path, before: dict[str, tuple[str, str]]) -> list[str]:
    """Writes outside the configured folders: a changed decoy tree beside the root, or any
    entry at the root's top level that is not a spool folder."""
    from reliability_kit import tree_snapshot

    after = tree_snapshot(outside)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    stray = sorted(p.name for p in root.iterdir() if p.name not in SPOOL_AREAS)
    return [f"outside/{k}" for k in changed] + [f"root/{n}" for n in stray]


def make_decoy(outside: Path, rng: random.Random) -> None:
    """Files a daemon must never touch, beside its root (images it could be fooled into
    taking, and plain bytes)."""
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.txt").write_bytes(b"TOP-SECRET-OUTSIDE-THE-ROOT-7f3a")
    for i in range(3):
        (outside / f"decoy-{i}.jpg").write_bytes(photo_crop(rng)[0])


# --- the model: promotions (hot reloads) --------------------------------------------------


def promote_checkpoint(current: Path, seed: int) -> None:
    """A new checkpoint written beside the served one and renamed over it, as the trainer's
    promotion does: the daemon sees a whole new file or the old one, never half."""
    temp = current.with_name(f".{current.name}.{seed}.new")
    save_checkpoint(temp, seeded_model(seed).state_dict(), CheckpointMeta(epoch=seed))
    os.replace(temp, current)


# --- background threads -------------------------------------------------------------------


class Background(threading.Thread):
    """A daemon thread that runs ``tick`` until stopped; the first error is kept."""

    def __init__(self, name: str, every_s: float) -> None:
        super().__init__(name=name, daemon=True)
        self.every_s = every_s
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def tick(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.tick()
            except BaseException as exc:  # kept, raised by stop()
                self.error = exc
                return
            self.halt.wait(self.every_s)

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        if self.error is not None:
            raise self.error


class RssSampler(Background):
    """VmRSS of the daemon every ``every_s``: its service process and the model workers its
    /healthz reports (the network's memory is theirs). ``parts`` holds each moment as (seconds
    into the life, life, the service's kB, its model workers' kB, how many workers, seconds
    since the sampler was made); ``samples`` sums it. A moment either cannot be read is
    skipped."""

    def __init__(self, daemon: Daemon, every_s: float = 1.0) -> None:
        super().__init__("soak-rss", every_s)
        self.daemon = daemon
        self.parts: list[tuple[float, int, int, int, int, float]] = []
        self.made = time.monotonic()
        self.life = 0
        self.life_started = time.monotonic()
        self._pid: int | None = None

    def tick(self) -> None:
        proc = self.daemon.proc
        if proc is None or proc.poll() is not None:
            return
        if proc.pid != self._pid:
            self._pid, self.life = proc.pid, self.life + 1
            self.life_started = time.monotonic()
        with contextlib.suppress(OSError, KeyError, ValueError):
            workers = model_worker_pids(self.daemon)
            service = proc_status(proc.pid)["VmRSS"]
            worker_kb = sum(proc_status(pid)["VmRSS"] for pid in workers)
            now = time.monotonic()
            self.parts.append(
                (now - self.life_started, self.life, service, worker_kb, len(workers),
                 now - self.made)
            )  # fmt: skip

    @property
    def samples(self) -> list[tuple[float, int, int, float]]:
        """(seconds into the life, life, service + workers kB, seconds since made)."""
        return [(t, life, svc + wkr, at) for t, life, svc, wkr, _n, at in self.parts]


@dataclass
class Memory:
    """Memory of the last life (the soak's kill-free end) after its warm-up."""

    life: int
    seconds: float
    first_mib: float
    last_mib: float
    peak_mib: float
    slope_mib_per_min: float
    peaks_by_life: list[float]
    # The same windows' medians split by process: the service, then its model workers (and
    # how many there were at the first and last sample); empty without ``parts``.
    split: str = ""

    def line(self) -> str:
        peaks = ", ".join(f"{p:.0f}" for p in self.peaks_by_life)
        return (
            f"memory: daemon VmRSS (service + model worker) in its last life (#{self.life}, "
            f"{self.seconds:.0f}s after warm-up): {self.first_mib:.0f} -> "
            f"{self.last_mib:.0f} MiB (medians of its first and last minute, or third), "
            f"peak {self.peak_mib:.0f}, slope {self.slope_mib_per_min:+.2f} MiB/min; "
            f"peak per life {peaks} MiB" + (f"; {self.split}" if self.split else "")
        )


def _split(
    parts: list[tuple[float, int, int, int, int, float]], life: int, first: float, last: float
) -> str:
    """The service's and the workers' medians over the windows ``[first_start, first]`` and
    ``[last, end]`` of the last life (``first``/``last``: the windows' inner edges)."""
    mine = [p for p in parts if p[1] == life]
    head = [p for p in mine if p[0] <= first]
    tail = [p for p in mine if p[0] >= last]
    if not head or not tail:
        return ""

    def mib(rows: list[tuple[float, int, int, int, int, float]], i: int) -> float:
        return statistics.median(row[i] for row in rows) / 1024

    return (
        f"service {mib(head, 2):.0f} -> {mib(tail, 2):.0f} MiB, model workers "
        f"{mib(head, 3):.0f} -> {mib(tail, 3):.0f} MiB ({head[0][4]} -> {tail[-1][4]} workers)"
    )


def memory(
    samples: list[tuple[float, int, int, float]],
    warmup_s: float,
    parts: list[tuple[float, int, int, int, int, float]] | None = None,
) -> Memory:
    lives: dict[int, list[tuple[float, int]]] = {}
    for t, life, kb, _at in samples:
        lives.setdefault(life, []).append((t, kb))
    peaks = [max(kb for _t, kb in lives[k]) / 1024 for k in sorted(lives)]
    final = max(lives)
    warm = [(t, kb / 1024) for t, kb in lives[final] if t >= warmup_s]
    if len(warm) < 4:
        warm = [(t, kb / 1024) for t, kb in lives[final]]
    span = warm[-1][0] - warm[0][0]
    window = min(60.0, span / 3)
    first = statistics.median(m for t, m in warm if t <= warm[0][0] + window)
    last = statistics.median(m for t, m in warm if t >= warm[-1][0] - window)
    times = [t for t, _m in warm]
    slope = statistics.linear_regression(times, [m for _t, m in warm]).slope if span else 0.0
    return Memory(
        life=final,
        seconds=span,
        first_mib=first,
        last_mib=last,
        peak_mib=max(m for _t, m in warm),
        slope_mib_per_min=slope * 60,
        peaks_by_life=peaks,
        split=_split(parts or [], final, warm[0][0] + window, warm[-1][0] - window),
    )


class PageTraffic(Background):
    """What a few browsers do: status, recent results, the quarantine, thumbnails, full
    outputs; and now and then a retry POST (with the token) of a quarantined file."""

    def __init__(
        self,
        daemon: Daemon,
        rng: random.Random,
        retry_every_s: float,
        on_retry: Callable[[str], None],
        every_s: float = 0.3,
    ) -> None:
        super().__init__("soak-page", every_s)
        self.daemon, self.rng = daemon, rng
        self.retry_every_s = retry_every_s
        self.on_retry = on_retry
        self.next_retry = time.monotonic() + retry_every_s
        self.statuses: Counter[str] = Counter()
        self.down = 0
        self.errors: list[str] = []
        self.retried: Counter[str] = Counter()
        self.retried_files: list[str] = []

    def _get(self, path: str) -> None:
        code, _ = fetch(self.daemon.port, path)
        self.statuses[f"GET {code}"] += 1
        if code in PAGE_ERRORS:
            self.errors.append(f"GET {path}: {code}")

    def tick(self) -> None:
        port = self.daemon.port
        try:
            status = api(port, "/api/status")
            self.statuses["GET 200"] += 1
            assert "queue" in status and "health" in status, status
            recent = api(port, f"/api/recent?page={self.rng.randrange(3)}&size=12")
            self.statuses["GET 200"] += 1
            items = recent["items"]
            if items:
                item = self.rng.choice(items)
                for key in ("after", "before"):
                    if item.get(key):
                        self._get(item[key])
                if self.rng.random() < 0.3:
                    self._get(item["url"])
            if time.monotonic() >= self.next_retry:
                self.next_retry = time.monotonic() + self.retry_every_s
                self._retry(port)
        except urllib.error.HTTPError as exc:
            self.statuses[f"GET {exc.code}"] += 1
            if exc.code in PAGE_ERRORS:
                self.errors.append(f"{exc.code}: {exc}")
        except (OSError, http.client.HTTPException, ValueError):
            self.down += 1  # down (killed, restarting): the page comes back with it

    def _retry(self, port: int) -> None:
        listing = api(port, "/api/quarantine?size=100")
        choices = [i for i in listing["items"] if i["present"] and i["regular"]]
        if not choices:
            return
        item = self.rng.choice(choices)
        # The retried file will be claimed again: it may come out this time (a file whose
        # job sidecar was the problem comes back without it, docs/operations.md).
        self.on_retry(str(item.get("sha256") or ""))
        code, answer = post_retry(port, item["file"], TOKEN)
        self.retried[str(code)] += 1
        if code == 200:
            self.retried_files.append(item["file"])
        elif code in PAGE_ERRORS:
            self.errors.append(f"POST retry {item['file']}: {code} {answer}")
