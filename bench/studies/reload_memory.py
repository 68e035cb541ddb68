"""Study: memory of the real daemon across hot reloads, is it flat?

``python -m bench.studies.reload_memory [--reloads 10] [--every 10]
[--variant LABEL=TREE[:K=V,...]]``

Starts ``python -m daemon`` as a subprocess per *variant* (a source tree and extra
environment: say the code before a fix, copied aside, and the code after it), all fed the
same steady trickle of real photos (scikit-image's astronaut, chelsea, coffee, ... cropped
and scaled to 40-400 px, JPEG or PNG, a third with a job sidecar) and some bad files (cut
short, not an image), while the page is polled; every ``--every`` seconds a new checkpoint
is written beside each served one and renamed over it (the trainer's promotion). VmRSS of
each daemon is sampled every second; the table gives, per reload, the median RSS of the
interval after it, so two variants are compared side by side under the same load.

``--census`` runs each daemon through a small bootstrap (this module's ``CENSUS``) that
writes, every few seconds, what lives inside it: Python objects by type (``gc``), live torch
tensors and their bytes, engines alive, glibc's ``mallinfo2`` (bytes malloc has handed out
vs. what it holds), and with ``--tracemalloc`` Python's own allocations. Python-object growth
shows in the counts, native growth (torch, oneDNN, malloc) in mallinfo2 and RSS alone.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bench.shared.common import ROOT, seeded_model_state
from bench.shared.daemon_harness import free_port
from bench.shared.photos import RELOAD_PHOTOS, photo
from core.checkpoint import CheckpointMeta, save_checkpoint

SIDECARS = ('{"size": 40}', '{"output_format": "jpeg", "size": 48}', '{"seed": 7, "size": 72}')
DAEMON_SETTINGS = {
    "ARTD_SIZE": "64",
    "ARTD_DEVICE": "cpu",
    "ARTD_SETTLE_SECONDS": "0.2",
    "ARTD_RESCAN_SECONDS": "1",
    "ARTD_RELOAD_SECONDS": "0.5",
    "ARTD_MAX_BATCH": "8",
    "ARTD_MAX_DELAY_MS": "50",
    "ARTD_PAGE_INDEX_SECONDS": "1",
    "OMP_NUM_THREADS": "1",
}

# Run in the daemon's own process (``--census``): a thread writing what lives there, then
# the daemon as ``python -m daemon`` runs it. Hand-written counting, no extra dependency.
CENSUS = r"""
import collections, ctypes, gc, json, os, sys, threading, time, tracemalloc

OUT, EVERY = os.environ["_PROBE_CENSUS"], float(os.environ.get("_PROBE_CENSUS_EVERY", "5"))
TRACE = os.environ.get("_PROBE_TRACEMALLOC") == "1"
if TRACE:
    tracemalloc.start(8)

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

try:
    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallinfo2.restype = MallInfo2
except (OSError, AttributeError):
    _libc = None

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0

def census():
    import torch
    gc.collect()
    objects = gc.get_objects()
    by_type = collections.Counter(type(o).__qualname__ for o in objects)
    storages, tensors = {}, 0
    for o in objects:
        if isinstance(o, torch.Tensor):
            tensors += 1
            try:
                s = o.untyped_storage()
                storages[s.data_ptr()] = s.nbytes()
            except Exception:
                pass
    row = {"t": time.time(), "rss_kib": rss_kib(), "objects": len(objects),
           "tensors": tensors, "tensor_mib": sum(storages.values()) / 2**20,
           "engines": by_type.get("Engine", 0), "folded": by_type.get("FoldedModel", 0),
           "inferences": by_type.get("Inference", 0),
           "top": by_type.most_common(40)}
    if os.environ.get("_PROBE_REFERRERS") == "1":
        row["engine_paths"] = [_paths(o) for o in objects if type(o).__qualname__ == "Engine"]
    del objects
    if _libc is not None:
        m = _libc.mallinfo2()
        row["malloc"] = {"heap_mib": m.arena / 2**20, "mmap_mib": m.hblkhd / 2**20,
                         "in_use_mib": (m.uordblks + m.hblkhd) / 2**20,
                         "free_held_mib": m.fordblks / 2**20}
    if TRACE:
        current, _peak = tracemalloc.get_traced_memory()
        row["traced_mib"] = current / 2**20
        stats = tracemalloc.take_snapshot().statistics("lineno")[:15]
        row["traced_top"] = [(str(s.traceback), s.size) for s in stats]
    return row

