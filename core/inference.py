"""The inference path: how a checkpoint turns an image into an image, and into an output file.

The daemon's pipeline and ``artd process`` both go through :class:`Inference`: decoded
pixels in, batched by shape (core.batcher), :meth:`Inference.run` on the thread that owns the
device, :meth:`Inference.encode` on the I/O threads. They differ only in where files come
from and go to (the spool, or folders named on the command line).

How an image becomes an image is the checkpoint's *sampler* (core.sampling), which the
engine (core.engine: device, precision, memory layout, out-of-memory back-off, NaN retry)
calls on each batch with the network in its chosen precision: :class:`SinglePass` for a
``reconstruct`` checkpoint (normalise, one network pass, to pixels), the SDEdit
``DiffusionSampler`` for a ``denoise`` one, chosen by :func:`sampler_for` from the
checkpoint's metadata. A denoise checkpoint's outputs depend on the sampler settings
(:class:`SamplingSettings`, with the checkpoint's recommendation for what is unset) and on
each input's content hash, which seeds its noise; both go into the output's provenance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from loguru import logger
from PIL import Image

from core.batcher import map_by_shape
from core.encoding import OUTPUT_FORMATS, encode
from core.provenance import provenance
from core.reasons import Reason
from core.sampling import SamplingSettings, SinglePass, sampler_for, seeds_for

if TYPE_CHECKING:
    from core.engine import Engine
    from core.imaging import ResizePolicy

__all__ = [
    "Inference",
    "InferenceError",
    "OutputSettings",
    "SamplingSettings",
    "SinglePass",
    "sampler_for",
]


class InferenceError(Exception):
    """One item could not be run through the model; the rest of its batch is unaffected."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class OutputSettings:
    """What the outputs are made as; recorded in each output's provenance."""

    size: int
    resize: ResizePolicy = "fit"
    fmt: str = "png"

    @property
    def extension(self) -> str:
        return OUTPUT_FORMATS[self.fmt]

    def recorded(self) -> dict[str, object]:
        """The settings as the provenance and the quarantine sidecars carry them."""
        return {"size": self.size, "resize": self.resize, "format": self.fmt}


class Inference:
    """One engine's step from decoded pixels to encoded output bytes (module docstring).

    A model switch makes a new one, so an output is always encoded with the provenance of
    the engine that computed it. ``sampling`` is what the user asked for; ``sampler`` the
    effective settings for this engine's checkpoint (None for a reconstruct checkpoint,
    which ignores them, saying so once per engine)."""

    def __init__(
        self, engine: Engine, output: OutputSettings, sampling: SamplingSettings | None = None
    ) -> None:
        self.engine = engine
        self.output = output
        self.sampling = sampling or SamplingSettings()
        self.sampler = engine.sampler_settings(self.sampling)

    @property
    def max_batch(self) -> int:
        return self.engine.max_batch

    def run(
        self, batch: Sequence[np.ndarray], sha256s: Sequence[str] | None = None
    ) -> list[Image.Image | InferenceError]:
        """One result per HWC uint8 image of one shape, in order; never raises.

        ``sha256s`` are the inputs' file hashes, which seed a denoise checkpoint's noise
        (the same ones :meth:`encode` records); without them each decoded array's own
        bytes are hashed instead."""
        try:
            seeds = None
            if self.sampler is not None and sha256s is not None:
                if len(sha256s) != len(batch):
                    raise ValueError(f"{len(sha256s)} hashes for {len(batch)} images")
                seeds = seeds_for(sha256s, self.sampler)
            return self.engine.run_batch(torch.from_numpy(np.stack(batch)), seeds, self.sampling)
        except Exception as exc:  # keep serving; each item is reported on its own
            logger.exception("model call failed")
            return [InferenceError(Reason.MODEL_FAILED, str(exc)[:300])] * len(batch)

    def run_all(
        self, images: Sequence[np.ndarray], sha256s: Sequence[str] | None = None
    ) -> list[Image.Image | InferenceError]:
        """:meth:`run` for HWC uint8 images of any shapes, batched by shape; in order."""
        if sha256s is None:
            return map_by_shape(images, np.shape, self.max_batch, self.run)
        if len(sha256s) != len(images):
            raise ValueError(f"{len(sha256s)} hashes for {len(images)} images")
        pairs = list(zip(images, sha256s, strict=True))
        return map_by_shape(
            pairs,
            lambda pair: np.shape(pair[0]),
            self.max_batch,
            lambda batch: self.run([p[0] for p in batch], [p[1] for p in batch]),
        )

    def encode(self, image: Image.Image, input_sha256: str) -> bytes:
        """The output file's bytes, with the provenance of this engine's checkpoint and, for
        a denoise checkpoint, the sampler settings used."""
        meta = provenance(
            self.engine.checkpoint, input_sha256, self.output.recorded(), sampler=self.sampler
        )
        return encode(image, self.output.fmt, metadata=meta)
