"""The page's speed and memory with a full outbox (issue 16's must-hold: with 10,000
outputs the page and API answer in under 200 ms and the daemon's memory stays flat).

``python -m bench.page [--outputs 10000] [--rounds 400] [--out build/page-bench.json]``
fills a data root with real PNG outputs (artd's own metadata, encoded by core.outputs.encoding) and
archived JPEG originals in one flat folder (the worst case for a listing), plus quarantined
files with sidecars, starts the real daemon on it (the shipped model, on the CPU) and
times every endpoint the page polls: the first (cold) request, then medians, p95 and
maxima over ``--rounds`` rounds. The daemon's RSS is read from /proc after a warm-up,
after the rounds, and again after 1,000 more outputs land and the rounds run once more.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from daemon_harness import Daemon  # noqa: E402

from core.outputs.encoding import encode  # noqa: E402

ENDPOINTS = (
    "/",
    "/api/status",
    "/api/recent?page=0&size=24",
    "/api/recent?page=300&size=24",
    "/api/quarantine?size=100",
)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fill(root: Path, start: int, count: int, quarantined: int = 0) -> None:
    """``count`` outputs (and their originals) numbered from ``start``, oldest first."""
    outbox, archive, quarantine = (root / n for n in ("outbox", "archive", "quarantine"))
    for folder in (outbox, archive, quarantine, root / "inbox"):
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    now = time.time()
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    image = Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    for i in range(start, start + count):
        meta = {"artd:model": "default.safetensors@bench", "artd:settings": '{"size": 64}'}
        meta["artd:created"] = f"bench {i}"
        out = outbox / f"photo{i:06d}.jpg.png"
        out.write_bytes(encode(image, "png", metadata=meta))
        (archive / f"photo{i:06d}.jpg").write_bytes(jpeg.getvalue())
        when = now - (start + count - i) * 0.2
        os.utime(out, (when, when))
    for i in range(quarantined):
        (quarantine / f"bad{i:04d}.jpg").write_bytes(b"not an image")
        sidecar = {"reason": "not_an_image", "message": "bench", "claim": f"{i:020d}-00000000"}
        sidecar |= {"original_path": f"bad{i:04d}.jpg", "time": "2026-01-01T00:00:00+00:00"}
        (quarantine / f"bad{i:04d}.jpg.error.json").write_text(json.dumps(sidecar))


def timed(port: int, path: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        response.read()
    return (time.perf_counter() - start) * 1000


def rounds(port: int, count: int) -> dict[str, dict[str, float]]:
    samples: dict[str, list[float]] = {path: [] for path in ENDPOINTS}
    for _ in range(count):
        for path in ENDPOINTS:
            samples[path].append(timed(port, path))
    return {
        path: {
            "median_ms": round(statistics.median(values), 2),
            "p95_ms": round(sorted(values)[int(0.95 * (len(values) - 1))], 2),
            "max_ms": round(max(values), 2),
        }
        for path, values in samples.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outputs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--work", type=Path, default=REPO / "build" / "page-bench")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "page-bench.json")
    args = parser.parse_args(argv)
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    root = args.work / "root"
    t0 = time.perf_counter()
    fill(root, 0, args.outputs, quarantined=200)
    print(f"filled {args.outputs} outputs in {time.perf_counter() - t0:.1f}s")
    model = REPO / "core" / "assets" / "default.safetensors"
    report: dict[str, object] = {"outputs": args.outputs, "rounds": args.rounds}
    with Daemon(root, model, instance="bench") as daemon:
        assert daemon.proc is not None
        pid, port = daemon.proc.pid, daemon.port
        report["cold_ms"] = {path: round(timed(port, path), 2) for path in ENDPOINTS}
        recent = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}{ENDPOINTS[2]}").read())
        thumb = recent["items"][0]["after"]
        report["thumbnail_cold_ms"] = round(timed(port, thumb), 2)
        report["thumbnail_cached_ms"] = round(timed(port, thumb), 2)
        rounds(port, 20)
        rss = {"warm": rss_mib(pid)}
        report["timings"] = rounds(port, args.rounds)
        rss["after_rounds"] = rss_mib(pid)
        fill(root, args.outputs, 1000)
        report["timings_after_1000_more"] = rounds(port, args.rounds)
        rss["after_1000_more"] = rss_mib(pid)
        report["rss_mib"] = {k: round(v, 1) for k, v in rss.items()}
        daemon.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    worst = max(t["p95_ms"] for t in report["timings"].values())  # type: ignore[union-attr]
    print(f"worst p95 {worst:.1f} ms (must hold: < 200 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
