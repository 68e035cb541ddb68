"""The benches' generated input sets: a photo mix and small files, with real texture.

The photo mix: 4032x3024, 1920x1080, 1024x768 and 800x600 JPEGs, a quarter each; the small
set: 256x256 JPEGs. Cached under OUT/data: reruns skip generation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

PHOTO_SIZES = ((4032, 3024), (1920, 1080), (1024, 768), (800, 600))
SMALL_SIZE = (256, 256)
# Photo-like JPEG quality: q90 with per-pixel grain gives about 3 MB at 12 Mpx, like a phone.
QUALITY = 90


def textured(seed: int, width: int, height: int) -> Image.Image:
    """Procedural art (shapes, fields) drawn at a quarter scale, upscaled, plus full-res grain:
    the entropy of a photo (decode cost depends on it) at a fraction of the generation time."""
    try:
        from core.synthetic.procedural import generate
    except ImportError:  # the procedural module is optional for the bench
        generate = None
    rng = np.random.default_rng(seed)
    small = (max(64, width // 4), max(64, height // 4))
    if generate is not None:
        base = generate(seed, *small)
    else:
        ys, xs = np.mgrid[0 : small[1], 0 : small[0]].astype(np.float32)
        f = rng.uniform(0.01, 0.1, 3)
        base = Image.fromarray(
            (127 + 120 * np.sin(np.stack([xs * f[0], ys * f[1], (xs + ys) * f[2]], -1)))
            .clip(0, 255)
            .astype(np.uint8)
        )
    pixels = np.asarray(base.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.integers(-8, 9, size=(height, width, 1), dtype=np.int16)
    return Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8), "RGB")


def _write_set(folder: Path, sizes: list[tuple[int, int]], seed: int) -> list[Path]:
    stamp = folder / ".complete.json"
    wanted = [list(s) for s in sizes]
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return sorted(p for p in folder.iterdir() if p.suffix == ".jpg")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jpg"):
        old.unlink()
    for i, (w, h) in enumerate(sizes):
        textured(seed * 100_003 + i, w, h).save(
            folder / f"img-{i:05d}.jpg", "JPEG", quality=QUALITY
        )
    stamp.write_text(json.dumps(wanted))
    return sorted(p for p in folder.iterdir() if p.suffix == ".jpg")


def photo_mix(out: Path, count: int) -> list[Path]:
    """``count`` photos (a multiple of 4), the four sizes interleaved so any prefix is mixed."""
    sizes = [PHOTO_SIZES[i % 4] for i in range(count)]
    return _write_set(out / "data" / f"photos-{count}", sizes, seed=1)


def small_set(out: Path, count: int) -> list[Path]:
    return _write_set(out / "data" / f"small-{count}", [SMALL_SIZE] * count, seed=2)
