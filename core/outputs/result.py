"""An output file's bytes from a model's result image: format, profile, label, provenance.

Torch-free: the daemon's service encodes what its model workers return
(core.runtime.img2img.Inference.encode is the same, for an engine in this process).
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from core.checkpoint import ModelIdentity
from core.diffusion.sampler_settings import SamplerSettings
from core.images.colour import SRGB_ICC, from_srgb
from core.images.origin import Origin
from core.outputs.encoding import encode
from core.outputs.labels import exif_block, xmp_packet
from core.outputs.provenance import provenance
from core.outputs.settings import OutputSettings


def encode_result(
    image: Image.Image,
    model: ModelIdentity,
    input_sha256: str,
    output: OutputSettings,
    sampler_settings: SamplerSettings | None = None,
    origin: Origin | None = None,
) -> bytes:
    """:meth:`Inference.encode` without the engine: the output of ``image``, computed by
    ``model`` (wherever it ran: a model worker reports its identity) with ``sampler_settings``
    (None for a one-pass checkpoint), with its provenance; ``colour = auto`` is recorded as
    the model's recommendation resolves it (the worker resolved it the same way)."""
    output = output.resolved_palette(model.colour)
    meta = provenance(model, input_sha256, output.recorded(), sampler_settings=sampler_settings)
    return encode_output(image, meta, output, origin)


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
