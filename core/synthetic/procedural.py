"""Procedural art: varied, textured RGB images made deterministically from a seed.

The images stand in for an art collection where the internet is not available: tests,
benchmarks and the shipped default model all use them, and anyone can regenerate the exact
same data set from the command that made it (``python -m core.synthetic.procedural --help``).

Each image of the procedural styles (:data:`STYLES`) layers a colour field (gradients, plasma,
Voronoi cells or stripes), shapes drawn in a random palette and grain, so that a
reconstruction network sees edges, flat areas and fine texture, the three things that
separate a good autoencoder from a blurry one. The art styles (:data:`ART_STYLES`: engraving,
brushstrokes, watercolour, pointillism, woodcut; ``core.synthetic.art_styles``) render a scene
in one medium: a collection a denoiser learns a manner from. A data set is one style, or a mix
that cycles through several: ``--style engraving`` or ``--style engraving,woodcut`` (``art`` names
all five art styles, ``procedural`` the four procedural ones, the default).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from core.synthetic import art_styles

STYLES = ("plasma", "cells", "stripes", "gradient")
ART_STYLES = tuple(art_styles.STYLES)
ALL_STYLES = STYLES + ART_STYLES
# Names for groups of styles on the command line.
STYLE_GROUPS = {"procedural": STYLES, "art": ART_STYLES}
FORMATS = {"jpg": ("JPEG", ".jpg"), "png": ("PNG", ".png")}


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """n harmonious colours: hues around a random base, random saturation and value."""
    base = rng.random()
    hues = (base + rng.normal(0.0, 0.18, n)) % 1.0
    sat = rng.uniform(0.35, 1.0, n)
    val = rng.uniform(0.25, 1.0, n)
    return np.stack([_hsv_to_rgb(h, s, v) for h, s, v in zip(hues, sat, val, strict=True)])


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs / max(width, height), ys / max(width, height)


def _blend(pal: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Map t in 0..1 onto the palette, interpolating between neighbouring colours."""
    pos = np.clip(t, 0.0, 1.0) * (len(pal) - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(pal) - 1)
    frac = (pos - lo)[..., None]
    return pal[lo] * (1 - frac) + pal[hi] * frac


def _plasma(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, pal: np.ndarray):
    field = np.zeros_like(xs)
    for _ in range(rng.integers(3, 7)):
        fx, fy = rng.uniform(1, 12, 2)
        phase = rng.uniform(0, 2 * math.pi)
        field += np.sin(fx * xs * 2 * math.pi + fy * ys * 2 * math.pi + phase)
    field = (field - field.min()) / (np.ptp(field) + 1e-6)
    return _blend(pal, field)


def _cells(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, pal: np.ndarray):
    n = int(rng.integers(6, 40))
    centres = rng.random((n, 2)) * [xs.max() + 1e-6, ys.max() + 1e-6]
    dist = (xs[..., None] - centres[:, 0]) ** 2 + (ys[..., None] - centres[:, 1]) ** 2
    nearest = dist.argmin(axis=-1)
    colours = pal[rng.integers(0, len(pal), n)]
    shade = 1.0 - np.sqrt(dist.min(axis=-1))[..., None] * rng.uniform(0.5, 3.0)
    return colours[nearest] * np.clip(shade, 0.3, 1.0)


def _stripes(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, pal: np.ndarray):
    angle = rng.uniform(0, math.pi)
    freq = rng.uniform(3, 30)
    wobble = rng.uniform(0, 0.15) * np.sin(ys * rng.uniform(2, 20) + xs * rng.uniform(2, 20))
    t = (np.cos(angle) * xs + np.sin(angle) * ys + wobble) * freq
    return _blend(pal, (np.sin(t * 2 * math.pi) + 1) / 2)


def _gradient(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, pal: np.ndarray):
    cx, cy = rng.random(2)
    if rng.random() < 0.5:
        t = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2) * rng.uniform(0.8, 2.5)
    else:
        angle = rng.uniform(0, 2 * math.pi)
        t = np.cos(angle) * xs + np.sin(angle) * ys + 0.5
    return _blend(pal, t % 1.0)


_BACKGROUNDS: dict[str, Callable[..., np.ndarray]] = {
    "plasma": _plasma,
    "cells": _cells,
    "stripes": _stripes,
    "gradient": _gradient,
}


