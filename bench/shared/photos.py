"""The benches' real photographs: scikit-image's bundled colour photos (nothing downloaded).

Every set of photo names the benches use is defined here, once; each bench picks its set by
name. The order of a set is part of it (rows of a picture, a batch, a cycle through them).
A name is a ``skimage.data`` function, or one of :data:`CROPS`, a part of one of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from core.images.pixels import ResizePolicy

# Named parts of a photograph: name -> (photo, (top, bottom, left, right) in its pixels).
# astronaut-face: the astronaut's face, helmet ring and shoulders, 256 x 320 (portrait).
CROPS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "astronaut-face": ("astronaut", (0, 320, 96, 352)),
}
# The art benchmark's photos, its portraits among them, and its --quick pair. skimage.data
# has one person in colour (astronaut; camera and lfw_subset are grey), so the second
# portrait is a tighter crop of her.
PHOTOS = ("astronaut", "astronaut-face", "chelsea", "coffee", "rocket", "motorcycle")
PORTRAITS = ("astronaut", "astronaut-face")
QUICK_PHOTOS = ("astronaut-face", "coffee")
# The before/after sheet of the shipped model and the checkpoint A/B: one batch of four.
SHEET_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
# The colour benchmark's mix: two more with colour far from a portrait's.
COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry",
                 "hubble_deep_field")  # fmt: skip
# The hot-reload memory study's trickle.
RELOAD_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry")


def photo(name: str) -> np.ndarray:
    """One of scikit-image's bundled colour photographs, or a part of one (:data:`CROPS`),
    HWC uint8."""
    from skimage import data

    if name in CROPS:
        whole, (top, bottom, left, right) = CROPS[name]
        return np.ascontiguousarray(photo(whole)[top:bottom, left:right])
    if name == "motorcycle":
        return data.stereo_motorcycle()[0]
    image = getattr(data, name)()
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"skimage.data.{name} is not an RGB photograph")
    return image


def square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square, then the product's resize (core.images.pixels) to ``size``."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return resized(rgb[top : top + side, left : left + side], size, "stretch")


def resized(rgb: np.ndarray, size: int, policy: ResizePolicy = "fit") -> np.ndarray:
    """The product's resize (core.images.pixels.resize, what the daemon does to a decoded
    input) to ``size`` under ``policy``: "fit", the longer side ``size``, or "stretch"."""
    from core.images.pixels import resize

    return np.asarray(resize(Image.fromarray(rgb), size, policy).convert("RGB"))