def _describe(o):
    name = type(o).__qualname__
    if isinstance(o, dict):
        return name + "[" + ",".join(str(k)[:30] for k in list(o)[:4]) + "]"
    if type(o).__name__ == "frame":
        return "frame " + o.f_code.co_name
    return name

def _paths(target, depth=4):
    # Who holds ``target``: referrers' types, a few levels up (frames of this thread skipped).
    seen, out, level = {id(target)}, [], [target]
    for _ in range(depth):
        nxt = []
        for o in level:
            for r in gc.get_referrers(o):
                if id(r) in seen or r is level or r is nxt:
                    continue
                if type(r).__name__ in ("list",) and len(r) > 10000:
                    continue
                seen.add(id(r))
                nxt.append(r)
        out.append([_describe(r) for r in nxt][:12])
        level = nxt[:12]
    return out

TRIM = os.environ.get("_PROBE_TRIM") == "1"  # malloc_trim(0) before each census

def loop():
    while True:
        time.sleep(EVERY)
        try:
            if TRIM and _libc is not None:
                _libc.malloc_trim(0)
            row = census()
        except Exception as exc:
            row = {"t": time.time(), "error": repr(exc)}
        with open(OUT, "a") as f:
            f.write(json.dumps(row) + "\n")

threading.Thread(target=loop, name="probe-census", daemon=True).start()
from daemon.cli import main
sys.exit(main(["run"]))
"""


def write_checkpoint(path: Path, seed: int) -> None:
    save_checkpoint(path, seeded_model_state(seed), CheckpointMeta(epoch=seed))


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Variant:
    """One daemon: a source tree (``core``/``daemon`` are imported from it) and extra env."""

    label: str
    tree: Path
    env: dict[str, str]
    reload: bool = True  # ``reload=0`` in the variant's env: the same drops, no promotions
    root: Path = Path()
    served: Path = Path()
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    census: Path | None = None
    samples: list[tuple[float, float]] = field(default_factory=list)  # (t, MiB)

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``LABEL=TREE[:K=V,K=V]``; TREE ``.`` is this checkout."""
        label, _, rest = text.partition("=")
        tree, _, env_text = rest.partition(":")
        env = dict(kv.split("=", 1) for kv in env_text.split(",") if kv)
        reload = env.pop("reload", "1") != "0"
        return cls(label, ROOT if tree in ("", ".") else Path(tree).resolve(), env, reload)

    def start(self, work: Path, census: bool, tracemalloc: bool) -> None:
        self.root = work / self.label / "root"
        self.root.mkdir(parents=True)
        self.served = work / self.label / "served.safetensors"
        write_checkpoint(self.served, 1)
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARTD_")}
        env |= DAEMON_SETTINGS | {
            "ARTD_ROOT": str(self.root),
            "ARTD_CHECKPOINT": str(self.served),
            "ARTD_INSTANCE": self.label,
            "ARTD_HTTP_PORT": str(self.port),
            "PYTHONPATH": str(self.tree),
        }
        env |= self.env
        command = [sys.executable, "-m", "daemon"]
        if census:
            self.census = work / self.label / "census.jsonl"
            env |= {"_PROBE_CENSUS": str(self.census)}
            env |= {"_PROBE_TRACEMALLOC": "1"} if tracemalloc else {}
            command = [sys.executable, "-c", CENSUS]
        log = open(work / self.label / "daemon.log", "ab")  # noqa: SIM115 (the child's)
        self.proc = subprocess.Popen(command, cwd=self.tree, env=env, stdout=log, stderr=log)
        log.close()

    def health(self) -> dict[str, object] | None:
        try:
            url = f"http://127.0.0.1:{self.port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            return None

    def get(self, path: str) -> None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                r.read()
        except (OSError, ValueError):
            pass

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


