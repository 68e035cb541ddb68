"""Study: the network's share of the daemon's time against the network alone.

``python -m bench.studies.network_share [--repeats N] [--out DIR]``: the shipped model at the
daemon's defaults on real photos (scikit-image's, each copied ``--repeats`` times), dropped at
once; the model's time per image inside the daemon is ``artd_batch_seconds`` (the whole
model call: sampler, guide, resizes, colour) over the images it ran, read from ``/metrics``.
Beside it, the network alone: the same checkpoint's folded network on each photo's working
shape, with as many threads as the daemon's engine, timed for each batch size (1, 2, 4) and
precision the hardware offers, the passes an image costs at the recommended settings; the
best per shape. Prints both per image and their ratio (target: at most 1.15).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import core
from bench.shared.daemon_harness import Daemon, drop_and_wait, shipped_settings
from bench.shared.photos import PHOTOS, photo
from bench.shared.scrape import delta, scrape
from core.diffusion.schedule import step_count
from core.images.pixels import target_size
from core.runtime.engine import Engine
from core.runtime.samplers import working_shape

PRECISIONS = ("fp32", "bf16", "bf16-mixed")
BATCHES = (1, 2, 4)


def daemon_model_seconds(files: list[Path], work: Path) -> tuple[float, float]:
    """(model seconds per image, wall seconds per image) of the daemon at its defaults."""
    with Daemon(work / "root", core.DEFAULT_CHECKPOINT, "cpu", **shipped_settings()) as daemon:
        drop_and_wait(daemon, files, work / "staging")  # warm-up: every shape seen once
        before = scrape(daemon.port)
        wall = drop_and_wait(daemon, files, work / "staging")
        after = scrape(daemon.port)
    images = delta(before, after, "artd_batch_size_sum")
    seconds = delta(before, after, "artd_batch_seconds_sum")
    return seconds / images, wall / len(files)


def network_alone(shapes: list[tuple[int, int]], passes: int, repeats: int = 5) -> float:
    """The best time per image of ``passes`` network passes on each photo's shape, averaged
    over the photos."""
    engine = Engine.from_path(core.DEFAULT_CHECKPOINT, device="cpu")
    channels = 3 + engine.checkpoint.meta.guide_channels
    best: dict[tuple[int, int], float] = {}
    for h, w in sorted(set(shapes)):
        per_image = []
        for precision in PRECISIONS:
            for batch in BATCHES:
                x = torch.randn(batch, channels, h, w)
                engine._network_pass(x, precision)  # warm-up
                times = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    for _ in range(passes):
                        engine._network_pass(x, precision)
                    times.append((time.perf_counter() - started) / batch)
                per_image.append((statistics.median(times), precision, batch))
        fastest = min(per_image)
        print(f"  {h}x{w}: best {fastest[0] * 1000:.1f} ms per image ({fastest[1]}, batch "
              f"{fastest[2]})", flush=True)  # fmt: skip
        best[(h, w)] = fastest[0]
    return float(np.mean([best[shape] for shape in shapes]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.studies.network_share")
    parser.add_argument("--repeats", type=int, default=4, help="copies of each photo dropped")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="artd-share-"))
    data = work / "photos"
    data.mkdir(parents=True, exist_ok=True)
    files, shapes = [], []
    size = int(shipped_settings()["size"])
    recommended = Engine.from_path(core.DEFAULT_CHECKPOINT, device="cpu").sampler.recommended
    for name in PHOTOS:
        image = Image.fromarray(photo(name))
        w, h = target_size(image.width, image.height, size, "fit")
        shapes.append(working_shape((h, w), recommended.working_size) or (h, w))
        for k in range(args.repeats):
            path = data / f"{name}-{k}.png"
            image.save(path)
            files.append(path)
    passes = step_count(recommended.strength, recommended.steps)
    model_s, wall_s = daemon_model_seconds(files, work)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))  # the daemon engine's threads
    print(f"network alone, {passes} passes per image, {torch.get_num_threads()} thread(s):")
    alone_s = network_alone(shapes, passes)
    print(f"daemon: {wall_s:.3f} s per image wall, {model_s:.3f} s of it in model calls")
    print(f"network alone at its best batch and precision: {alone_s:.3f} s per image")
    print(f"model calls / network alone = {model_s / alone_s:.2f}x (target at most 1.15x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