def _draw_shapes(rng: np.random.Generator, img: Image.Image, pal: np.ndarray) -> None:
    draw = ImageDraw.Draw(img, "RGBA")
    w, h = img.size
    for _ in range(int(rng.integers(2, 14))):
        colour = (*(pal[rng.integers(0, len(pal))] * 255).astype(int), int(rng.integers(90, 255)))
        x0, y0 = rng.random(2) * [w, h]
        size = rng.uniform(0.05, 0.45) * max(w, h)
        box = [x0 - size / 2, y0 - size / 2, x0 + size / 2, y0 + size / 2]
        kind = rng.integers(0, 4)
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        elif kind == 2:
            points = [tuple(p) for p in rng.random((3, 2)) * [w, h]]
            draw.polygon(points, fill=colour)
        else:
            width = max(1, int(rng.uniform(0.005, 0.03) * max(w, h)))
            points = [tuple(p) for p in rng.random((int(rng.integers(2, 6)), 2)) * [w, h]]
            draw.line(points, fill=colour, width=width)


def generate(seed: int, width: int, height: int | None = None, style: str | None = None):
    """One image (PIL RGB, ``width`` x ``height``) that depends only on its arguments."""
    height = height or width
    rng = np.random.default_rng(seed)
    style = style or STYLES[int(rng.integers(0, len(STYLES)))]
    pal = _palette(rng, int(rng.integers(3, 7)))
    xs, ys = _grid(width, height)
    field = _BACKGROUNDS[style](rng, xs, ys, pal)
    img = Image.fromarray((np.clip(field, 0, 1) * 255).astype(np.uint8), "RGB")
    _draw_shapes(rng, img, pal)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.5))))
    grain = rng.normal(0.0, rng.uniform(2.0, 12.0), (height, width, 1))
    pixels = np.asarray(img, dtype=np.float32) + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def render(style: str, seed: int, width: int, height: int | None = None) -> Image.Image:
    """One image of any style in :data:`ALL_STYLES` (procedural or art)."""
    if style in ART_STYLES:
        return art_styles.render(style, seed, width, height)
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from: {', '.join(ALL_STYLES)}")
    return generate(seed, width, height, style)


def parse_styles(text: str) -> tuple[str, ...]:
    """``engraving`` or ``engraving,woodcut`` or ``art``: the styles a data set cycles
    through; raises ValueError naming the unknown ones."""
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        names.extend(STYLE_GROUPS.get(part, (part,)))
    unknown = [n for n in names if n not in ALL_STYLES]
    if not names or unknown:
        choices = ", ".join((*ALL_STYLES, *STYLE_GROUPS))
        raise ValueError(f"unknown style(s) {unknown or text!r}; choose from: {choices}")
    return tuple(names)


def write_dataset(
    out: Path,
    count: int,
    size: int,
    seed: int = 0,
    *,
    fmt: str = "jpg",
    classes: bool = True,
    vary_aspect: bool = False,
    styles: Sequence[str] = STYLES,
) -> list[Path]:
    """Write ``count`` images into ``out`` (style sub-folders when ``classes``, like the Kaggle
    set) and return their paths. Image ``i`` has style ``styles[i % len(styles)]`` and seed
    ``seed * 1_000_003 + i``."""
    pil_format, ext = FORMATS[fmt]
    out = Path(out)
    paths = []
    for i in range(count):
        image_seed = seed * 1_000_003 + i
        rng = np.random.default_rng(image_seed + 7)
        style = styles[i % len(styles)]
        width = height = size
        if vary_aspect:
            ratio = rng.uniform(0.6, 1.6)
            width, height = (size, max(8, round(size / ratio)))
            if rng.random() < 0.5:
                width, height = height, width
        img = render(style, image_seed, width, height)
        folder = out / style if classes else out
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{style}-{i:05d}{ext}"
        img.save(path, pil_format, **({"quality": 92} if pil_format == "JPEG" else {}))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.synthetic.procedural", description="Write a procedural art data set."
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument("--count", type=int, default=1000, help="number of images")
    parser.add_argument("--size", type=int, default=256, help="longer side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="data set seed")
    parser.add_argument("--format", choices=sorted(FORMATS), default="jpg")
    parser.add_argument("--flat", action="store_true", help="no style sub-folders")
    parser.add_argument("--vary-aspect", action="store_true", help="mix portrait and landscape")
    parser.add_argument(
        "--style",
        default="procedural",
        help="a style or a comma list to cycle through: "
        + ", ".join(ALL_STYLES)
        + "; 'art' = the five art styles, 'procedural' = the four procedural ones (default)",
    )
    args = parser.parse_args(argv)
    try:
        styles = parse_styles(args.style)
    except ValueError as exc:
        parser.error(f"--style: {exc}")
    paths = write_dataset(
        args.out,
        args.count,
        args.size,
        args.seed,
        fmt=args.format,
        classes=not args.flat,
        vary_aspect=args.vary_aspect,
        styles=styles,
    )
    print(f"wrote {len(paths)} images ({', '.join(dict.fromkeys(styles))}) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
