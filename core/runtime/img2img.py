"""The inference path: how a checkpoint turns an image into an image, and into an output file.

The daemon's pipeline and ``artd process`` both go through :class:`Inference`: decoded
pixels in, batched by shape (core.runtime.batcher), :meth:`Inference.run` on the thread that
owns the device, :meth:`Inference.encode` on the I/O threads. They differ only in where files come
from and go to (the spool, or folders named on the command line).

How an image becomes an image is the checkpoint's *sampler* (core.runtime.samplers), which the
engine (core.runtime.engine: device, precision, memory layout, out-of-memory back-off, NaN retry)
calls on each batch with the network in its chosen precision: :class:`SinglePass` for a
``reconstruct`` checkpoint (normalise, one network pass, to pixels), the SDEdit
``DiffusionSampler`` for a ``denoise`` one, chosen by the checkpoint's objective
(``core.objectives.sampler_for``). A denoise checkpoint's outputs depend on the sampler settings
(a ``SamplerRequest`` resolved over the checkpoint's recommendation) and on
each input's content hash, which seeds its noise; both go into the output's provenance.

Faithful outputs (docs/colour.md): a batch of HWC *RGBA* arrays (the decoders'
``keep_alpha``) runs the model on the colour composited on ``OutputSettings.background``, as
an opaque input always did, and gets its alpha back afterwards, the colour un-composited, so
PNG and WebP keep the transparency and JPEG composites on the same background. Each output
carries an ICC profile (sRGB, or the input's with ``output_profile="input"``); the ``keep``
palette (the ``colour`` setting) puts each result's luminance under its input's own chroma
(core.images.colour.keep_colours) before the alpha goes back on. Each also carries the standard AI
label (core.outputs.labels: XMP DigitalSourceType, EXIF Software/ImageDescription), optionally the
input's own metadata (core.images.origin) and a Content Credentials manifest
(core.outputs.content_credentials).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from loguru import logger
from PIL import Image

from core.diffusion.sampler_settings import SamplerRequest
from core.images.colour import keep_colours
from core.images.origin import Origin
from core.outputs.result import encode_result
from core.outputs.settings import OutputSettings
from core.reasons import Reason
from core.runtime.batcher import map_by_shape
from core.runtime.errors import InferenceError
from core.runtime.samplers import SinglePass, seeds_for

if TYPE_CHECKING:
    from core.runtime.engine import Engine

__all__ = [
    "Inference",
    "OutputSettings",
    "SinglePass",
]


class Inference:
    """One engine's step from decoded pixels to encoded output bytes (module docstring).

    A model switch makes a new one, so an output is always encoded with the provenance of
    the engine that computed it. ``request`` is what the user asked for;
    ``sampler_settings`` the effective settings for this engine's checkpoint (None for a
    one-pass checkpoint, which ignores them, saying so once per engine)."""

    def __init__(
        self, engine: Engine, output: OutputSettings, request: SamplerRequest | None = None
    ) -> None:
        self.engine = engine
        # ``auto``: the palette the checkpoint recommends (meta.colour), else the model's.
        self.output = output.resolved_palette(engine.checkpoint.meta.colour)
        self.request = request or SamplerRequest()
        self.sampler_settings = engine.sampler_settings(self.request)

    @property
    def max_batch(self) -> int:
        return self.engine.max_batch

    def run(
        self, batch: Sequence[np.ndarray], sha256s: Sequence[str] | None = None
    ) -> list[Image.Image | InferenceError]:
        """One result per HWC uint8 image of one shape, in order; never raises.

        ``sha256s`` are the inputs' file hashes, which seed a denoise checkpoint's noise
        (the same ones :meth:`encode` records); without them each decoded array's own
        bytes are hashed instead. RGBA arrays give RGBA results (module docstring). With the
        ``keep`` palette each result takes its input's chroma here, on the flat (composited)
        input, so RGB and RGBA batches, the daemon and ``artd process`` all get it."""
        if batch and np.ndim(batch[0]) == 3 and np.shape(batch[0])[2] == 4:
            return self._run_with_alpha(batch, sha256s)
        try:
            seeds = None
            if self.sampler_settings is not None and sha256s is not None:
                if len(sha256s) != len(batch):
                    raise ValueError(f"{len(sha256s)} hashes for {len(batch)} images")
                seeds = seeds_for(sha256s, self.sampler_settings)
            results = self.engine.run(torch.from_numpy(np.stack(batch)), seeds, self.request)
            if self.output.palette == "keep":
                results = [
                    r if isinstance(r, InferenceError) else keep_colours(r, given)
                    for r, given in zip(results, batch, strict=True)
                ]
            return results
        except Exception as exc:  # keep serving; each item is reported on its own
            logger.exception("model call failed")
            return [InferenceError(Reason.MODEL_FAILED, str(exc)[:300])] * len(batch)

    def _run_with_alpha(
        self, batch: Sequence[np.ndarray], sha256s: Sequence[str] | None
    ) -> list[Image.Image | InferenceError]:
        background = np.asarray(self.output.background, np.float32)
        alphas = [np.asarray(item[..., 3]) for item in batch]
        flat = [_composite(item, background) for item in batch]
        results = self.run(flat, sha256s)
        return [
            r if isinstance(r, InferenceError) else _attach_alpha(r, a, background)
            for r, a in zip(results, alphas, strict=True)
        ]

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

    def encode(self, image: Image.Image, input_sha256: str, origin: Origin | None = None) -> bytes:
        """The output file's bytes, with the provenance of this engine's checkpoint and, for
        a denoise checkpoint, the sampler settings used; ``origin``: the input's record
        (core.images.origin), for ``format="same"``, ``output_profile="input"`` and metadata
        copying."""
        return encode_result(
            image,
            self.engine.checkpoint.identity,
            input_sha256,
            self.output,
            self.sampler_settings,
            origin,
        )


def _composite(rgba: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The colour over ``background``, as an opaque decode would have given it."""
    alpha = rgba[..., 3:4].astype(np.float32) / 255
    flat = rgba[..., :3] * alpha + background * (1 - alpha)
    return (flat + 0.5).astype(np.uint8)


def _attach_alpha(image: Image.Image, alpha: np.ndarray, background: np.ndarray) -> Image.Image:
    """The model's result un-composited from ``background`` under ``alpha`` (exact for an
    identity model), with the alpha attached; fully transparent pixels keep the result."""
    if image.size != (alpha.shape[1], alpha.shape[0]):
        alpha = np.asarray(Image.fromarray(alpha).resize(image.size, Image.Resampling.BILINEAR))
    out = np.asarray(image.convert("RGB"), np.float32)
    a = alpha[..., None].astype(np.float32) / 255
    straight = np.where(a > 0, (out - background * (1 - a)) / np.maximum(a, 1e-6), out)
    rgba = Image.fromarray(np.dstack([np.clip(straight + 0.5, 0, 255).astype(np.uint8), alpha]))
    # Un-compositing clips where the model drew darker (or lighter) than the background allows;
    # a JPEG takes the model's own composited result instead (core.outputs.result.encode_output).
    rgba.info["composited"] = image
    return rgba
