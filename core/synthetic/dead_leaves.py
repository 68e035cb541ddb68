"""Dead-leaves images: the project's own stand-in for the statistics of photographs.

The dead-leaves model (Matheron 1968; Lee, Mumford and Huang 2001, "Occlusion models for
natural images") stacks opaque discs whose radii follow ``p(r) ~ r^-3``: the result is
scale-invariant, with occluding edges at every scale and a power spectrum close to a photo's.
Achddou, Gousseau and Ladjal (2021, "Synthetic images as a regularity prior for image
restoration neural networks") train denoisers on such images and come close to training on
photographs. artd uses them where its denoiser must behave like one for photographs: at low
noise levels, so that a low strength gives the photo back (``core.objectives.denoise``'s
low-noise prior). No third-party image is involved.

Each image: a palette of 3 to 6 colours; discs drawn front to back until the canvas is
covered, each a palette colour with a little jitter, a linear shading and, for some, a
sinusoidal texture; half the images are then blurred a little (depth of field); drawn at
twice the size and downsampled, as photographs are.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

MAX_DISCS = 20_000  # a canvas not covered by then keeps its background colour


def dead_leaves(rng: np.random.Generator, size: int) -> np.ndarray:
    """One ``size`` x ``size`` dead-leaves image, HWC uint8 RGB, from ``rng``."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size!r}")
    draw = 2 * size
    palette = rng.random((int(rng.integers(3, 7)), 3)) ** rng.uniform(0.6, 1.6)
    # Smallest disc 1-3 output pixels up to 64 px, the same share of the image above.
    r_min = rng.uniform(2.0, 6.0) * max(1.0, size / 64)
    a, b = r_min**-2.0, float(draw) ** -2.0  # inverse CDF of p(r) ~ r^-3 on [r_min, draw]
    canvas = np.empty((draw, draw, 3), np.float32)
    canvas[:] = palette[int(rng.integers(len(palette)))]
    covered = np.zeros((draw, draw), bool)
    ys, xs = np.mgrid[0:draw, 0:draw].astype(np.float32)
    for _ in range(MAX_DISCS):
        r = (a - rng.random() * (a - b)) ** -0.5
        cx, cy = rng.uniform(-r, draw + r, 2)
        x0, x1 = int(max(0, cx - r)), int(min(draw, cx + r + 1))
        y0, y1 = int(max(0, cy - r)), int(min(draw, cy + r + 1))
        if x0 >= x1 or y0 >= y1:
            continue
        dx, dy = xs[y0:y1, x0:x1] - cx, ys[y0:y1, x0:x1] - cy
        mask = (dx * dx + dy * dy <= r * r) & ~covered[y0:y1, x0:x1]
        if not mask.any():
            continue
        colour = np.clip(palette[int(rng.integers(len(palette)))] + rng.normal(0, 0.08, 3), 0, 1)
        slope = rng.normal(0.0, 0.3, 2) / max(r, 1.0)
        shade = 1.0 + slope[0] * dx + slope[1] * dy
        if rng.random() < 0.3:
            freq, angle = rng.uniform(0.2, 1.5), rng.uniform(0.0, np.pi)
            wave = np.sin(freq * (np.cos(angle) * dx + np.sin(angle) * dy))
            shade = shade + rng.uniform(0.02, 0.2) * wave
        patch = canvas[y0:y1, x0:x1]
        patch[mask] = np.clip(colour[None, :] * shade[mask][:, None], 0.0, 1.0)
        covered[y0:y1, x0:x1] |= mask
        if covered.all():
            break
    image = Image.fromarray((canvas * 255 + 0.5).astype(np.uint8))
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 2.0)))
    return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS))


def dead_leaves_batch(seed: int, count: int, size: int) -> np.ndarray:
    """``count`` images (N, size, size, 3) uint8, the same for the same ``seed``."""
    rng = np.random.default_rng(seed)
    return np.stack([dead_leaves(rng, size) for _ in range(count)])
