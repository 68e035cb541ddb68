"""One art-bench checkpoint through the product's default path, timed and its passes counted.

:class:`Model` runs a denoise or guided checkpoint on the CPU engine as the daemon does
(``core.runtime.engine.Engine`` with its default threads and precision,
``core.runtime.img2img.Inference.run_all``, each photo's noise seeded from its content hash)
at the checkpoint's recommended settings (steps, eta, working size, refine) and a given
strength. Photos go in at the daemon's default output size (:data:`OUTPUT_SIZE`, read from
``daemon.settings.render``). It counts the network's real passes by wrapping the engine's
one network call (``Engine._network_pass``): every image row the network sees, so a
guidance scale above 1, a refining pass or an fp32 retry all count.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.shared.photos import resized
from core.diffusion.sampler_settings import SamplerRequest
from core.diffusion.schedule import Schedule
from daemon.settings.render import RenderSettings

# What a person gets from the daemon by default: the output's longer side, and how.
OUTPUT_SIZE: int = RenderSettings.model_fields["size"].default
OUTPUT_RESIZE = RenderSettings.model_fields["resize"].default


def at_output_size(rgb: np.ndarray, size: int = OUTPUT_SIZE) -> np.ndarray:
    """A photo as the daemon hands it to the model at output size ``size``."""
    return resized(rgb, size, OUTPUT_RESIZE)


@dataclass(frozen=True)
class Outputs:
    """One run of a model over the photos at one strength."""

    images: list[np.ndarray]  # HWC uint8, each at its photo's size
    seconds: float  # wall seconds per image through Inference.run_all
    passes: float  # network passes per image (image rows the network saw / images)


class Model:
    """One checkpoint on the CPU engine, the product's path (module docstring)."""

    def __init__(self, path: Path, precision: str = "auto") -> None:
        from core.runtime.engine import Engine

        self.path = path
        self.engine = Engine.from_path(path, device="cpu", precision=precision)
        recommended = self.engine.sampler_settings()
        if recommended is None:
            raise ValueError(f"{path} is not a diffusion (denoise or guided) checkpoint")
        self.recommended = recommended
        self.schedule = Schedule.from_dict(self.engine.checkpoint.meta.diffusion or {})
        self._rows = 0
        network_pass = self.engine._network_pass

        def counted(x: torch.Tensor, precision: str) -> torch.Tensor:
            self._rows += len(x)
            return network_pass(x, precision)

        self.engine._network_pass = counted  # type: ignore[method-assign]

    @property
    def objective(self) -> str:
        return self.engine.objective

    def run(self, images: Sequence[np.ndarray], hashes: Sequence[str], strength: float) -> Outputs:
        """The photos through the engine at ``strength`` and the recommended settings."""
        from core.runtime.errors import InferenceError
        from core.runtime.img2img import Inference, OutputSettings

        request = SamplerRequest(strength)
        inference = Inference(self.engine, OutputSettings(OUTPUT_SIZE), request)
        rows, started = self._rows, time.perf_counter()
        results = inference.run_all(list(images), list(hashes))
        seconds = time.perf_counter() - started
        for r in results:
            if isinstance(r, InferenceError):
                raise RuntimeError(f"{self.path.name} at strength {strength}: {r}")
        return Outputs(
            [np.asarray(r.convert("RGB")) for r in results],  # type: ignore[union-attr]
            seconds / len(images),
            (self._rows - rows) / len(images),
        )
