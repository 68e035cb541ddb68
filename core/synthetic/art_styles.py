"""Art-like procedural styles: a small art collection drawn by the project's own code.

Every image starts from the same kind of *scene*: a sky and a ground split by a wavy horizon,
a few big lit objects (shaded spheres, boxes, mountains, bushes, a sun) and soft noise, which
gives smooth luminance and colour fields with masses and edges. A style then renders that
scene in one medium, so a denoiser trained on the collection learns to map photo structures
(regions, edges, light and shade) into the medium's marks:

``engraving``
    Ink hatching on cream paper. Line width follows the scene's darkness, a second direction
    cross-hatches the darks (a third the deepest shadows), contours are inked; brown, sepia or
    black ink.
``brushstrokes``
    Oil-painting strokes: broad oriented strokes along a smooth flow field in a boosted
    painterly palette, coarse to fine, with bristle streaks and impasto relief lighting.
``watercolour``
    Translucent washes laid region by region on textured paper: pigment pools at the wash
    edges, shadows are glazed over, granulation speckles the pigment and the paper shows
    through highlights and gaps.
``pointillism``
    Round dots of a few pure colours on a light ground; each dot's colour is drawn near the
    scene colour under it, so the colours mix optically.
``woodcut``
    A relief print: bold black masses and outlines, carved white gouge lines running parallel
    to the shapes' contours, on tinted paper, sometimes over one flat colour block printed
    slightly out of register.

Texture scale. By default the marks' size follows the image's shorter side (a texture unit of
1 px at 160 px, never below 0.6 px), so an engraving's hatching is 2.7 to 3.2 px apart at 64
px: next to the pixel grid, aliased, and a network trained at that size learns a texture of
the pixel period. :func:`render`'s options take the scale out of the image size:

- ``stroke_period``: engraving's nominal hatch period in output pixels, whatever the size
  (each engraving draws 0.9 to 1.2 times it); the other styles' marks (woodcut gouges,
  strokes, dots, washes' edges) scale by the same factor.
- ``supersample``: draw at N times the size, texture unit and contour width included, and
  reduce with a Lanczos filter: lines are antialiased instead of snapped to pixels.
- ``scene_zoom``: each image is a crop of a scene Z times larger: larger objects, masses and
  horizons for the same texture size (of three seeded crop positions the most varied one is
  kept, so few crops are bare paper or sky).

The defaults draw exactly what this module drew before these options existed. Everything is
vectorised numpy plus PIL ``ImageDraw`` for strokes; each style renders a 160x160 image in a
few tens of milliseconds; the cost grows with the drawn size, (supersample * scene_zoom)
squared: a 64 px engraving at supersample 3 and scene zoom 2 is drawn at 384x384, about 50
ms. Output depends only on the seed, the size and the options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw

F32 = np.float32
# Engraving's nominal hatch period is HATCH_PERIOD texture units; the other styles' marks are
# sized in the same unit, so one ``stroke_period`` sets every style's texture scale.
HATCH_PERIOD = 4.5
MAX_SUPERSAMPLE = 8
MAX_SCENE_ZOOM = 8.0
CROP_TRIES = 3  # scene_zoom: seeded crop positions tried, the most varied kept


class Style(Protocol):
    """A style: ``(rng, w, h, u, px)`` -> a ``w`` x ``h`` RGB image. ``u`` is the texture unit
    in pixels (``None``: :func:`_unit`'s rule from the size); ``px`` is how many pixels of this
    image make one pixel of the output it will be reduced to (supersampling), so the marks
    meant to be a pixel or two wide (contours, grain) are ``px`` times wider and the relief and
    edge contrasts keep the slopes they have at the output size."""

    def __call__(
        self, rng: np.random.Generator, w: int, h: int, u: float | None = None, px: int = 1
    ) -> Image.Image: ...


# ---------------------------------------------------------------- shared fields and helpers


def _unit(w: int, h: int) -> float:
    """Texture scale: 1 at 160 px on the shorter side, never below 0.6."""
    return max(0.6, min(w, h) / 160.0)


def _noise(rng: np.random.Generator, w: int, h: int, cells: float) -> np.ndarray:
    """Smooth value noise, about -1..1, with ``cells`` bumps across the longer side."""
    n = max(2, round(cells))
    gw, gh = max(2, round(n * w / max(w, h)) + 2), max(2, round(n * h / max(w, h)) + 2)
    grid = rng.standard_normal((gh, gw)).astype(F32)
    img = Image.fromarray(grid, "F").resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=F32) / 1.2


@lru_cache(maxsize=64)
def _gauss_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) row-normalised Gaussian: blurring one axis is a matrix product."""
    x = np.arange(n, dtype=np.float64)
    k = np.exp(-((x[:, None] - x[None, :]) ** 2) / (2.0 * sigma * sigma))
    k[k < 1e-4] = 0.0
    return (k / k.sum(axis=1, keepdims=True)).astype(F32)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of standard deviation ``sigma`` px over the first two axes."""
    out = a.astype(F32)
    if sigma < 0.3:
        return out
    sigma = round(sigma * 4.0) / 4.0
    kh, kw = _gauss_matrix(a.shape[0], sigma), _gauss_matrix(a.shape[1], sigma)
    if out.ndim == 2:
        return kh @ out @ kw.T
    chw = np.ascontiguousarray(np.moveaxis(out, 2, 0))
    return np.ascontiguousarray(np.moveaxis(kh @ chw @ kw.T, 0, 2))


def _hsv(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV to RGB, inputs in 0..1, output shape (..., 3)."""
    h6 = (np.asarray(h) % 1.0) * 6.0
    k = (np.array([5.0, 3.0, 1.0]) + h6[..., None]) % 6.0
    return v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """n painterly colours: an analogous hue family plus one complementary accent."""
    base = rng.random()
    hues = base + rng.normal(0.0, 0.08, n)
    sat = rng.uniform(0.2, 0.65, n)
    accent = rng.integers(0, n)
    hues[accent], sat[accent] = hues[accent] + 0.5, min(sat[accent], 0.5)
    return _hsv(hues, sat, rng.uniform(0.4, 0.92, n))


def _lines(phase: np.ndarray, cover: np.ndarray, period: float) -> np.ndarray:
    """Antialiased parallel lines: ink 0..1 where the stripe ``phase`` (in periods) is within
    ``cover`` of a line centre, so ``cover`` is the inked fraction of each period."""
    d = np.abs(phase - np.floor(phase) - 0.5) * 2.0
    return np.clip((cover - d) * period * 0.5 + 0.5, 0.0, 1.0) * (cover > 0.02)


def _edges(labels: np.ndarray, px: int = 1) -> np.ndarray:
    """Boolean map of pixels on a boundary between two labels (about ``2 * px`` px wide)."""
    e = np.zeros(labels.shape, bool)
    e[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    e[1:, :] |= labels[1:, :] != labels[:-1, :]
    for _ in range(2 * px - 1):
        e[:, :-1] |= e[:, 1:].copy()
        e[:-1, :] |= e[1:, :].copy()
    return e


def _edge_distance(labels: np.ndarray, cap: int) -> np.ndarray:
    """Chamfer distance (pixels) to the nearest label boundary, capped, at half resolution."""
    small = labels[::2, ::2]
    d = np.where(_edges(small), 0.0, float(cap)).astype(F32)
    for _ in range(cap // 2 + 1):
        for a, b in ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))):
            np.minimum(d[a], d[b] + 1.0, out=d[a])
            np.minimum(d[:, a], d[:, b] + 1.0, out=d[:, a])
            np.minimum(d[a, a], d[b, b] + 1.4, out=d[a, a])
            np.minimum(d[a, b], d[b, a] + 1.4, out=d[a, b])
    h, w = labels.shape
    img = Image.fromarray(d * 2.0, "F").resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=F32)


