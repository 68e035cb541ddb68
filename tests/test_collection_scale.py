"""The art collections' texture scale: ``stroke_period`` (hatch period in output pixels),
``supersample`` (drawn larger, reduced: antialiased) and ``scene_zoom`` (a crop of a larger
scene), through ``art_styles.render`` and ``python -m core.synthetic.procedural``; measured on
real renders and real files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.synthetic import art_styles, procedural
from core.training.data import scan

REPO = Path(__file__).resolve().parents[1]
SEEDS = range(8)

# sha256 of the RGB bytes of render(style, 7, 64), computed from the code before the options
# existed: the defaults must keep drawing exactly these images.
BEFORE = {
    "engraving": "68174fed5dcf79b29a186947716907b8aecc28625fad81b2879a48716220a05e",
    "woodcut": "4253751c4ec688e1ad34b94ed2d29f3af655274578b7a7776e90d14b8c4c1b44",
}


def _sha(image: Image.Image) -> str:
    return hashlib.sha256(np.asarray(image).tobytes()).hexdigest()


def _lum(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) @ np.array([0.3, 0.59, 0.11]) / 255.0


def _gradient_spectrum(lum: np.ndarray, pad: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(radial frequency in cycles/px, mean power of the luminance gradient there): the
    Hann-windowed, zero-padded 2-D FFT power times f^2, which flattens the 1/f^2 of the
    scene's masses and edges so that the hatching's line frequency stands out."""
    h, w = lum.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2((lum - lum.mean()) * window, s=(pad, pad))) ** 2
    freq = np.hypot(np.fft.fftfreq(pad)[:, None], np.fft.fftfreq(pad)[None, :])
    edges = np.arange(1 / 16, 1 / 2.2, 1 / pad)  # periods of 2.2 to 16 px
    bins = np.digitize(freq, edges)
    total = np.bincount(bins.ravel(), (power * freq**2).ravel(), len(edges) + 1)
    count = np.bincount(bins.ravel(), minlength=len(edges) + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    return centres, total[1 : len(edges)] / np.maximum(count[1 : len(edges)], 1)


def hatch_period(images: list[Image.Image]) -> float:
    """The dominant line period (px) of a set of engravings: the peak of their summed,
    normalised gradient spectra, smoothed over about a 64 px image's frequency resolution
    (one image's spectrum is spiky; each engraving draws 0.9 to 1.2 x the nominal period)."""
    freq, summed = None, 0.0
    for image in images:
        freq, spectrum = _gradient_spectrum(_lum(image))
        summed = summed + spectrum / spectrum.sum()
    kernel = np.exp(-0.5 * (np.arange(-12, 13) / 4.0) ** 2)
    smooth = np.convolve(summed, kernel / kernel.sum(), "same")
    return float(1.0 / freq[np.argmax(smooth)])


def nyquist_fraction(image: Image.Image) -> float:
    """The share of the luminance's AC power at frequencies of 0.375 cycles/px and above (the
    top quarter of the band, up to Nyquist at 0.5) on either axis."""
    lum = _lum(image)
    power = np.abs(np.fft.fft2(lum - lum.mean())) ** 2
    fy = np.abs(np.fft.fftfreq(lum.shape[0]))[:, None]
    fx = np.abs(np.fft.fftfreq(lum.shape[1]))[None, :]
    return float(power[np.maximum(fx, fy) >= 0.375].sum() / power.sum())


def edge_fraction(labels: np.ndarray) -> float:
    """Share of pixels with a 4-neighbour of another scene region."""
    e = np.zeros(labels.shape, bool)
    e[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    e[1:, :] |= labels[1:, :] != labels[:-1, :]
    return float(e.mean())


def find_crop(big: np.ndarray, small: np.ndarray) -> tuple[int, int]:
    """(top, left) where ``small`` sits pixel for pixel in ``big``; fails when nowhere."""
    h, w = small.shape[:2]
    room = big[: big.shape[0] - h + 1, : big.shape[1] - w + 1]
    for top, left in zip(*np.nonzero(np.all(room == small[0, 0], axis=-1)), strict=True):
        if np.array_equal(big[top : top + h, left : left + w], small):
            return int(top), int(left)
    raise AssertionError("the image is not a crop of the larger scene")


@pytest.mark.parametrize("style", sorted(BEFORE))
def test_the_defaults_draw_what_they_drew_before(style: str) -> None:
    plain = art_styles.render(style, 7, 64)
    assert _sha(plain) == BEFORE[style]
    explicit = art_styles.render(style, 7, 64, stroke_period=None, supersample=1, scene_zoom=1.0)
    assert explicit.tobytes() == plain.tobytes()
    via_procedural = procedural.render(style, 7, 64, 64, supersample=1, scene_zoom=1.0)
    assert via_procedural.tobytes() == plain.tobytes()


def test_options_are_deterministic_and_change_the_image() -> None:
    options = {"stroke_period": 5.0, "supersample": 3, "scene_zoom": 2.0}
    a = art_styles.render("woodcut", 3, 48, 40, **options)
    assert a.size == (48, 40) and a.mode == "RGB"
    assert a.tobytes() == art_styles.render("woodcut", 3, 48, 40, **options).tobytes()
    assert a.tobytes() != art_styles.render("woodcut", 3, 48, 40).tobytes()
    for style in art_styles.STYLES:  # every style takes every option, any aspect
        image = art_styles.render(style, 1, 40, 24, **options)
        assert image.size == (40, 24) and np.asarray(image).std() > 5


def test_the_stroke_period_is_the_hatch_period_in_output_pixels() -> None:
    def period(size: int = 64, **options: float) -> float:
        images = [art_styles.render("engraving", s, size, **options) for s in range(16)]
        return hatch_period(images)

    six = period(stroke_period=6)
    three = period(stroke_period=3)
    assert 6 * 0.8 <= six <= 6 * 1.2, six
    assert 3 * 0.8 <= three <= 3 * 1.2, three
    assert six > 1.6 * three
    # the same period in output pixels at another size, supersampled, or zoomed into
    assert 6 * 0.8 <= period(size=128, stroke_period=6) <= 6 * 1.2
    assert 6 * 0.8 <= period(stroke_period=6, supersample=3) <= 6 * 1.2
    assert 6 * 0.8 <= period(stroke_period=6, supersample=3, scene_zoom=2) <= 6 * 1.2
    # without it, the old rule: 4.5 * 0.6 = 2.7 px at 64 px, supersampled or not
    assert 2.7 * 0.8 <= period() <= 2.7 * 1.25
    assert 2.7 * 0.8 <= period(supersample=3) <= 2.7 * 1.25


@pytest.mark.parametrize("style", ["engraving", "woodcut"])
def test_supersampling_takes_energy_away_from_nyquist(style: str) -> None:
    def near_nyquist(supersample: int) -> float:
        images = [art_styles.render(style, s, 64, stroke_period=5, supersample=supersample)
                  for s in SEEDS]  # fmt: skip
        return float(np.mean([nyquist_fraction(image) for image in images]))

    assert near_nyquist(3) < 0.8 * near_nyquist(1)


def test_a_zoomed_scene_is_a_crop_of_a_larger_one_with_fewer_region_edges() -> None:
    size, zoom, period = 64, 3, 5.0
    unit = art_styles.texture_unit(size, size, period)
    zoomed, plain = [], []
    for seed in SEEDS:
        image = np.asarray(art_styles.render("engraving", seed, size, stroke_period=period,
                                             scene_zoom=zoom))  # fmt: skip
        big = art_styles.engraving(np.random.default_rng(seed), size * zoom, size * zoom, unit)
        top, left = find_crop(np.asarray(big), image)
        labels = art_styles.scene(np.random.default_rng(seed), size * zoom, size * zoom).labels
        zoomed.append(edge_fraction(labels[top : top + size, left : left + size]))
        plain.append(
            edge_fraction(art_styles.scene(np.random.default_rng(seed), size, size).labels)
        )
    assert np.mean(zoomed) < 0.7 * np.mean(plain), (zoomed, plain)


def test_bad_options_are_refused(tmp_path: Path) -> None:
    for options in ({"stroke_period": 0}, {"stroke_period": -2.0}, {"supersample": 0},
                    {"supersample": 9}, {"supersample": 2.0}, {"scene_zoom": 0.5}):  # fmt: skip
        with pytest.raises(ValueError, match=next(iter(options))):
            art_styles.render("engraving", 0, 32, **options)
    with pytest.raises(ValueError, match="stroke_period applies to the art styles only"):
        procedural.render("plasma", 0, 32, stroke_period=5)
    with pytest.raises(ValueError, match="supersample applies to the art styles only"):
        procedural.write_dataset(tmp_path / "set", 1, 16, styles=("engraving", "cells"),
                                 supersample=2)  # fmt: skip
    assert not (tmp_path / "set").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.synthetic.procedural", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_cli_writes_the_collection_and_its_manifest(tmp_path: Path) -> None:
    out = tmp_path / "set"
    result = run_cli("--out", str(out), "--count", "4", "--size", "64", "--style", "engraving",
                     "--flat", "--format", "png", "--stroke-period", "6", "--supersample", "3",
                     "--scene-zoom", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == [f"engraving-{i:05d}.png" for i in range(4)]
    for i, path in enumerate(pngs):
        drawn = art_styles.render("engraving", i, 64, stroke_period=6, supersample=3,
                                  scene_zoom=2)  # fmt: skip
        with Image.open(path) as image:
            assert image.size == (64, 64) and image.tobytes() == drawn.tobytes()
    manifest = json.loads((out / procedural.MANIFEST).read_text())
    assert manifest == {
        "styles": ["engraving"], "size": 64, "stroke_period": 6.0, "supersample": 3,
        "scene_zoom": 2.0, "seed": 0, "count": 4,
    }  # fmt: skip
    assert procedural.read_manifest(out) == manifest
    assert [p for p in out.iterdir() if p.name.endswith(".tmp")] == []
    # the trainer's scan takes every non-hidden file for an image: the manifest is hidden
    assert scan(out) == [p.name for p in pngs]


def test_the_manifest_is_always_written(tmp_path: Path) -> None:
    procedural.write_dataset(tmp_path, 3, 16, seed=4, fmt="png", styles=("cells", "woodcut"))
    assert procedural.read_manifest(tmp_path) == {
        "styles": ["cells", "woodcut"], "size": 16, "stroke_period": None, "supersample": 1,
        "scene_zoom": 1.0, "seed": 4, "count": 3,
    }  # fmt: skip
    assert all(not p.endswith(".json") for p in scan(tmp_path))


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--style", "engraving", "--stroke-period", "0"], "--stroke-period"),
        (["--style", "engraving", "--stroke-period", "-1"], "--stroke-period"),
        (["--style", "engraving", "--supersample", "0"], "--supersample"),
        (["--style", "engraving", "--supersample", "9"], "--supersample"),
        (["--style", "engraving", "--supersample", "1.5"], "--supersample"),
        (["--style", "engraving", "--scene-zoom", "0.5"], "--scene-zoom"),
        (["--style", "engraving", "--scene-zoom", "9"], "--scene-zoom"),
        (["--style", "plasma", "--stroke-period", "5"], "--stroke-period"),
        (["--style", "engraving,cells", "--supersample", "2"], "--supersample"),
        (["--stroke-period", "5"], "--stroke-period"),  # the default styles are procedural
    ],
)
def test_the_cli_refuses_bad_values_naming_the_flag(
    tmp_path: Path, args: list[str], flag: str
) -> None:
    result = run_cli("--out", str(tmp_path / "x"), "--count", "1", "--size", "16", *args)
    assert result.returncode == 2
    assert flag in result.stderr
    assert not (tmp_path / "x").exists()
