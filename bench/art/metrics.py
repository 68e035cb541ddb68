"""The art benchmark's per-image measures against the photo: content hash, blurred SSIM,
levels and chroma difference. Each takes two HWC uint8 images of one size."""

from __future__ import annotations

import hashlib

import numpy as np


def content_hash(rgb: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest()


def blurred_ssim(output: np.ndarray, reference: np.ndarray) -> float:
    """SSIM of the two images' luminance, each blurred by 1/32 of the shorter side (texture
    is not content): 1 = same layout of light and dark."""
    from skimage.color import rgb2gray
    from skimage.filters import gaussian
    from skimage.metrics import structural_similarity

    sigma = max(1.0, min(output.shape[:2]) / 32)
    a, b = (gaussian(rgb2gray(x), sigma=sigma) for x in (output, reference))
    return float(structural_similarity(a, b, data_range=1.0, win_size=7))


def mean_levels(output: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute difference, in 0..255 levels."""
    return float(np.abs(output.astype(np.int16) - reference.astype(np.int16)).mean())


def chroma_difference(output: np.ndarray, reference: np.ndarray) -> float:
    """Mean over pixels of the CIE Lab chroma difference ``sqrt(da*^2 + db*^2)``
    (``skimage.color.rgb2lab``, D65): 0 = the same hues and saturations, whatever the
    lightness; a just noticeable difference is about 2.3."""
    from skimage.color import rgb2lab

    a, b = rgb2lab(output), rgb2lab(reference)
    return float(np.hypot(a[..., 1] - b[..., 1], a[..., 2] - b[..., 2]).mean())
