"""Images from noise: a denoise checkpoint's sampler at strength 1 (``artd generate``).

Image ``index`` of a run with ``seed`` gets the noise seed
``core.diffusion.schedule.image_seed("generate:<seed>:<index>", settings)``, so a run repeats
pixel for pixel, and image 3 of a run of 8 is image 3 of a run of 4, whatever the batch
size. The engine's precision, out-of-memory halving and NaN retry apply as for img2img.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from PIL import Image

from core import objectives
from core.diffusion.sampler_settings import SamplerRequest, SamplerSettings
from core.images.pixels import to_tensor
from core.network.model import SIZE_MULTIPLE
from core.outputs.provenance import provenance
from core.runtime.engine import Engine
from core.runtime.errors import InferenceError
from core.runtime.samplers import seeds_for


def generation_settings(
    engine: Engine, request: SamplerRequest | None, guided: bool = False
) -> SamplerSettings:
    """The effective settings of a generation run: ``request`` over the checkpoint's
    recommendation, at strength 1, with a guided checkpoint's guide withheld unless
    ``guided`` (a guide image is given). A checkpoint whose objective cannot generate from
    noise (``Objective.can_generate``: reconstruct, style) raises ValueError."""
    if not objectives.get(engine.objective).can_generate:
        able = " or ".join(n for n in objectives.names() if objectives.get(n).can_generate)
        raise ValueError(
            f"model {engine.version} is a {engine.objective} checkpoint: it maps an image to "
            f"an image and cannot generate from noise; serve a {able} checkpoint"
        )
    given = replace(request or SamplerRequest(), strength=1.0)
    if engine.sampler.takes_guide and not guided:
        given = replace(given, guide=False)
    settings = engine.sampler_settings(given)
    assert settings is not None  # a denoise engine always resolves
    return settings


def label(seed: int, index: int) -> str:
    """What image ``index`` of a run with ``seed`` is made from (its content hash stand-in)."""
    return f"generate:{seed}:{index}"


def generate(
    engine: Engine,
    count: int,
    width: int,
    height: int,
    seed: int,
    request: SamplerRequest | None = None,
    guide: Image.Image | None = None,
) -> list[Image.Image | InferenceError]:
    """``count`` images of ``width`` x ``height`` from noise, in index order; an item that
    fails (out of memory at a single image, NaN even in fp32) is its InferenceError.

    A guided checkpoint's images follow ``guide``'s layout (the image is stretched to the
    size); without one they are made with the guide withheld (``SamplerSettings.guide``
    False, recorded). Other checkpoints refuse a guide image.

    ``request``'s strength is ignored (always 1); its seed, if set, is recorded in the
    settings and hashed into every image's noise seed along with ``seed``. Raises
    ValueError for a reconstruct checkpoint, a count below 1 or a size that is not a
    positive multiple of 8."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or value < SIZE_MULTIPLE:
            raise ValueError(f"{name} must be an integer >= {SIZE_MULTIPLE}, got {value!r}")
        if value % SIZE_MULTIPLE:
            raise ValueError(f"{name} must be a multiple of {SIZE_MULTIPLE}, got {value}")
    if guide is not None and not engine.sampler.takes_guide:
        raise ValueError(
            f"model {engine.version} is a {engine.objective} checkpoint: it takes no guide image"
        )
    settings = generation_settings(engine, request, guided=guide is not None)
    given = SamplerRequest(**settings.to_dict())  # type: ignore[arg-type]
    seeds = seeds_for((label(seed, i) for i in range(count)), settings)
    # At strength 1 only the pixels' shape counts, unless they are the guide's layout.
    pixels = torch.zeros(1, 3, height, width)
    if guide is not None:
        stretched = guide.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
        pixels = to_tensor(stretched).unsqueeze(0)
    results: list[Image.Image | InferenceError] = []
    for start in range(0, count, engine.max_batch):
        part = seeds[start : start + engine.max_batch]
        results.extend(engine.run(pixels.repeat(len(part), 1, 1, 1), part, given))
    return results


def generated_provenance(
    engine: Engine,
    seed: int,
    index: int,
    request: SamplerRequest | None = None,
    settings: dict[str, object] | None = None,
    guided: bool = False,
) -> dict[str, str]:
    """The metadata of image ``index`` of a run with ``seed`` (core.outputs.provenance, with the
    sampler settings and ``artd:source`` = its label; there is no input file to hash).
    ``settings``: the output settings as recorded (e.g. size and format); ``guided``: the
    run had a guide image."""
    return provenance(
        engine.checkpoint,
        "",
        settings or {},
        sampler_settings=generation_settings(engine, request, guided),
        source=label(seed, index),
    )
