"""Memory across hot reloads (docs/soak.md, "Memory across hot reloads"): a real daemon, a
new checkpoint promoted over the served one again and again, real photos (and a bad file,
and job sidecars: per-group Inferences) processed between promotions.

Each promotion frees a whole engine (about 10 MiB: weights, BatchNorm-folded fp32 and bf16
copies). Before the fix the RSS stepped up at every reload: the pipeline's per-group
Inferences, and the first engine through ``Service.run``'s frame, kept old engines alive,
and glibc kept the freed pages of the others. After a warm-up (the first promotions: the
reload thread's own malloc arena and oneDNN buffers, the shapes' primitives) the RSS must
stay within ``GROWTH_MIB``; figures and the probe behind the bound: docs/soak.md.

The engines live in the daemon's model worker, which a promotion switches in place (the same
process): its RSS is what the bound is for. The service's, which holds the pipeline and no
network, is held to the same bound.
"""

from __future__ import annotations

import io
import os
import random
import statistics
import time
from pathlib import Path

import pytest
import skimage.data
from daemon_harness import Daemon, settled_count
from PIL import Image
from reliability_kit import model_worker_pids, proc_status, wait_until
from soak_kit import promote_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

RELOADS = 10
WARM_ROUNDS = 3  # rounds of files before the first promotion: the shapes' primitives
# The RSS after the last three promotions (median) minus before the first: the fixed daemon
# measured -2.0 MiB here, the unfixed one +59.1 (without the trim +30.7; docs/soak.md). An
# engine is ~10 MiB: the bound is one and a half, above the fixed daemon's noise.
GROWTH_MIB = 16.0
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
# Job groups used in turn, one a round: a group's Inference outlives a promotion until the
# group comes again (what kept old engines alive).
JOBS = (b'{"size": 48}', b'{"output_format": "jpeg"}', b'{"seed": 7}')


def drops(inbox: Path, rng: random.Random, n: int) -> int:
    """Photo crops of two fixed sizes (a few shapes only: their oneDNN primitives warm up
    once), one with the job sidecar of this round's group, and one file that is not an
    image. Returns the count."""
    count = 0
    for i, job in enumerate((None, None, JOBS[n % len(JOBS)])):
        pixels = getattr(skimage.data, rng.choice(PHOTOS))()
        h, w = (96, 128) if i % 2 else (128, 96)
        top, left = rng.randint(0, pixels.shape[0] - h), rng.randint(0, pixels.shape[1] - w)
        buffer = io.BytesIO()
        Image.fromarray(pixels[top : top + h, left : left + w, :3]).save(buffer, "JPEG")
        name = f"r{n:02d}-{i}.jpg"
        if job is not None:
            (inbox / f"{name}.artd.json").write_bytes(job)
        (inbox / f".{name}").write_bytes(buffer.getvalue())
        os.rename(inbox / f".{name}", inbox / name)
        count += 1
    (inbox / f"r{n:02d}-bad.jpg").write_bytes(b"not an image\n" * 50)
    return count + 1


def rss_mib(pid: int) -> float:
    """The median of five VmRSS readings over a second."""
    readings = []
    for _ in range(5):
        readings.append(proc_status(pid)["VmRSS"] / 1024)
        time.sleep(0.2)
    return statistics.median(readings)


def growth(rss: list[float]) -> float:
    """The median of the last three rounds less the round before the first promotion."""
    return statistics.median(rss[-3:]) - rss[WARM_ROUNDS - 1]


@pytest.mark.timeout(240)
def test_memory_stays_flat_across_hot_reloads(pixel_checkpoint: Path, tmp_path: Path) -> None:
    rng = random.Random(1717)
    served = tmp_path / "models" / "served.safetensors"
    served.parent.mkdir()
    served.write_bytes(pixel_checkpoint.read_bytes())
    root = tmp_path / "root"
    daemon = Daemon(root, served, settle_seconds=0.2, max_batch=8, max_delay_ms=50)
    daemon.log_path = tmp_path / "daemon.log"
    expected = 0
    # After each round, WARM_ROUNDS before any promotion, then one each: by process.
    rss: dict[str, list[float]] = {"worker": [], "service": []}
    with daemon:
        assert daemon.proc is not None
        (worker,) = model_worker_pids(daemon)
        for n in range(WARM_ROUNDS + RELOADS):
            if n >= WARM_ROUNDS:
                version = daemon.health()[1]["model"]
                promote_checkpoint(served, 100 + n)
                changed = lambda v=version: daemon.health()[1]["model"] != v  # noqa: E731
                wait_until(changed, 30, "the reload", daemon)
            expected += drops(root / "inbox", rng, n)
            wait_until(lambda e=expected: settled_count(root) >= e, 60, f"round {n}", daemon)
            rss["worker"].append(rss_mib(worker))
            rss["service"].append(rss_mib(daemon.proc.pid))
        assert model_worker_pids(daemon) == [worker]  # switched in place, never restarted
        assert daemon.stop() == 0
    figures = {
        name: f"{', '.join(f'{m:.0f}' for m in values)}; growth {growth(values):+.1f}"
        for name, values in rss.items()
    }
    print("".join(f"\n{name} RSS after each round (MiB): {text}" for name, text in figures.items()))
    assert settled_count(root) == expected
    for name, values in rss.items():
        assert growth(values) < GROWTH_MIB, f"{name} RSS grew: {figures[name]}"
