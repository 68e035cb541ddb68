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
all five art styles, ``procedural`` the four procedural ones, the default). The art styles'
texture scale can be fixed in output pixels: ``--stroke-period``, ``--supersample`` and
``--scene-zoom`` (:func:`core.synthetic.art_styles.render`). Every data set folder gets a hidden
manifest, :data:`MANIFEST`, that says how it was drawn (styles, size, those options, seed,
count): training reads the collection's texture scale there.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from core.durable import write_atomic
from core.synthetic import art_styles
from core.synthetic.art_styles import MAX_SCENE_ZOOM, MAX_SUPERSAMPLE

STYLES = ("plasma", "cells", "stripes", "gradient")
ART_STYLES = tuple(art_styles.STYLES)
ALL_STYLES = STYLES + ART_STYLES
# Names for groups of styles on the command line.
STYLE_GROUPS = {"procedural": STYLES, "art": ART_STYLES}
FORMATS = {"jpg": ("JPEG", ".jpg"), "png": ("PNG", ".png")}
# The collection manifest write_dataset leaves next to the images. Hidden: the trainer's scan
# (core.training.data.scan) takes every non-hidden file for an image and would reject it.
MANIFEST = ".collection.json"


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


def render(
    style: str,
    seed: int,
    width: int,
    height: int | None = None,
    *,
    stroke_period: float | None = None,
    supersample: int = 1,
    scene_zoom: float = 1.0,
) -> Image.Image:
    """One image of any style in :data:`ALL_STYLES` (procedural or art). The keyword options
    are :func:`core.synthetic.art_styles.render`'s and apply to the art styles only: a
    procedural style with a non-default one raises ValueError naming it."""
    if style in ART_STYLES:
        return art_styles.render(
            style,
            seed,
            width,
            height,
            stroke_period=stroke_period,
            supersample=supersample,
            scene_zoom=scene_zoom,
        )
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from: {', '.join(ALL_STYLES)}")
    if changed := _changed_options(stroke_period, supersample, scene_zoom):
        raise ValueError(f"{changed[0]} applies to the art styles only, not to {style!r}")
    return generate(seed, width, height, style)


# The art-only options: (keyword, command-line flag, default).
ART_OPTIONS = (
    ("stroke_period", "--stroke-period", None),
    ("supersample", "--supersample", 1),
    ("scene_zoom", "--scene-zoom", 1.0),
)


def _changed_options(stroke_period: float | None, supersample: int, scene_zoom: float) -> list[str]:
    """The art-only options (keyword names) given a value other than their default."""
    values = (stroke_period, supersample, scene_zoom)
    return [name for (name, _, default), v in zip(ART_OPTIONS, values, strict=True) if v != default]


def write_manifest(folder: Path, manifest: dict[str, object]) -> Path:
    """Write ``manifest`` as JSON to :data:`MANIFEST` in ``folder``, atomically (a temporary
    file in the same folder, fsync, ``os.replace``: :func:`core.durable.write_atomic`)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MANIFEST
    write_atomic(path, (json.dumps(manifest, indent=2) + "\n").encode())
    return path


def read_manifest(folder: Path) -> dict[str, object] | None:
    """The collection manifest :func:`write_dataset` left in ``folder``, or None."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


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
    stroke_period: float | None = None,
    supersample: int = 1,
    scene_zoom: float = 1.0,
) -> list[Path]:
    """Write ``count`` images into ``out`` (style sub-folders when ``classes``, like the Kaggle
    set) and return their paths. Image ``i`` has style ``styles[i % len(styles)]`` and seed
    ``seed * 1_000_003 + i``. ``stroke_period``, ``supersample`` and ``scene_zoom`` are
    :func:`render`'s (art styles only). Also writes the manifest :data:`MANIFEST` in ``out``:
    styles, size, those three options, seed and count (hidden, so the trainer's scan skips it).
    """
    pil_format, ext = FORMATS[fmt]
    out = Path(out)
    changed = _changed_options(stroke_period, supersample, scene_zoom)
    if changed and (not_art := [s for s in styles if s not in ART_STYLES]):
        raise ValueError(f"{changed[0]} applies to the art styles only, not to {not_art}")
    art_styles.check_options(stroke_period, supersample, scene_zoom)
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
        img = render(
            style,
            image_seed,
            width,
            height,
            stroke_period=stroke_period,
            supersample=supersample,
            scene_zoom=scene_zoom,
        )
        folder = out / style if classes else out
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{style}-{i:05d}{ext}"
        img.save(path, pil_format, **({"quality": 92} if pil_format == "JPEG" else {}))
        paths.append(path)
    manifest: dict[str, object] = {
        "styles": list(styles),
        "size": size,
        "stroke_period": stroke_period,
        "supersample": supersample,
        "scene_zoom": scene_zoom,
        "seed": seed,
        "count": count,
    }
    write_manifest(out, manifest)
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
    parser.add_argument(
        "--stroke-period",
        type=float,
        default=None,
        metavar="P",
        help="art styles: engraving's hatch period in output pixels (> 0); the other styles' "
        "texture scales alike (default: it grows with the image's shorter side)",
    )
    parser.add_argument(
        "--supersample",
        type=int,
        default=1,
        metavar="N",
        help=f"art styles: draw at N x the size and reduce, antialiased (1..{MAX_SUPERSAMPLE})",
    )
    parser.add_argument(
        "--scene-zoom",
        type=float,
        default=1.0,
        metavar="Z",
        help="art styles: each image is a crop of a scene Z x larger, so objects are larger "
        f"and the texture keeps its size (1..{MAX_SCENE_ZOOM:g})",
    )
    args = parser.parse_args(argv)
    try:
        styles = parse_styles(args.style)
    except ValueError as exc:
        parser.error(f"--style: {exc}")
    period, n, zoom = args.stroke_period, args.supersample, args.scene_zoom
    if period is not None and not (math.isfinite(period) and period > 0):
        parser.error(f"--stroke-period: must be a number > 0, got {period:g}")
    if not 1 <= n <= MAX_SUPERSAMPLE:
        parser.error(f"--supersample: must be an integer 1..{MAX_SUPERSAMPLE}, got {n}")
    if not (math.isfinite(zoom) and 1.0 <= zoom <= MAX_SCENE_ZOOM):
        parser.error(f"--scene-zoom: must be 1..{MAX_SCENE_ZOOM:g}, got {zoom:g}")
    not_art = [s for s in dict.fromkeys(styles) if s not in ART_STYLES]
    for name, flag, _ in ART_OPTIONS:
        if not_art and name in _changed_options(period, n, zoom):
            parser.error(f"{flag} applies to the art styles only, not to {', '.join(not_art)}")
    paths = write_dataset(
        args.out,
        args.count,
        args.size,
        args.seed,
        fmt=args.format,
        classes=not args.flat,
        vary_aspect=args.vary_aspect,
        styles=styles,
        stroke_period=period,
        supersample=n,
        scene_zoom=zoom,
    )
    print(f"wrote {len(paths)} images ({', '.join(dict.fromkeys(styles))}) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
