"""The art benchmark's per-image measures against the photo: content hash, blurred SSIM, levels."""

from __future__ import annotations

import hashlib

import numpy as np


def content_hash(rgb: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest()


def blurred_ssim(output: np.ndarray, reference: np.ndarray) -> float:
    """SSIM of the two images' luminance, each blurred by size/32 px (texture is not
    content): 1 = same layout of light and dark."""
    from skimage.color import rgb2gray
    from skimage.filters import gaussian
    from skimage.metrics import structural_similarity

    sigma = max(1.0, output.shape[0] / 32)
    a, b = (gaussian(rgb2gray(x), sigma=sigma) for x in (output, reference))
    return float(structural_similarity(a, b, data_range=1.0, win_size=7))


def mean_levels(output: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(output.astype(np.int16) - reference.astype(np.int16)).mean())
