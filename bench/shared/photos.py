"""The benches' real photographs: scikit-image's bundled colour photos (nothing downloaded).

Every set of photo names the benches use is defined here, once; each bench picks its set by
name. The order of a set is part of it (rows of a picture, a batch, a cycle through them).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# The art benchmark's photos, and its --quick pair.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")
QUICK_PHOTOS = ("astronaut", "coffee")
# The before/after sheet of the shipped model and the checkpoint A/B: one batch of four.
SHEET_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
# The colour benchmark's mix: two more with colour far from a portrait's.
COLOUR_PHOTOS = (*PHOTOS[:4], "immunohistochemistry", "hubble_deep_field")
# The hot-reload memory study's trickle.
RELOAD_PHOTOS = (*PHOTOS[:4], "cat", "immunohistochemistry")


def photo(name: str) -> np.ndarray:
    """One of scikit-image's bundled colour photographs, HWC uint8."""
    from skimage import data

    if name == "motorcycle":
        return data.stereo_motorcycle()[0]
    image = getattr(data, name)()
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"skimage.data.{name} is not an RGB photograph")
    return image


def square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square, then the product's resize (core.images.pixels) to ``size``."""
    from core.images.pixels import resize

    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = Image.fromarray(rgb[top : top + side, left : left + side])
    return np.asarray(resize(img, size, "stretch").convert("RGB"))