def _to_image(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), "RGB")


def _paper(rng: np.random.Generator, w: int, h: int, tint: np.ndarray, u: float) -> np.ndarray:
    """Paper colour with a soft fibre texture and a faint vignette."""
    fibre = 0.025 * _noise(rng, w, h, max(w, h) / (3.0 * u)) + 0.02 * _noise(rng, w, h, 4)
    ys, xs = np.mgrid[0:h, 0:w].astype(F32)
    vig = ((xs / w - 0.5) ** 2 + (ys / h - 0.5) ** 2) * 0.12
    return tint[None, None, :] * (1.0 + fibre - vig)[..., None]


# ---------------------------------------------------------------- the scene


@dataclass
class Scene:
    """What every style renders: colour, luminance (0..1, stretched) and regions."""

    rgb: np.ndarray  # (h, w, 3) in 0..1
    lum: np.ndarray  # (h, w) in 0..1
    labels: np.ndarray  # (h, w) int: 0 sky, 1 ground, 2.. objects
    angles: np.ndarray  # per label: a stroke/hatch direction in radians
    colours: np.ndarray  # per label: its base colour


def _shape(
    rng: np.random.Generator,
    kind: str,
    xs: np.ndarray,
    ys: np.ndarray,
    w: int,
    h: int,
    horizon: float,
    light: tuple[float, float],
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One object: (mask, shade in 0..1) over the whole grid."""
    s = min(w, h)
    lx, ly = light
    if kind == "mountain":
        cx, top = rng.uniform(0.1, 0.9) * w, horizon - rng.uniform(0.15, 0.45) * h
        half = rng.uniform(0.25, 0.6) * w
        rise = (horizon - top) * (1.0 - np.abs(xs - cx) / half)
        mask = (ys > horizon - rise + 2.0 * _noise(rng, w, h, 12)) & (ys < horizon + 4)
        side = np.where(xs < cx, -1.0, 1.0) * np.sign(lx + 1e-3)
        return mask, 0.55 + 0.3 * side + 0.1 * _noise(rng, w, h, 8)
    cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.3, 0.85) * h
    rx = rng.uniform(0.1, 0.28) * s * scale
    ry = rx * rng.uniform(0.7, 1.3)
    if kind == "sun":
        cy, rx = rng.uniform(0.08, 0.3) * h, rng.uniform(0.05, 0.1) * s
        ry = rx
    uu, vv = (xs - cx) / rx, (ys - cy) / ry
    r2 = uu * uu + vv * vv
    if kind == "sun":
        return r2 < 1.0, np.full_like(xs, 1.0)
    if kind == "box":
        a = rng.uniform(-0.3, 0.3)
        pu, pv = uu * math.cos(a) + vv * math.sin(a), vv * math.cos(a) - uu * math.sin(a)
        mask = (np.abs(pu) < 1.0) & (np.abs(pv) < rng.uniform(0.8, 1.6))
        face = np.where(pu * np.sign(lx + 1e-3) > rng.uniform(-0.4, 0.4), 0.85, 0.3)
        return mask, face + 0.1 * pv
    nz = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    shade = np.clip(0.25 + 0.75 * (-lx * uu - ly * vv) * 0.6 + 0.55 * nz, 0.05, 1.0)
    if kind == "bush":
        r2 = r2 + 0.45 * _noise(rng, w, h, 10)
        return r2 < 1.0, shade * (0.8 + 0.25 * _noise(rng, w, h, 14))
    return r2 < 1.0, shade


def scene(rng: np.random.Generator, w: int, h: int) -> Scene:
    """A landscape (sky, ground, mountain, sun, objects) or, one time in three, a still life
    (a wall, a table edge, one or two big objects); always lit from one side, soft noise."""
    ys, xs = np.mgrid[0:h, 0:w].astype(F32)
    theta = rng.uniform(0, 2 * math.pi)
    light = (math.cos(theta), math.sin(theta) * 0.6 - 0.4)
    closeup = rng.random() < 0.3  # a still life: a table edge, fewer and bigger objects
    horizon = rng.uniform(0.35, 0.72) * h if not closeup else rng.uniform(0.45, 0.85) * h
    wave = 0.07 * h * _noise(rng, w, 1, 3)[0]
    labels = (ys > horizon + wave[None, :]).astype(np.int32)
    sky = 0.95 - 0.45 * (1.0 - ys / horizon) * rng.uniform(0.3, 1.0)
    ground = 0.65 - 0.35 * (ys - horizon) / (h - horizon + 1) + 0.15 * _noise(rng, w, h, 6)
    shade = np.where(labels == 0, sky, ground)
    kinds = ["mountain"] * int(rng.random() < 0.6) + ["sun"] * int(rng.random() < 0.4)
    others = rng.choice(["sphere", "box", "bush"], size=int(rng.integers(1, 4 - closeup)))
    kinds = [] if closeup else kinds
    for i, kind in enumerate([*kinds, *sorted(others, key=lambda _: rng.random())]):
        mask, sh = _shape(rng, str(kind), xs, ys, w, h, horizon, light, 1.6 if closeup else 1.0)
        labels = np.where(mask, i + 2, labels)
        shade = np.where(mask, sh, shade)
    n = int(labels.max()) + 1
    colours = _palette(rng, n + 2)[:n]
    sky_hue = rng.uniform(0.52, 0.63) if rng.random() < 0.75 else rng.uniform(0.04, 0.14)
    colours[0] = _hsv(np.array(sky_hue), np.array(rng.uniform(0.2, 0.4)), np.array(0.95))
    shade = np.clip(shade + 0.08 * _noise(rng, w, h, 5), 0.0, 1.0)
    rgb = colours[labels] * (0.25 + 0.85 * shade[..., None])
    lum = rgb @ np.array([0.3, 0.59, 0.11])
    lo, hi = np.percentile(lum, [2, 98])
    lum = np.clip((lum - lo) / (hi - lo + 1e-6), 0.0, 1.0).astype(F32)
    angles = rng.uniform(0, math.pi, n)
    return Scene(np.clip(rgb, 0, 1).astype(F32), lum, labels, angles, colours)


# ---------------------------------------------------------------- the styles


def engraving(
    rng: np.random.Generator, w: int, h: int, u: float | None = None, px: int = 1
) -> Image.Image:
    """Ink hatching whose width follows darkness, cross-hatched darks, inked contours."""
    sc, u = scene(rng, w, h), _unit(w, h) if u is None else u
    ys, xs = np.mgrid[0:h, 0:w].astype(F32)
    tone = 1.0 - _blur(sc.lum, 1.2 * u)
    period = 4.5 * u * rng.uniform(0.9, 1.2)
    warp = 0.7 * period * _noise(rng, w, h, 3)
    ink = np.zeros_like(tone)
    for k, (lo, gain, turn) in enumerate(((0.15, 0.85, 0.0), (0.5, 1.1, 1.2), (0.78, 1.5, 0.6))):
        cos, sin = np.cos(sc.angles + turn)[sc.labels], np.sin(sc.angles + turn)[sc.labels]
        phase = (xs * cos + ys * sin + warp * (1 - 0.4 * k)) / period
        swell = 1.0 + 0.2 * _noise(rng, w, h, 12)
        ink = np.maximum(ink, _lines(phase, np.clip((tone - lo) * gain * swell, 0, 0.8), period))
    ink = np.maximum(ink, _edges(sc.labels, px) * 0.9)
    inks = np.array([[0.36, 0.2, 0.1], [0.12, 0.1, 0.09], [0.25, 0.14, 0.1], [0.1, 0.12, 0.2]])
    ink_col = inks[rng.integers(0, len(inks))]
    paper = _paper(rng, w, h, np.array([0.96, 0.92, 0.8]) * rng.uniform(0.96, 1.02), u)
    return _to_image(paper * (1.0 - ink[..., None]) + ink_col * ink[..., None])


def _stroke_paths(
    rng: np.random.Generator, theta: np.ndarray, count: int, length: float, w: int, h: int
) -> np.ndarray:
    """(count, 4, 2) polylines of three segments that follow the flow field ``theta``,
    centred on random points."""
    pts = np.empty((count, 4, 2), F32)
    pts[:, 0] = rng.random((count, 2)) * [w, h]
    step = length / 3.0 * rng.uniform(0.7, 1.3, (count, 1))
    for j in range(1, 4):
        xi = np.clip(pts[:, j - 1, 0].astype(int), 0, w - 1)
        yi = np.clip(pts[:, j - 1, 1].astype(int), 0, h - 1)
        a = theta[yi, xi]
        pts[:, j] = pts[:, j - 1] + step * np.stack([np.cos(a), np.sin(a)], axis=1)
    return pts - (pts[:, 3:4] - pts[:, 0:1]) / 2.0


def brushstrokes(
    rng: np.random.Generator, w: int, h: int, u: float | None = None, px: int = 1
) -> Image.Image:
    """Oriented multicolour strokes along a flow field, coarse to fine, impasto relief."""
    sc, u = scene(rng, w, h), _unit(w, h) if u is None else u
    grey = sc.rgb.mean(axis=2, keepdims=True)
    base = np.clip(grey + (sc.rgb - grey) * 1.2, 0, 1)
    theta = sc.angles[sc.labels] + 1.3 * _noise(rng, w, h, 3)
    ss = 2  # drawn at twice the size, then reduced: antialiased, round-ish stroke ends
    under = _blur(base, 6 * u) * 0.8 + 0.1
    canvas = _to_image(under).resize((w * ss, h * ss), Image.Resampling.BILINEAR)
    height = Image.new("L", (w * ss, h * ss), 100)
    dc, dh = ImageDraw.Draw(canvas), ImageDraw.Draw(height)
    for width, length, density in ((9.0, 26.0, 1.3), (6.0, 16.0, 1.3), (3.5, 9.0, 0.7)):
        width, length = width * u, length * u
        count = int(density * w * h / (width * length))
        pts = _stroke_paths(rng, theta, count, length, w, h)
        xi = np.clip(pts[:, 1, 0].astype(int), 0, w - 1)
        yi = np.clip(pts[:, 1, 1].astype(int), 0, h - 1)
        col = base[yi, xi] * rng.uniform(0.8, 1.2, (count, 1)) + rng.normal(0, 0.05, (count, 3))
        cols = [tuple(c) for c in (np.clip(col, 0, 1) * 255).astype(int).tolist()]
        ridge = rng.integers(40, 120, count).tolist()
        lines = [[tuple(p) for p in stroke] for stroke in (pts * ss).tolist()]
        wide, mid = round(width * ss), round(width * ss * 0.5)
        for line, c, r in zip(lines, cols, ridge, strict=True):
            dc.line(line, fill=c, width=wide)
            dh.line(line, fill=r, width=wide)
            dh.line(line, fill=r + 60, width=mid)
    rgb = np.asarray(canvas.reduce(ss), dtype=F32) / 255.0
    relief = np.asarray(height.reduce(ss), dtype=F32) / 255.0
    gy, gx = np.gradient(_blur(relief, 0.6 * u))
    light = 1.0 - 3.0 * (gx * 0.7 + gy * 0.7) * px * px / u
    return _to_image(rgb * light[..., None])


def watercolour(
    rng: np.random.Generator, w: int, h: int, u: float | None = None, px: int = 1
) -> Image.Image:
    """Translucent region washes, pooled edges, glazed shadows, granulation, bare paper."""
    sc, u = scene(rng, w, h), _unit(w, h) if u is None else u
    paper = _paper(rng, w, h, np.array([0.98, 0.97, 0.93]), u)
    grain = _noise(rng, w, h, max(w, h) / (2.5 * u)) + 0.5 * _noise(rng, w, h, 20)
    density = np.zeros((h, w, 3), F32)
    shade = _blur(sc.lum, 2 * u)
    for k in range(len(sc.colours)):
        region = _blur((sc.labels == k).astype(F32), 2.5 * u)
        absorb = -np.log(np.clip(sc.colours[k] * rng.uniform(0.9, 1.1, 3), 0.08, 0.97))
        for glaze, cut in ((1.0, 2.0), (0.9, rng.uniform(0.3, 0.55))):
            wobble = 0.25 * _noise(rng, w, h, 8)
            soft = np.clip((region + wobble - 0.5) * 3.0 * px / u + 0.5, 0, 1)
            soft *= np.clip((cut - shade - 0.08 * wobble) * 12.0 + 0.5, 0, 1)
            if k == 0 and glaze == 1.0:
                soft *= sc.lum < rng.uniform(0.85, 1.0)
            pool = np.clip(soft - _blur(soft, 3 * u), 0, 1) * 4.0
            amount = 0.2 + 0.3 * (1 - shade) + 0.08 * _noise(rng, w, h, 4)
            amount = soft * amount * (1.0 + pool) * (1.0 + 0.25 * grain) * glaze
            density += amount[..., None] * absorb[None, None, :]
    rgb = paper * np.exp(-density)
    return _to_image(rgb)


SEURAT = np.array(
    [
        [0.12, 0.16, 0.55],  # ultramarine
        [0.3, 0.55, 0.9],  # cobalt
        [0.08, 0.5, 0.3],  # emerald
        [0.55, 0.78, 0.2],  # yellow green
        [0.97, 0.85, 0.2],  # chrome yellow
        [0.96, 0.5, 0.1],  # orange
        [0.85, 0.15, 0.1],  # vermilion
        [0.55, 0.18, 0.5],  # violet
        [0.98, 0.96, 0.9],  # white
        [0.72, 0.84, 0.97],  # pale blue
        [0.97, 0.72, 0.66],  # rose
        [0.98, 0.93, 0.62],  # pale yellow
        [0.1, 0.08, 0.18],  # deep violet-black
    ],
    F32,
)


def pointillism(
    rng: np.random.Generator, w: int, h: int, u: float | None = None, px: int = 1
) -> Image.Image:
    """Round dots of pure colours picked near the scene colour beneath: optical mixing."""
    sc, u = scene(rng, w, h), _unit(w, h) if u is None else u
    grey = sc.rgb.mean(axis=2, keepdims=True)
    target = np.clip(grey + (sc.rgb - grey) * 1.5, 0, 1)
    ss, spacing = 2, 4.6 * u
    canvas = Image.new("RGB", (w * ss, h * ss), (243, 237, 220))
    draw = ImageDraw.Draw(canvas)
    gw, gh = int(w / spacing) + 2, int(h / spacing) + 2
    for density in (1.0, 1.0, 0.5):
        gy, gx = np.mgrid[0:gh, 0:gw].reshape(2, -1).astype(F32)
        keep = rng.random(gx.size) < density
        cx = (gx[keep] + rng.random(keep.sum())) * spacing - spacing
        cy = (gy[keep] + rng.random(keep.sum())) * spacing - spacing
        c = target[np.clip(cy.astype(int), 0, h - 1), np.clip(cx.astype(int), 0, w - 1)]
        c = c + rng.normal(0.0, 0.12, c.shape)
        d2 = ((c[:, None, :] - SEURAT[None]) ** 2).sum(-1)
        p = np.exp(-(d2 - d2.min(1, keepdims=True)) / 0.08)
        cdf = np.cumsum(p / p.sum(1, keepdims=True), 1)
        pick = (cdf < rng.random((len(c), 1))).sum(1).clip(0, len(SEURAT) - 1)
        cols = (SEURAT[pick] * 255).astype(int).tolist()
        rad = (1.9 * u * rng.uniform(0.8, 1.2, len(c)) * ss).tolist()
        for x, y, r, col in zip((cx * ss).tolist(), (cy * ss).tolist(), rad, cols, strict=True):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(col))
    out = np.asarray(canvas.reduce(ss), dtype=F32) / 255.0
    return _to_image(out * (1.0 + 0.04 * _noise(rng, w, h, max(w, h) / (3 * px))[..., None]))


def woodcut(
    rng: np.random.Generator, w: int, h: int, u: float | None = None, px: int = 1
) -> Image.Image:
    """Black masses and outlines, white gouges along contours, tinted paper, a colour block."""
    sc, u = scene(rng, w, h), _unit(w, h) if u is None else u
    tone = 1.0 - _blur(sc.lum, 2.0 * u)
    period = 7.0 * u * rng.uniform(0.9, 1.15)
    dist = _edge_distance(sc.labels, round(60 * u))
    phase = (dist + 0.35 * period * _noise(rng, w, h, 4)) / period
    cover = np.clip((tone - 0.2) * 1.7, 0.0, 0.8)
    cover = np.where(tone > 0.9, 1.0, cover) * (1.0 + 0.15 * _noise(rng, w, h, 10))
    ink = _lines(phase, cover, period)
    ink = np.maximum(ink, np.clip(_blur(_edges(sc.labels, px).astype(F32), u) * 4.0, 0, 1))
    ink *= np.clip(1.0 - 0.25 * (_noise(rng, w, h, max(w, h) / (2 * u)) > 0.9), 0, 1)
    tints = np.array([[0.93, 0.88, 0.76], [0.9, 0.84, 0.7], [0.92, 0.86, 0.84], [0.86, 0.9, 0.88]])
    paper = _paper(rng, w, h, tints[rng.integers(0, len(tints))], u)
    if rng.random() < 0.6:  # one flat colour block, printed a little out of register
        block = np.array([[0.85, 0.3, 0.2], [0.88, 0.65, 0.25], [0.3, 0.55, 0.65]])
        n = np.bincount(sc.labels.ravel(), minlength=len(sc.colours))
        light = np.bincount(sc.labels.ravel(), sc.lum.ravel(), len(sc.colours)) / (n + 1)
        region = np.pad(sc.labels == int(np.argmax(light)), round(2 * u), mode="edge")
        region = region[:h, :w]
        paper = np.where(region[..., None], paper * block[rng.integers(0, len(block))], paper)
    ink_col = np.array([[0.08, 0.07, 0.07], [0.1, 0.1, 0.18]])[rng.integers(0, 2)]
    return _to_image(paper * (1.0 - ink[..., None]) + ink_col * ink[..., None])


STYLES: dict[str, Style] = {
    "engraving": engraving,
    "brushstrokes": brushstrokes,
    "watercolour": watercolour,
    "pointillism": pointillism,
    "woodcut": woodcut,
}


def texture_unit(
    width: int, height: int, stroke_period: float | None = None, supersample: int = 1
) -> float:
    """The texture unit, in pixels of the image a style draws at ``supersample`` x the output
    size: ``stroke_period / HATCH_PERIOD`` (so engraving's nominal hatch period is
    ``stroke_period`` output pixels), or :func:`_unit`'s rule from the output size when it is
    ``None``; times ``supersample``."""
    unit = _unit(width, height) if stroke_period is None else stroke_period / HATCH_PERIOD
    return unit * supersample


def check_options(stroke_period: float | None, supersample: int, scene_zoom: float) -> None:
    """Raise ValueError naming the option that is out of range."""
    if stroke_period is not None and not (math.isfinite(stroke_period) and stroke_period > 0):
        raise ValueError(f"stroke_period must be a number > 0, got {stroke_period!r}")
    if isinstance(supersample, bool) or not isinstance(supersample, int):
        raise ValueError(f"supersample must be an integer, got {supersample!r}")
    if not 1 <= supersample <= MAX_SUPERSAMPLE:
        raise ValueError(f"supersample must be 1..{MAX_SUPERSAMPLE}, got {supersample}")
    if not (math.isfinite(scene_zoom) and 1.0 <= scene_zoom <= MAX_SCENE_ZOOM):
        raise ValueError(f"scene_zoom must be 1..{MAX_SCENE_ZOOM:g}, got {scene_zoom!r}")


def _crop(rng: np.random.Generator, image: Image.Image, w: int, h: int) -> Image.Image:
    """A ``w`` x ``h`` crop of ``image``: of CROP_TRIES seeded positions, the one whose
    luminance varies most, so that few crops of a zoomed scene are bare paper or sky."""
    grey = np.asarray(image.convert("L"), dtype=F32)
    best, best_std = (0, 0), -1.0
    for _ in range(CROP_TRIES):
        left = int(rng.integers(0, image.width - w + 1))
        top = int(rng.integers(0, image.height - h + 1))
        std = float(grey[top : top + h, left : left + w].std())
        if std > best_std:
            best, best_std = (left, top), std
    left, top = best
    return image.crop((left, top, left + w, top + h))


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
    """One RGB image of ``style``, ``width`` x ``height``, that depends only on the arguments.

    ``stroke_period``: engraving's nominal hatch period in output pixels (each engraving draws
    0.9..1.2 x it); the other styles' marks scale by the same factor. ``None``: the texture
    scales with the shorter side (:func:`_unit`). ``supersample``: drawn at that many times
    the size, texture unit included, then reduced with a Lanczos filter (antialiased).
    ``scene_zoom``: the image is a crop, at a seeded position, of a scene that many times
    larger (larger objects and masses; the same texture size in output pixels). The defaults
    draw exactly what this function drew before these options existed."""
    if style not in STYLES:
        raise ValueError(f"unknown art style {style!r}; choose one of: {', '.join(STYLES)}")
    height = height or width
    if width < 8 or height < 8:
        raise ValueError(f"art images need at least 8x8 pixels, got {width}x{height}")
    check_options(stroke_period, supersample, scene_zoom)
    width, height = int(width), int(height)
    rng = np.random.default_rng(seed)
    if stroke_period is None and supersample == 1 and scene_zoom == 1.0:
        image = STYLES[style](rng, width, height)
    else:
        u = texture_unit(width, height, stroke_period, supersample)
        rw, rh = width * supersample, height * supersample
        bw, bh = max(rw, round(rw * scene_zoom)), max(rh, round(rh * scene_zoom))
        image = STYLES[style](rng, bw, bh, u, supersample)
        if (bw, bh) != (rw, rh):
            image = _crop(rng, image, rw, rh)
        if supersample > 1:
            image = image.resize((width, height), Image.Resampling.LANCZOS)
    assert image.size == (width, height) and image.mode == "RGB"
    return image


def contact_sheet(
    seeds: list[int],
    size: int = 160,
    styles: list[str] | None = None,
    *,
    stroke_period: float | None = None,
    supersample: int = 1,
    scene_zoom: float = 1.0,
) -> Image.Image:
    """A grid image: one row per style, one column per seed (for docs and eyeballing); the
    options are :func:`render`'s."""
    styles = styles or list(STYLES)
    sheet = Image.new("RGB", (len(seeds) * (size + 4) + 4, len(styles) * (size + 4) + 4), "white")
    for r, style in enumerate(styles):
        for c, seed in enumerate(seeds):
            image = render(
                style,
                seed,
                size,
                size,
                stroke_period=stroke_period,
                supersample=supersample,
                scene_zoom=scene_zoom,
            )
            sheet.paste(image, (4 + c * (size + 4), 4 + r * (size + 4)))
    return sheet