class Feeder(threading.Thread):
    """The same drops into every variant's inbox: photos at varied sizes, some bad files."""

    def __init__(self, variants: list[Variant], per_s: float, seed: int = 17) -> None:
        super().__init__(name="probe-feed", daemon=True)
        self.variants, self.gap = variants, 1.0 / per_s
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.n = 0
        photos = {name: photo(name) for name in RELOAD_PHOTOS}
        self.photos = {
            k: np.ascontiguousarray(np.stack([v] * 3, -1) if v.ndim == 2 else v[..., :3])
            for k, v in photos.items()
        }

    def payload(self) -> tuple[str, bytes, bytes | None]:
        rng, n = self.rng, self.n
        pixels = self.photos[rng.choice(RELOAD_PHOTOS)]
        height, width = pixels.shape[:2]
        h, w = rng.randint(height // 4, height), rng.randint(width // 4, width)
        top, left = rng.randint(0, height - h), rng.randint(0, width - w)
        image = Image.fromarray(pixels[top : top + h, left : left + w])
        scale = rng.randint(40, 400) / max(h, w)
        image = image.resize((max(8, int(w * scale)), max(8, int(h * scale))))
        roll = rng.random()
        if roll < 0.6:
            data, ext = encoded(image, "JPEG", quality=rng.randint(70, 95)), ".jpg"
        else:
            data, ext = encoded(image, "PNG"), ".png"
        job = rng.choice(SIDECARS).encode() if rng.random() < 0.33 else None
        if roll > 0.92:  # cut short: quarantined (or decoded as far as it goes)
            data, job = data[: len(data) // 2], None
        elif roll > 0.88:
            data, ext, job = f"not an image {n}\n".encode() * 10, ".jpg", None
        return f"p-{n:05d}{ext}", data, job

    def run(self) -> None:
        while not self.halt.wait(self.gap):
            name, data, job = self.payload()
            self.n += 1
            for variant in self.variants:
                inbox = variant.root / "inbox"
                if job is not None:
                    (inbox / f".{name}.artd.json.part").write_bytes(job)
                    os.rename(inbox / f".{name}.artd.json.part", inbox / f"{name}.artd.json")
                temp = inbox / f".{name}.part"
                temp.write_bytes(data)
                os.rename(temp, inbox / name)


class Sampler(threading.Thread):
    """VmRSS of every daemon each second; the page polled a little (status, recent, a thumb)."""

    def __init__(self, variants: list[Variant], started: float) -> None:
        super().__init__(name="probe-rss", daemon=True)
        self.variants, self.started = variants, started
        self.halt = threading.Event()

    def run(self) -> None:
        tick = 0
        while not self.halt.wait(1.0):
            now = time.monotonic() - self.started
            for variant in self.variants:
                assert variant.proc is not None
                mib = rss_mib(variant.proc.pid)
                if mib is not None:
                    variant.samples.append((now, mib))
                if tick % 2 == 0:
                    variant.get("/api/status")
                    variant.get(f"/api/recent?page={tick % 3}&size=12")
            tick += 1


def outputs(root: Path) -> int:
    return sum(len(names) for _d, _s, names in os.walk(root / "outbox"))


def promote(variants: list[Variant], seed: int, work: Path) -> None:
    """A new checkpoint beside each served one, renamed over it (as the trainer promotes)."""
    fresh = work / f"promote-{seed}.safetensors"
    write_checkpoint(fresh, seed)
    for variant in (v for v in variants if v.reload):
        temp = variant.served.with_name(f".{variant.served.name}.{seed}.new")
        shutil.copyfile(fresh, temp)
        os.replace(temp, variant.served)
    fresh.unlink()


def median_between(samples: list[tuple[float, float]], start: float, end: float) -> float:
    chosen = [m for t, m in samples if start <= t < end]
    return statistics.median(chosen) if chosen else float("nan")


def census_rows(path: Path | None) -> list[dict[str, object]]:
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studies.reload_memory", description=__doc__
    )
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between reloads")
    parser.add_argument("--warmup", type=float, default=20.0, help="files before the first")
    parser.add_argument("--rate", type=float, default=2.0, help="files per second")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="LABEL=TREE[:K=V,...] (default now=.: this checkout; reload=0: no promotions)",
    )
    parser.add_argument("--census", action="store_true", help="count objects in the daemons")
    parser.add_argument("--tracemalloc", action="store_true", help="with --census: tracemalloc")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temp one)")
    parser.add_argument("--json", type=Path, help="write the samples and census here")
    args = parser.parse_args(argv)
    variants = [Variant.parse(v) for v in args.variant or ["now=."]]
    work = args.keep or Path(tempfile.mkdtemp(prefix="reload-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        variant.start(work, args.census, args.tracemalloc)
    try:
        deadline = time.monotonic() + 120
        while not all(v.health() for v in variants):
            if time.monotonic() > deadline or any(v.proc and v.proc.poll() for v in variants):
                raise SystemExit(f"a daemon did not come up; logs under {work}")
            time.sleep(0.2)
        started = time.monotonic()
        feeder, sampler = Feeder(variants, args.rate), Sampler(variants, started)
        feeder.start()
        sampler.start()
        time.sleep(args.warmup)
        reloads: list[float] = []
        for i in range(args.reloads):
            promote(variants, 100 + i, work)
            reloads.append(time.monotonic() - started)
            print(f"reload {i + 1}/{args.reloads} at {reloads[-1]:.0f}s", flush=True)
            time.sleep(args.every)
        feeder.halt.set()
        time.sleep(3)
        sampler.halt.set()
        sampler.join()
        end = time.monotonic() - started
    finally:
        codes = {v.label: v.stop() for v in variants}
    report(variants, reloads, end, args)
    print(
        f"exit codes {codes}; outputs "
        + ", ".join(f"{v.label} {outputs(v.root)}" for v in variants)
    )
    if args.json:
        figures = {
            v.label: {"samples": v.samples, "census": census_rows(v.census)} for v in variants
        }
        args.json.write_text(json.dumps({"reloads": reloads, "variants": figures}))
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(
    variants: list[Variant], reloads: list[float], end: float, args: argparse.Namespace
) -> None:
    """The per-reload table: median VmRSS of each interval after a reload (its first 2 s,
    the new engine's probe and first batches, left out), per variant."""
    bounds = [(0.0, reloads[0])] + [
        (start + 2, nxt) for start, nxt in zip(reloads, [*reloads[1:], end], strict=True)
    ]
    names = " | ".join(f"{v.label} MiB" for v in variants)
    print(f"\n| after reload | {names} |")
    print("|---|" + "---|" * len(variants))
    for i, (start, stop) in enumerate(bounds):
        row = " | ".join(f"{median_between(v.samples, start, stop):.0f}" for v in variants)
        print(f"| {'before' if i == 0 else i} | {row} |")
    print()
    for v in variants:
        first = median_between(v.samples, *bounds[1])
        last = median_between(v.samples, *bounds[-1])
        half = len(bounds) // 2
        mid = median_between(v.samples, *bounds[half])
        per = (last - mid) / max(1, len(bounds) - 1 - half)
        print(
            f"{v.label}: after reload 1 {first:.0f} MiB, after the last {last:.0f} MiB "
            f"({last - first:+.0f}); second half {per:+.1f} MiB per reload; "
            f"peak {max(m for _t, m in v.samples):.0f}"
        )
        rows = census_rows(v.census)
        if rows:
            a, b = rows[min(1, len(rows) - 1)], rows[-1]
            keys = (
                "rss_kib",
                "objects",
                "tensors",
                "tensor_mib",
                "engines",
                "folded",
                "inferences",
            )
            change = ", ".join(f"{k} {a.get(k)} -> {b.get(k)}" for k in keys)
            print(f"  census (2nd vs last sample): {change}")
            if "malloc" in a and "malloc" in b:
                ma, mb = a["malloc"], b["malloc"]
                assert isinstance(ma, dict) and isinstance(mb, dict)
                print("  malloc " + ", ".join(f"{k} {ma[k]:.1f} -> {mb[k]:.1f}" for k in ma))
            top_a = dict(a.get("top") or [])
            grown = sorted(
                ((n - top_a.get(t, 0), t) for t, n in (b.get("top") or [])), reverse=True
            )
            print("  grown types: " + ", ".join(f"{t} {d:+d}" for d, t in grown[:8] if d))
            if "traced_mib" in b:
                print(f"  tracemalloc {a.get('traced_mib'):.1f} -> {b['traced_mib']:.1f} MiB")


if __name__ == "__main__":
    sys.exit(main())
