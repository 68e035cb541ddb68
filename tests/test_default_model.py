"""The shipped model (core/assets/default.safetensors) is the art model its card describes:
a guided checkpoint that turns a real photograph into an engraving-like picture that keeps
the photo's layout, served by `artd process` with its own recommended settings, at its
working size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from skimage import data as photos
from skimage.metrics import structural_similarity
from test_oneshot import artd

import core
from bench.art.style_signature import Signature, set_signature, term_distances
from core.checkpoint import load_checkpoint
from core.synthetic import procedural

CARD = Path(core.__file__).parent / "assets" / "MODEL_CARD.md"


def test_the_shipped_model_is_the_guided_model_of_its_card() -> None:
    meta = load_checkpoint(core.DEFAULT_CHECKPOINT).meta
    card = CARD.read_text(encoding="utf-8")
    assert meta.objective == "guided" and meta.decoder == "upsample-full"
    assert meta.guide is not None and meta.guide["abstraction"] == "luminance"
    assert meta.sampler == {"strength": 0.5, "steps": 12, "eta": 1.0, "working_size": 160}
    assert "working size 160 px" in card.replace("**", "") and "12 steps" in card
    assert meta.dataset_hash and meta.dataset_hash in card


def blurred_luminance(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L").filter(ImageFilter.GaussianBlur(2)), dtype=np.float64)


@pytest.fixture(scope="module")
def engravings() -> Signature:
    """The style signature (bench/art/style_signature.py) of the shipped model's collection."""
    images = [np.asarray(procedural.render("engraving", 9000 + i, 64)) for i in range(24)]
    return set_signature(images, 64)


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_a_dropped_photo_comes_back_as_an_engraving_like_picture(
    name: str, tmp_path: Path, engravings: Signature
) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    Image.fromarray(getattr(photos, name)()).save(inputs / f"{name}.png")
    runs = []
    for run in ("first", "second"):
        result = artd("process", inputs, "--out", out / run, "--size", "128")
        assert result.returncode == 0, result.stderr
        with Image.open(out / run / f"{name}.png.png") as produced:
            produced.load()
        runs.append(np.asarray(produced))
    first, pixels = runs
    assert np.array_equal(first, pixels)  # the same file and settings: the same pixels

    photo = Image.open(inputs / f"{name}.png").convert("RGB").resize(produced.size, Image.LANCZOS)
    difference = np.abs(pixels.astype(np.float64) - np.asarray(photo, dtype=np.float64)).mean()
    kept = structural_similarity(
        blurred_luminance(produced), blurred_luminance(photo), data_range=255
    )
    assert difference > 20, "the photo came back nearly unchanged: not art"
    assert kept > 0.4, "the photo's layout was lost"
    # Its colours move toward the collection's ink and paper.
    before = term_distances(set_signature([np.asarray(photo)], 64), engravings)["colour"]
    after = term_distances(set_signature([pixels], 64), engravings)["colour"]
    assert after < 0.95 * before, (before, after)
