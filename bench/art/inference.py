"""One art-bench checkpoint through the product's inference path, and its per-step cost.

:class:`Model` runs a denoise checkpoint on the CPU engine (``core.runtime.img2img``) at its
recommended sampler settings; :func:`step_cost` times a sampling step against the
model-alone floor, the same engine's network call with no sampler.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.shared.common import alternate, median
from core.diffusion.sampler_settings import SamplerRequest
from core.diffusion.schedule import Schedule, step_count, to_model


class Model:
    """One checkpoint on the CPU engine, the product's path (core.runtime.img2img)."""

    def __init__(self, path: Path) -> None:
        from core.runtime.engine import Engine

        self.path = path
        self.engine = Engine.from_path(path, device="cpu")
        recommended = self.engine.sampler_settings()
        if recommended is None:
            raise ValueError(f"{path} is not a denoise checkpoint")
        self.recommended = recommended
        self.size = self.engine.checkpoint.meta.train_size
        self.schedule = Schedule.from_dict(self.engine.checkpoint.meta.diffusion or {})

    def run(self, images: Sequence[np.ndarray], hashes: Sequence[str], strength: float):
        from core.runtime.errors import InferenceError
        from core.runtime.img2img import Inference, OutputSettings

        request = SamplerRequest(strength=strength, steps=self.recommended.steps)
        inference = Inference(self.engine, OutputSettings(self.size), request)
        results = inference.run_all(list(images), list(hashes))
        for r in results:
            if isinstance(r, InferenceError):
                raise RuntimeError(f"{self.path.name} at strength {strength}: {r}")
        return [np.asarray(r.convert("RGB")) for r in results]

    def from_noise(self, count: int) -> list[np.ndarray]:
        blank = [np.zeros((self.size, self.size, 3), np.uint8)] * count
        return self.run(blank, [f"bench-art-noise:{i}" for i in range(count)], 1.0)


def step_cost(model: Model, photos: Sequence[np.ndarray], repeats: int) -> dict[str, Any]:
    """ms per image per step through the engine at the recommended settings, against the
    model-alone floor: the same engine's network call (``Engine._network_pass``, the one the
    sampler makes) on a batch of the same shape, as many times as there are steps."""
    engine, rec = model.engine, model.recommended
    batch = min(engine.max_batch, len(photos))
    pixels = torch.from_numpy(np.stack(photos[:batch])).permute(0, 3, 1, 2).float() / 255
    seeds = list(range(batch))
    request = SamplerRequest(strength=rec.strength, steps=rec.steps)
    steps = step_count(rec.strength, rec.steps)
    x = to_model(pixels)

    def timed(work: Callable[[], object]) -> Callable[[], float]:
        def run() -> float:
            started = time.perf_counter()
            work()
            return time.perf_counter() - started

        return run

    def sampler() -> None:
        engine.infer(pixels, seeds, request)

    def network() -> None:
        with torch.inference_mode():
            for _ in range(steps):
                engine._network_pass(x, engine.precision)

    sampler(), network()  # warm-up: oneDNN picks its kernels on the first calls
    times = alternate({"sampler": timed(sampler), "floor": timed(network)}, repeats)
    per = {k: median(v) * 1000 / (batch * steps) for k, v in times.items()}
    return {
        "batch": batch, "steps": steps, "strength": rec.strength, "threads":
        torch.get_num_threads(), "precision": engine.precision, "size": model.size,
        "sampler_ms": per["sampler"], "floor_ms": per["floor"],
        "ratio": per["sampler"] / per["floor"], "repeats": repeats,
    }  # fmt: skip
