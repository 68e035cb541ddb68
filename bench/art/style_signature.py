"""The art benchmark's style signature: fixed, weight-free, and a distance d between two *sets*
of images.

Every image is first *viewed* (:func:`view`): its shorter side brought to a viewing size,
:data:`VIEW_SIZE` px unless a caller says otherwise, the aspect and the whole picture kept.
Texture is only comparable at one scale: hatching drawn at a 5 px period in a 160 px working
image, brought up to a 512 px output and seen at 128 px, has a 4 px period there, as the same
collection drawn at 160 px and seen at 128 px has. So the art benchmark views photos, outputs
and collections alike, at a size where a picture's marks are still resolved but a person
looking at the whole of it would see them. Then each image is described by three terms, each
a handful of normalised histograms (rows that sum to 1):

``colour``
    Lab histograms (``skimage.color.rgb2lab``): L* in 16 bins over 0..100, a* and b* in 16
    bins over -48..48 (values beyond land in the end bins). Three rows.
``wavelet``
    The image's lightness variance split by scale and orientation: an orthonormal 2-D Haar
    transform (numpy, :func:`haar_bands`) of L*/100 minus its mean, four levels; by
    Parseval the squared coefficients of the 12 detail sub-bands (LH, HL, HH per level) and
    of the coarse residual add up to the total variance, so their shares form a 13-bin
    distribution. One row. (Contrast itself is in the L* histogram.)
``local_variance``
    Histograms of the local standard deviation of L*/100 in 3x3 and 7x7 windows, 16 bins of
    log10 over -3..0 (flat paper, fine hatching and photo texture fall in different bins).
    Two rows.

A set's signature is the mean of its images' rows (each image weighs the same, so a row is
the set's pooled histogram). Between two sets each term's distance is the mean total
variation distance of its rows, ``0.5 * sum |p - q|``, in 0..1; ``d`` is the mean of the
three terms, so it is in 0..1 too, it is a metric on set signatures, and ``d(X, X) == 0``.
Mean signatures rather than an energy or MMD distance between the sets: the benchmark
compares a handful of photos with a collection, where pooled histograms are stable and
per-image pairwise distances mostly measure how different the photos are from each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

TERMS = ("colour", "wavelet", "local_variance")
# The viewing size: every image's shorter side, in pixels, before its signature (module
# docstring).
VIEW_SIZE = 128
BINS = 16
LEVELS = 4
AB_RANGE = 48.0
WINDOWS = (3, 7)
LOG_STD_RANGE = (-3.0, 0.0)


@dataclass(frozen=True)
class Signature:
    """Per term, an array of rows (k, bins), each row summing to 1 (one image or a set's
    mean); ``count`` is how many images it stands for."""

    terms: Mapping[str, np.ndarray]
    count: int = 1


def view(rgb: np.ndarray, size: int = VIEW_SIZE) -> np.ndarray:
    """HWC uint8 -> its shorter side ``size`` px (LANCZOS, the aspect kept, nothing cropped),
    float RGB in 0..1 (unchanged pixels when the shorter side is already ``size``)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"need an HxWx3 image, got shape {rgb.shape}")
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    w, h = img.size
    if min(w, h) != size:
        ratio = size / min(w, h)
        img = img.resize((max(size, round(w * ratio)), max(size, round(h * ratio))),
                         Image.Resampling.LANCZOS)  # fmt: skip
    return np.asarray(img, dtype=np.float64) / 255.0


def haar_bands(gray: np.ndarray, levels: int = LEVELS) -> tuple[list[np.ndarray], np.ndarray]:
    """Orthonormal 2-D Haar transform: ([LH, HL, HH of level 1, then level 2, ...], residual).
    The side is cropped to a multiple of ``2**levels``; sum of squares is preserved."""
    side = 2**levels
    h, w = (gray.shape[0] // side) * side, (gray.shape[1] // side) * side
    if h == 0 or w == 0:
        raise ValueError(f"image {gray.shape} is smaller than {side} px for {levels} levels")
    low = gray[:h, :w]
    bands: list[np.ndarray] = []
    for _ in range(levels):
        a, b = low[0::2, 0::2], low[0::2, 1::2]
        c, d = low[1::2, 0::2], low[1::2, 1::2]
        bands += [(a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2]
        low = (a + b + c + d) / 2
    return bands, low


def _histogram(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    counts, _ = np.histogram(np.clip(values, lo, hi), bins=BINS, range=(lo, hi))
    return counts / max(1, counts.sum())


def _local_std(gray: np.ndarray, window: int) -> np.ndarray:
    views = sliding_window_view(gray, (window, window))
    return views.std(axis=(-2, -1))


def image_signature(rgb: np.ndarray, size: int = VIEW_SIZE) -> Signature:
    """The three terms of one HWC uint8 image viewed at ``size`` (module docstring)."""
    from skimage.color import rgb2lab

    lab = rgb2lab(view(rgb, size))
    lightness = lab[..., 0] / 100.0
    colour = np.stack(
        [_histogram(lab[..., 0], 0.0, 100.0)]
        + [_histogram(lab[..., i], -AB_RANGE, AB_RANGE) for i in (1, 2)]
    )
    bands, residual = haar_bands(lightness - lightness.mean())
    energy = np.array([float((band**2).sum()) for band in bands] + [float((residual**2).sum())])
    wavelet = (energy / energy.sum() if energy.sum() > 0 else np.eye(len(energy))[-1])[None]
    local = np.stack(
        [_histogram(np.log10(_local_std(lightness, k) + 1e-6), *LOG_STD_RANGE) for k in WINDOWS]
    )
    return Signature({"colour": colour, "wavelet": wavelet, "local_variance": local})


def set_signature(images: Iterable[np.ndarray], size: int = VIEW_SIZE) -> Signature:
    """The mean of the images' signatures, each viewed at ``size`` (each weighs the same)."""
    signatures = [image_signature(image, size) for image in images]
    if not signatures:
        raise ValueError("a set signature needs at least one image")
    terms = {t: np.mean([s.terms[t] for s in signatures], axis=0) for t in TERMS}
    return Signature(terms, len(signatures))


def term_distances(x: Signature, y: Signature) -> dict[str, float]:
    """Each term's mean total-variation distance between the two signatures, in 0..1."""
    return {t: float(0.5 * np.abs(x.terms[t] - y.terms[t]).sum(axis=1).mean()) for t in TERMS}


def distance(x: Signature, y: Signature) -> float:
    """d: the mean of :func:`term_distances`, in 0..1; 0 for equal signatures."""
    return float(np.mean(list(term_distances(x, y).values())))
