"""The art benchmark on real files: the style signature on real photographs and procedural
collections, and ``python -m bench.art --quick`` on two tiny denoise models trained here by
the real ``python -m core.train`` (bench.art.recipe's tiny recipe)."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bench.art import cli, denoise_floor, recipe
from bench.art.style_signature import (
    TERMS,
    distance,
    haar_bands,
    image_signature,
    set_signature,
    term_distances,
)
from bench.shared.photos import photo, square
from core.diffusion.schedule import Schedule, step_count

RECIPE = recipe.TINY


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> recipe.Models:
    return recipe.build(RECIPE, tmp_path_factory.mktemp("art-models"))


@pytest.fixture(scope="module")
def collection_sets(models: recipe.Models) -> dict[tuple[str, str], list[np.ndarray]]:
    folders = recipe.collections(RECIPE, models.folder.parent)
    return {key: recipe.load_folder(folder) for key, folder in folders.items()}


@pytest.fixture(scope="module")
def bench_results(models: recipe.Models, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("art-out")
    argv = ["--model-a", str(models.model_a), "--model-b", str(models.model_b), "--quick",
            "--models-root", str(models.folder.parent), "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    return out, json.loads((out / "art-bench.json").read_text())


# -- the signature -------------------------------------------------------------------------


def test_haar_transform_keeps_the_energy_of_a_real_photo() -> None:
    gray = photo("astronaut").mean(axis=2) / 255.0
    bands, residual = haar_bands(gray - gray.mean(), levels=4)
    assert len(bands) == 12
    total = sum(float((b**2).sum()) for b in bands) + float((residual**2).sum())
    assert total == pytest.approx(float(((gray - gray.mean()) ** 2).sum()), rel=1e-9)


def test_each_term_is_normalised() -> None:
    signature = image_signature(photo("coffee"), 64)
    for term in TERMS:
        rows = signature.terms[term]
        assert np.all(rows >= 0)
        np.testing.assert_allclose(rows.sum(axis=1), 1.0)


def test_distance_is_zero_for_the_same_photos_and_positive_between_photos() -> None:
    photos = [square(photo(n), 64) for n in ("astronaut", "chelsea")]
    same = set_signature(photos, 64)
    assert distance(same, set_signature(list(photos), 64)) == 0.0
    one, other = set_signature(photos[:1], 64), set_signature(photos[1:], 64)
    assert 0.0 < distance(one, other) <= 1.0
    assert distance(one, other) == pytest.approx(distance(other, one))


def test_signature_tells_collections_apart_and_a_collection_from_itself(
    collection_sets: dict[tuple[str, str], list[np.ndarray]],
) -> None:
    scale = RECIPE.image_size
    sig = {key: set_signature(images, scale) for key, images in collection_sets.items()}
    within_a = distance(sig[("a", "held-out")], sig[("a", "train")])
    within_b = distance(sig[("b", "held-out")], sig[("b", "train")])
    between = distance(sig[("a", "held-out")], sig[("b", "held-out")])
    assert max(within_a, within_b) < 0.5 * between
    # The texture terms discriminate on their own, not only the palettes.

    def texture(x: tuple[str, str], y: tuple[str, str]) -> float:
        terms = term_distances(sig[x], sig[y])
        return terms["wavelet"] + terms["local_variance"]

    apart = texture(("a", "held-out"), ("b", "held-out"))
    assert apart > 1.5 * texture(("a", "held-out"), ("a", "train"))
    assert apart > 1.5 * texture(("b", "held-out"), ("b", "train"))


# -- the models and the cache --------------------------------------------------------------


def test_the_recipe_trains_once_and_is_cached(models: recipe.Models) -> None:
    stamps = [p.stat().st_mtime_ns for p in (models.model_a, models.model_b)]
    again = recipe.build(RECIPE, models.folder.parent)
    assert (again.model_a, again.model_b) == (models.model_a, models.model_b)
    assert [p.stat().st_mtime_ns for p in (again.model_a, again.model_b)] == stamps
    other = dataclasses.replace(RECIPE, epochs=RECIPE.epochs + 1)
    assert other.digest() != RECIPE.digest()


# -- the benchmark -------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_the_benchmark_writes_its_table_json_and_gallery(bench_results) -> None:
    out, results = bench_results
    text = (out / "art-bench.md").read_text()
    assert "| strength |" in text and "must hold" in text
    assert ("PASS" in text) or ("SHORT" in text)
    gallery = out / "art-gallery.png"
    assert gallery.stat().st_size < 1_500_000
    with Image.open(gallery) as image:
        n_photos, n_strengths = len(results["photos"]), len(results["strengths"])
        cell = RECIPE.image_size * max(1, 128 // RECIPE.image_size)
        assert image.height >= (2 * n_photos + 2) * cell
        assert image.width >= (1 + n_strengths) * cell
    assert {c["check"].split(" ")[0] for c in results["checks"]} >= {
        "movement", "specificity", "blurred-luminance", "strength", "per-step",
    }  # fmt: skip


def test_the_figures_are_finite_and_in_range(bench_results) -> None:
    _, results = bench_results
    assert results["strengths"] == sorted(results["strengths"])
    assert 0.5 in results["strengths"]  # the recommended strength of the tiny recipe
    for row in results["rows"]:
        for w in "ab":
            assert _finite(row[f"movement_{w}"]) and row[f"movement_{w}"] >= 0
            assert -1.0 <= row[f"ssim_{w}"] <= 1.0
            assert 0.0 <= row[f"levels_{w}"] <= 255.0
            assert 0.0 <= row[f"d_{w}_own"] <= 1.0 and 0.0 <= row[f"d_{w}_other"] <= 1.0
    for cost in results["cost"].values():
        assert cost["sampler_ms"] > 0 and cost["floor_ms"] > 0 and _finite(cost["ratio"])
        assert cost["steps"] == step_count(RECIPE.strength, RECIPE.steps)
        assert cost["size"] == RECIPE.image_size
    sig = results["signature"]
    assert sig["a_held_vs_a_train"] < sig["a_held_vs_b_held"]
    assert sig["b_held_vs_b_train"] < sig["a_held_vs_b_held"]


def test_strength_zero_returns_the_photo_and_content_fades_with_strength(bench_results) -> None:
    _, results = bench_results
    rows = {row["strength"]: row for row in results["rows"]}
    for w in "ab":
        assert rows[0.0][f"levels_{w}"] == 0.0
        assert rows[0.0][f"ssim_{w}"] == pytest.approx(1.0)
        assert rows[0.0][f"movement_{w}"] == pytest.approx(1.0)
        assert rows[0.0][f"ssim_{w}"] > rows[1.0][f"ssim_{w}"]
        assert rows[1.0][f"levels_{w}"] > rows[0.0][f"levels_{w}"]


# -- the floor at low strength -------------------------------------------------------------


def test_the_floor_follows_the_noise_the_sampler_adds() -> None:
    """On real photos: with no denoising the error is the Gaussian's mean absolute value,
    about 0.8 sd (less where clipping at 0 and 255 bites); the oracle denoisers do better,
    and every figure grows with strength."""
    schedule = Schedule()
    photos = [square(photo(name), 64) for name in ("astronaut", "coffee")]
    found = denoise_floor.floor(photos, (0.02, 0.05), schedule)
    assert found[0.05]["noise_sd"] == pytest.approx(11.4, abs=0.1)
    for level in found.values():
        assert 0.6 * level["noise_sd"] < level["none"] < 0.82 * level["noise_sd"]
        assert level["nl_means"] < level["none"] and level["tv"] < level["none"]
    for name in ("noise_sd", *denoise_floor.DENOISERS):
        assert found[0.02][name] < found[0.05][name]
    with pytest.raises(ValueError, match="strength in"):
        denoise_floor.floor(photos, (0.0,), schedule)


def test_the_benchmark_reports_the_floor_beside_the_near_zero_check(bench_results) -> None:
    out, results = bench_results
    assert set(results["floor"]) == {"0.05"}  # the quick strengths' one in (0, NEAR_ZERO]
    floor = results["floor"]["0.05"]
    (check,) = [c for c in results["checks"] if c["check"].startswith("strength 0.05") and
                c["check"].endswith(" A")]  # fmt: skip
    assert f"oracle NL-means floor {floor['nl_means']:.2f}" in check["measured"]
    assert "NL-means, oracle" in (out / "art-bench.md").read_text()


def test_the_floor_has_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert denoise_floor.main(["--strengths", "0.05", "--photos", "coffee", "--size", "32"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0.05")]
    sd, none, tv, nl_means = (float(cell) for cell in row.strip("|").split("|")[1:])
    assert sd == 11.4 and nl_means < none and tv < none
