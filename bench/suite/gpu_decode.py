"""Suite member ``gpu_decode``: GPU JPEG decoding against our CPU draft decode, photo mix.

``torchvision.io.decode_jpeg`` on the device, batched, then an antialiased resize there. Run
by bench/scripts/gpu.sh (the default run leaves it out); on a machine without CUDA it runs the
same flow on the CPU so the script stays tested."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torchvision.io import decode_jpeg

from bench.shared.common import Run, fmt, table
from bench.shared.datasets import photo_mix
from bench.suite.floors import decode_ms


def device_decode_ms(blobs: list[torch.Tensor], device: str, batch: int, repeats: int) -> float:
    def once() -> None:
        for start in range(0, len(blobs), batch):
            images = decode_jpeg(blobs[start : start + batch], device=device)
            for img in images:  # sizes differ across the mix: resize one by one
                F.interpolate(img[None].float(), size=(128, 128), mode="bilinear", antialias=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    once()  # warm-up (nvjpeg handles, allocator)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        once()
        samples.append((time.perf_counter() - started) * 1000 / len(blobs))
    return sorted(samples)[len(samples) // 2]


def bench(run: Run) -> None:
    files = photo_mix(run.out, run.pick(24, 200))
    blobs = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in files]
    device = run.device if torch.cuda.is_available() or run.device == "cpu" else "cpu"
    repeats = run.pick(3, 5)
    rows = [["CPU draft decode (ours, 1 thread)", fmt(decode_ms(files, repeats), 2)]]
    for batch in (1, 8, 32):
        rows.append([f"decode_jpeg on {device}, batch {batch}",
                     fmt(device_decode_ms(blobs, device, batch, repeats), 2)])  # fmt: skip
    run.figures["gpu_decode"] = {"device": device, "rows": rows}
    run.report(
        "### JPEG decode to 128 px, photo mix\n\n" + table(["path", "ms/image"], rows) + "\n"
    )
