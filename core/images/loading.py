"""Loading one untrusted file at its target size: safe decode, then the resize policy.

Decoding is core.images.decode's (every failure an ImageError); the target size and the
resize are core.images.pixels'. Here the two meet: the decoder is told the target before it
decodes, so a large JPEG is drafted (DCT-scaled) and other formats box-reduced toward it.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from core.images.colour import ColourPolicy
from core.images.decode import DEFAULT_MAX_PIXELS, Source, decode_with_plan
from core.images.origin import Origin
from core.images.pixels import ResizePolicy, target_size


def load_with_origin(
    source: Source,
    size: int | str,
    policy: ResizePolicy = "fit",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
    draft: bool = True,
    colour: ColourPolicy | None = None,
    keep_alpha: bool = False,
) -> tuple[Image.Image, Origin]:
    """Decode and resize to the target of the file's (upright) size, and the input's
    :class:`core.images.origin.Origin` (format, profile, metadata).

    ``draft=False`` gives pixels identical to ``resize(decode(source), size, policy)``;
    ``draft=True`` decodes JPEGs at a reduced scale and box-reduces other formats first
    (same output size, slightly different pixels, several times faster on big files).
    """
    target_size(1, 1, size, policy)  # validate before touching the file
    planned: list[tuple[int, int]] = []

    def plan(width: int, height: int) -> tuple[int, int]:
        planned.append(target_size(width, height, size, policy))
        # Shrink only to twice the target: the final bilinear resize then stays within
        # 1/255 of a full decode (drafting to the target itself was up to 7/255 off).
        return (2 * planned[-1][0], 2 * planned[-1][1])

    img, origin, finish = decode_with_plan(
        source, max_pixels, background, plan if draft else None, colour, keep_alpha
    )
    # The target comes from the header size, so draft/reduce rounding never changes it.
    new_size = planned[0] if planned else target_size(img.width, img.height, size, policy)
    if img.size != new_size:
        img = img.resize(new_size, Image.Resampling.BILINEAR)  # RGBA: premultiplied by PIL
    # Colour is converted at the output size: 4-16x fewer pixels through LittleCMS, and the
    # same result within a level (a bilinear resize is nearly linear in either encoding).
    return (finish(img) if finish else img), origin


def load(
    source: Source, size: int | str, policy: ResizePolicy = "fit", **options: Any
) -> Image.Image:
    """:func:`load_with_origin`'s image alone; ``options`` are its keywords (``max_pixels``,
    ``background``, ``draft``, ``colour``, ``keep_alpha``)."""
    return load_with_origin(source, size, policy, **options)[0]
