"""The art styles: deterministic, any size, and each recognisably its own medium."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.synthetic import art_styles
from core.synthetic.art_styles import STYLES, contact_sheet, render

NAMES = list(STYLES)


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float64) / 255.0


def _detail_map(a: np.ndarray) -> np.ndarray:
    """Absolute difference from the 3x3 box average: fine, high-contrast texture."""
    pad = np.pad(a, 1, mode="edge")
    box = sum(pad[i : i + a.shape[0], j : j + a.shape[1]] for i in range(3) for j in range(3))
    return np.abs(a - box / 9.0)


def _local_detail(a: np.ndarray) -> float:
    return float(_detail_map(a).mean())


def _features(img: Image.Image) -> np.ndarray:
    rgb = _pixels(img)
    lum = rgb @ np.array([0.3, 0.59, 0.11])
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    flat = rgb.reshape(-1, 3) - rgb.reshape(-1, 3).mean(axis=0)
    eig = np.linalg.eigvalsh(flat.T @ flat)
    lum_detail, chroma_detail = _detail_map(lum), _detail_map(chroma)
    return np.array(
        [
            lum.mean(),
            lum.std(),
            chroma.mean(),
            lum_detail.mean(),  # 3: line work and dots are high, washes low
            chroma_detail.mean(),  # 4: dots of different colours side by side
            eig[-1] / eig.sum(),  # 5: 1.0 when every colour lies on one line (ink on paper)
            (lum < 0.25).mean(),  # 6: ink masses
            ((lum_detail < 0.01) & (chroma_detail < 0.01)).mean(),  # 7: flat paper or colour
        ]
    )


@pytest.mark.parametrize("style", NAMES)
def test_same_seed_same_bytes(style: str) -> None:
    assert render(style, 11, 80, 72).tobytes() == render(style, 11, 80, 72).tobytes()


@pytest.mark.parametrize("style", NAMES)
def test_different_seeds_differ(style: str) -> None:
    a, b = _pixels(render(style, 1, 80, 80)), _pixels(render(style, 2, 80, 80))
    assert np.abs(a - b).mean() > 0.03


@pytest.mark.parametrize("style", NAMES)
@pytest.mark.parametrize("size", [(97, 131), (64, 64), (160, 240), (131, 97), (8, 9)])
def test_any_size_gives_rgb_of_that_size(style: str, size: tuple[int, int]) -> None:
    img = render(style, 5, *size)
    assert img.mode == "RGB" and img.size == size
    assert np.ptp(_pixels(img)) > 0.1  # not a blank image


def test_height_defaults_to_width() -> None:
    assert render("woodcut", 3, 50).size == (50, 50)


def test_unknown_style_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown art style 'cubism'") as info:
        render("cubism", 0, 64, 64)
    for name in NAMES:
        assert name in str(info.value)


def test_too_small_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 8x8"):
        render("engraving", 0, 4, 64)


def test_styles_plug_in_as_rng_callables() -> None:
    for name, fn in STYLES.items():
        img = fn(np.random.default_rng(4), 48, 40)
        assert img.size == (48, 40) and img.mode == "RGB"
        assert img.tobytes() == render(name, 4, 48, 40).tobytes()


def test_a_nearest_neighbour_on_simple_statistics_tells_the_styles_apart() -> None:
    known = [(s, _features(render(s, i, 96, 96))) for s in NAMES for i in range(10)]
    table = np.array([f for _, f in known])
    mean, scale = table.mean(axis=0), table.std(axis=0) + 1e-9
    table = (table - mean) / scale
    right = total = 0
    for s in NAMES:
        for seed in range(100, 108):
            z = (_features(render(s, seed, 96, 96)) - mean) / scale
            guess = known[int(np.argmin(((table - z) ** 2).sum(axis=1)))][0]
            right += guess == s
            total += 1
    assert right / total >= 0.85, f"{right}/{total}"


def test_each_style_has_its_medium_signature() -> None:
    feats = {s: np.array([_features(render(s, i, 96, 96)) for i in range(4)]) for s in NAMES}
    mean = {s: f.mean(axis=0) for s, f in feats.items()}
    # indices: see _features
    # engraving: ink on paper, so its colours lie on one line, with fine high-contrast lines
    assert mean["engraving"][5] > 0.95
    assert mean["engraving"][3] > mean["watercolour"][3] * 2
    # woodcut: big black masses
    assert mean["woodcut"][6] > max(mean[s][6] for s in NAMES if s != "woodcut")
    # pointillism: many small dots of different pure colours, so chroma changes pixel to pixel
    assert mean["pointillism"][4] > max(mean[s][4] for s in NAMES if s != "pointillism")
    # watercolour: soft washes, the smoothest of the five
    assert mean["watercolour"][3] < min(mean[s][3] for s in NAMES if s != "watercolour")


def test_texture_is_a_few_pixels_wide_not_pixel_noise() -> None:
    """Downsampling by two keeps most of the texture's contrast (1 px noise would vanish)."""
    for style in NAMES:
        img = render(style, 9, 128, 128)
        lum = _pixels(img) @ np.array([0.3, 0.59, 0.11])
        half = _pixels(img.resize((64, 64), Image.Resampling.BOX)) @ np.array([0.3, 0.59, 0.11])
        assert _local_detail(half) > 0.5 * _local_detail(lum), style


def test_contact_sheet_is_a_grid() -> None:
    sheet = contact_sheet([0, 1], size=32, styles=["engraving", "woodcut"])
    assert sheet.size == (2 * 36 + 4, 2 * 36 + 4)


def test_scene_is_shared_and_has_regions() -> None:
    sc = art_styles.scene(np.random.default_rng(0), 70, 50)
    assert sc.rgb.shape == (50, 70, 3) and sc.lum.shape == (50, 70)
    assert sc.lum.min() >= 0.0 and sc.lum.max() <= 1.0
    assert set(np.unique(sc.labels)) >= {0, 1}
    assert len(sc.angles) == len(sc.colours) == sc.labels.max() + 1
