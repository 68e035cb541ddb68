"""The inference path: how a checkpoint turns an image into an image, and into an output file.

The daemon's pipeline and ``artd process`` both go through :class:`Inference`: decoded
pixels in, batched by shape (core.runtime.batcher), :meth:`Inference.run` on the thread that owns
the
device, :meth:`Inference.encode` on the I/O threads. They differ only in where files come
from and go to (the spool, or folders named on the command line).

How an image becomes an image is the checkpoint's *sampler* (core.runtime.samplers), which the
engine (core.runtime.engine: device, precision, memory layout, out-of-memory back-off, NaN retry)
calls on each batch with the network in its chosen precision: :class:`SinglePass` for a
``reconstruct`` checkpoint (normalise, one network pass, to pixels), the SDEdit
``DiffusionSampler`` for a ``denoise`` one, chosen by :func:`sampler_for` from the
checkpoint's metadata. A denoise checkpoint's outputs depend on the sampler settings
(:class:`SamplingSettings`, with the checkpoint's recommendation for what is unset) and on
each input's content hash, which seeds its noise; both go into the output's provenance.

Faithful outputs (issue 15, docs/colour.md): a batch of HWC *RGBA* arrays (the decoders'
``keep_alpha``) runs the model on the colour composited on ``OutputSettings.background``, as
an opaque input always did, and gets its alpha back afterwards, the colour un-composited, so
PNG and WebP keep the transparency and JPEG composites on the same background. Each output
carries an ICC profile (sRGB, or the input's with ``output_profile="input"``), the standard AI
label (core.outputs.labels: XMP DigitalSourceType, EXIF Software/ImageDescription), optionally the
input's own metadata (core.images.origin) and a Content Credentials manifest
(core.outputs.content_credentials).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from loguru import logger
from PIL import Image

from core.images.colour import SRGB_ICC, ColourIntent, ColourPolicy, from_srgb
from core.images.origin import Origin
from core.outputs.encoding import DEFAULT_QUALITY, OUTPUT_FORMATS, encode
from core.outputs.labels import exif_block, xmp_packet
from core.outputs.provenance import provenance
from core.reasons import Reason
from core.runtime.batcher import map_by_shape
from core.runtime.errors import InferenceError
from core.runtime.samplers import SamplingSettings, SinglePass, sampler_for, seeds_for

if TYPE_CHECKING:
    from core.images.loading import ResizePolicy
    from core.outputs.content_credentials import ContentCredentials
    from core.runtime.engine import Engine

__all__ = [
    "Inference",
    "OutputSettings",
    "SamplingSettings",
    "SinglePass",
    "sampler_for",
]


# format = "same": the input's own format where it is an output format, PNG otherwise.
_SAME_FORMAT = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp"}


@dataclass(frozen=True)
class OutputSettings:
    """What the outputs are made as; recorded in each output's provenance.

    ``fmt`` may be ``"same"`` (:meth:`format_for`). ``label`` and ``embed_profile`` exist for
    the colour benchmark's baseline only: no setting turns the AI label off."""

    size: int | str  # the longer side in px, or "input" (core.network.shapes.INPUT_SIZE)
    resize: ResizePolicy = "fit"
    fmt: str = "png"
    jpeg_quality: int = DEFAULT_QUALITY
    webp_quality: int = DEFAULT_QUALITY
    webp_lossless: bool = False
    colour: ColourPolicy = field(default_factory=ColourPolicy)
    output_profile: Literal["srgb", "input"] = "srgb"
    keep_alpha: bool = True
    copy_metadata: bool = False
    copy_gps: bool = False
    background: tuple[int, int, int] = (255, 255, 255)
    credentials: ContentCredentials | None = field(default=None, compare=False)
    label: bool = True
    embed_profile: bool = True

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> OutputSettings:
        """From a RenderSettings (daemon or ``artd process``): every field it has, the
        defaults for the rest (``background`` is the daemon's only)."""
        get = lambda name, default: getattr(settings, name, default)  # noqa: E731
        credentials = None
        if get("c2pa_cert", None) is not None and get("c2pa_key", None) is not None:
            from core.outputs.content_credentials import load_credentials

            credentials = load_credentials(settings.c2pa_cert, settings.c2pa_key)
        cmyk = get("cmyk_profile", None)
        values = {
            "size": settings.size,
            "resize": settings.resize,
            "fmt": settings.output_format,
            "jpeg_quality": get("jpeg_quality", DEFAULT_QUALITY),
            "webp_quality": get("webp_quality", DEFAULT_QUALITY),
            "webp_lossless": get("webp_lossless", False),
            "colour": ColourPolicy(
                manage=get("colour_management", True),
                intent=get("colour_intent", "relative"),
                cmyk_profile=None if cmyk is None else str(cmyk),
            ),
            "output_profile": get("output_profile", "srgb"),
            "keep_alpha": get("keep_alpha", True),
            "copy_metadata": get("copy_metadata", False),
            "copy_gps": get("copy_gps", False),
            "background": get("background_rgb", (255, 255, 255)),
            "credentials": credentials,
        }
        return cls(**(values | overrides))

    @property
    def intent(self) -> ColourIntent:
        return self.colour.intent

    def format_for(self, origin: Origin | None = None) -> str:
        """The output format for an input of ``origin`` (``fmt``, or "same" resolved)."""
        if self.fmt != "same":
            return self.fmt
        return _SAME_FORMAT.get((origin.format or "") if origin else "", "png")

    @property
    def extension(self) -> str:
        """The extension of every output; ``fmt="same"`` has none (:meth:`format_for`)."""
        return OUTPUT_FORMATS[self.format_for()]

    def recorded(self) -> dict[str, object]:
        """The settings as the provenance and the quarantine sidecars carry them."""
        out: dict[str, object] = {"size": self.size, "resize": self.resize, "format": self.fmt}
        defaults = OutputSettings(self.size)
        for name in ("jpeg_quality", "webp_quality", "webp_lossless", "output_profile"):
            if getattr(self, name) != getattr(defaults, name):
                out[name] = getattr(self, name)
        if self.colour != defaults.colour:
            out["colour"] = {"manage": self.colour.manage, "intent": self.colour.intent}
        return out


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
        bytes are hashed instead. RGBA arrays give RGBA results (module docstring)."""
        if batch and np.ndim(batch[0]) == 3 and np.shape(batch[0])[2] == 4:
            return self._run_with_alpha(batch, sha256s)
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
        meta = provenance(
            self.engine.checkpoint, input_sha256, self.output.recorded(), sampler=self.sampler
        )
        return encode_output(image, meta, self.output, origin)


def encode_output(
    image: Image.Image, meta: dict[str, str], output: OutputSettings, origin: Origin | None = None
) -> bytes:
    """An output's bytes: format, quality, profile, label, copied metadata, credentials."""
    fmt = output.format_for(origin)
    if image.mode == "RGBA" and (fmt == "jpeg" or not output.keep_alpha):
        image = image.info.get("composited") or image.convert("RGB")
    icc = SRGB_ICC if output.embed_profile else None
    if output.output_profile == "input" and origin is not None and origin.icc_profile:
        image, icc = from_srgb(image, origin.icc_profile, output.intent), origin.icc_profile
    copied = origin if output.copy_metadata and origin is not None else None
    kwargs: dict[str, Any] = {"metadata": meta, "icc_profile": icc, "background": output.background}
    if output.label or copied is not None:
        kwargs["xmp"] = xmp_packet(meta, ai_made=output.label, copied=copied)
        if fmt != "png" or copied is not None:
            kwargs["exif"] = exif_block(
                meta, ai_made=output.label, copied=copied, gps=output.copy_gps
            )
    if fmt == "jpeg":
        kwargs["quality"] = output.jpeg_quality
    elif fmt == "webp":
        kwargs.update(quality=output.webp_quality, lossless=output.webp_lossless)
    data = encode(image, fmt, **kwargs)
    if output.credentials is not None:
        data = output.credentials.sign(data, fmt, meta)
    return data


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
    # a JPEG takes the model's own composited result instead (encode_output).
    rgba.info["composited"] = image
    return rgba
