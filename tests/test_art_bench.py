"""The art benchmark on real files: the photos at the daemon's output size, the style
signature at its viewing size on real photographs and procedural collections, the Lab chroma
difference, the recipe against ``make default-model``, and ``python -m bench.art --train
--quick`` end to end on two tiny guided models trained here by the real ``python -m
core.train`` (bench.art.recipe's tiny recipe)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter

from bench.art import cli, denoise_floor, recipe
from bench.art.checks import NEAR_ZERO
from bench.art.evaluate import kept
from bench.art.gallery import TILE
from bench.art.inference import OUTPUT_SIZE, Model, at_output_size
from bench.art.metrics import chroma_difference, content_hash
from bench.art.style_signature import (
    TERMS,
    VIEW_SIZE,
    distance,
    haar_bands,
    image_signature,
    set_signature,
    term_distances,
    view,
)
from bench.shared.common import ROOT
from bench.shared.photos import PHOTOS, PORTRAITS, QUICK_PHOTOS, photo, resized, square
from core.diffusion.sampler_settings import SamplerRequest
from core.diffusion.schedule import Schedule, step_count
from core.images.colour import keep_colours
from core.runtime.img2img import Inference, OutputSettings

RECIPE = recipe.TINY


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> recipe.Models:
    return recipe.build(RECIPE, tmp_path_factory.mktemp("art-models"))


@pytest.fixture(scope="module")
def bench_results(models: recipe.Models, tmp_path_factory: pytest.TempPathFactory):
    """``python -m bench.art --train --quick``: the tiny recipe, its models already cached."""
    out = tmp_path_factory.mktemp("art-out")
    argv = ["--train", "--quick", "--models-root", str(models.folder.parent), "--out", str(out)]
    assert cli.main(argv) == 0
    return out, json.loads((out / "art-bench.json").read_text())


# -- the photos ----------------------------------------------------------------------------


def test_the_photos_are_resized_as_the_daemon_resizes_them_at_its_default_size() -> None:
    assert set(PORTRAITS) <= set(PHOTOS) and set(QUICK_PHOTOS) <= set(PHOTOS)
    assert set(PORTRAITS) & set(QUICK_PHOTOS)
    face = photo("astronaut-face")
    assert face.shape == (320, 256, 3)
    np.testing.assert_array_equal(face, photo("astronaut")[:320, 96:352])
    for name in PHOTOS:
        image = at_output_size(photo(name))
        assert max(image.shape[:2]) == OUTPUT_SIZE
        assert image.shape[0] % 8 == 0 and image.shape[1] % 8 == 0


# -- the signature -------------------------------------------------------------------------


def test_haar_transform_keeps_the_energy_of_a_real_photo() -> None:
    gray = photo("astronaut").mean(axis=2) / 255.0
    bands, residual = haar_bands(gray - gray.mean(), levels=4)
    assert len(bands) == 12
    total = sum(float((b**2).sum()) for b in bands) + float((residual**2).sum())
    assert total == pytest.approx(float(((gray - gray.mean()) ** 2).sum()), rel=1e-9)


def test_each_term_is_normalised() -> None:
    signature = image_signature(photo("coffee"))
    for term in TERMS:
        rows = signature.terms[term]
        assert np.all(rows >= 0)
        np.testing.assert_allclose(rows.sum(axis=1), 1.0)


def test_distance_is_zero_for_the_same_photos_and_positive_between_photos() -> None:
    photos = [at_output_size(photo(n)) for n in ("astronaut", "chelsea")]
    same = set_signature(photos)
    assert distance(same, set_signature(list(photos))) == 0.0
    one, other = set_signature(photos[:1]), set_signature(photos[1:])
    assert 0.0 < distance(one, other) <= 1.0
    assert distance(one, other) == pytest.approx(distance(other, one))


def test_every_image_is_viewed_whole_at_the_viewing_size() -> None:
    """The shorter side goes to VIEW_SIZE, the aspect is kept and nothing is cropped, so the
    same picture at 512 px and at 256 px has nearly one signature, which at their own sizes
    it has not (the texture's scale in pixels differs)."""
    large = at_output_size(photo("coffee"))  # 512 x 344
    small = np.asarray(Image.fromarray(large).resize((256, 172), Image.Resampling.LANCZOS))
    seen = view(large)
    assert seen.shape == (VIEW_SIZE, round(512 * VIEW_SIZE / 344), 3)
    as_seen = (seen * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(view(as_seen), as_seen / 255.0)  # already at the size
    viewed = distance(image_signature(large), image_signature(small))
    native = distance(image_signature(large, 344), image_signature(small, 172))
    assert viewed < 0.05 and viewed < 0.5 * native
    with pytest.raises(ValueError, match="HxWx3"):
        view(large[..., 0])


def test_signature_tells_collections_apart_and_a_collection_from_itself(
    tmp_path: Path,
) -> None:
    """Held-out splits at a working size, as the bench draws them: two halves of one
    collection are far nearer than the two collections, by the texture terms alone too."""
    wide = dataclasses.replace(RECIPE, held_out=24)
    sets = {w: recipe.load_folder(recipe.held_out(wide, w, 80, tmp_path)) for w in "ab"}
    assert all(len(images) == 24 and images[0].shape == (80, 80, 3) for images in sets.values())
    sig = {(w, h): set_signature(sets[w][h * 12 : (h + 1) * 12]) for w in "ab" for h in (0, 1)}
    within = max(distance(sig[(w, 0)], sig[(w, 1)]) for w in "ab")
    assert within < 0.5 * distance(sig[("a", 0)], sig[("b", 0)])

    def texture(x: tuple[str, int], y: tuple[str, int]) -> float:
        terms = term_distances(sig[x], sig[y])
        return terms["wavelet"] + terms["local_variance"]

    apart = texture(("a", 0), ("b", 0))
    assert apart > 1.5 * texture(("a", 0), ("a", 1))
    assert apart > 1.5 * texture(("b", 0), ("b", 1))


# -- the chroma difference -----------------------------------------------------------------


def test_chroma_difference_is_small_with_the_photos_colours_kept_and_large_in_grey() -> None:
    """A toned, blurred "output" under the photo's chroma (keep_colours) is within a few Lab
    units of the photo's chroma; the same output as it is, or a grey image, is far off."""
    image = at_output_size(photo("coffee"))
    assert chroma_difference(image, image) == 0.0
    grey = Image.fromarray(image).convert("L").filter(ImageFilter.GaussianBlur(3))
    toned = np.asarray(Image.merge("RGB", [grey.point(lambda v, k=k: v * k)
                                           for k in (1.0, 0.85, 0.6)]))  # fmt: skip
    with_keep = np.asarray(keep_colours(Image.fromarray(toned), image))
    assert chroma_difference(with_keep, image) < 6.0
    assert chroma_difference(toned, image) > 3 * chroma_difference(with_keep, image)
    flat_grey = np.full_like(image, 128)
    assert chroma_difference(flat_grey, image) > 15.0


# -- the models, the recipe and the cache --------------------------------------------------


def _make_commands() -> tuple[list[str], list[str]]:
    """The Makefile's ``default-model`` commands as argument lists (after the module)."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    variables = dict(re.findall(r"^(\w+) \?= (\S+)$", text, re.M))
    text = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m[1], m[0]), text)
    target = text[text.index("\ndefault-model:") :]

    def after(module: str) -> list[str]:
        line = next(line for line in target.splitlines() if f"-m {module} " in line)
        return shlex.split(line.split(f"-m {module} ", 1)[1])

    return after("core.synthetic.procedural"), after("core.train")


def _without(args: list[str], *flags: str) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        else:
            out.append(arg)
    return out


def test_the_bench_recipe_is_the_default_models_recipe(tmp_path: Path) -> None:
    """Model A is `make default-model`'s, flag for flag, and B the same on woodcuts; the
    held-out collection shows the training scenes' scale at the working size."""
    draw, train = _make_commands()
    ours = recipe.BENCH.draw_args("a", "train", tmp_path)
    assert _without(ours, "--out") == _without(draw, "--out")
    assert recipe.BENCH.draw_args("b", "train", tmp_path) == [
        "woodcut" if arg == "engraving" else arg for arg in ours
    ]
    assert _without(recipe.BENCH.train_args(tmp_path, tmp_path)[2:], "--data", "--out") == \
        _without(train, "--data", "--out")  # fmt: skip
    assert recipe.BENCH.held_out_zoom(160) == 1.0 == RECIPE.held_out_zoom(80)
    held = recipe.BENCH.draw_args("a", "held-out", tmp_path, 160)
    assert held[held.index("--size") + 1] == "160" and held[held.index("--seed") + 1] == "2027"


def test_the_recipe_trains_once_and_is_cached(models: recipe.Models) -> None:
    stamps = [p.stat().st_mtime_ns for p in (models.model_a, models.model_b)]
    again = recipe.build(RECIPE, models.folder.parent)
    assert (again.model_a, again.model_b) == (models.model_a, models.model_b)
    assert [p.stat().st_mtime_ns for p in (again.model_a, again.model_b)] == stamps
    other = dataclasses.replace(RECIPE, epochs=RECIPE.epochs + 1)
    assert other.digest() != RECIPE.digest()


def test_the_bench_keeps_colours_as_the_product_does(models: recipe.Models) -> None:
    """kept() on a model's outputs is what Inference gives with colour = keep, and the model
    counts the network's real passes."""
    model = Model(models.model_a)
    photos = [at_output_size(photo("astronaut-face"))]
    hashes = [content_hash(p) for p in photos]
    run = model.run(photos, hashes, 0.5)
    assert run.passes == step_count(0.5, model.recommended.steps) and run.seconds > 0
    keep = Inference(model.engine, OutputSettings(OUTPUT_SIZE, palette="keep"),
                     SamplerRequest(0.5)).run_all(photos, hashes)  # fmt: skip
    np.testing.assert_array_equal(kept(run.images, photos)[0], np.asarray(keep[0]))


# -- the benchmark -------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_the_benchmark_writes_its_tables_json_gallery_and_model_card(bench_results) -> None:
    out, results = bench_results
    text = (out / "art-bench.md").read_text()
    assert "| strength |" in text and "must hold" in text and "passes/image A" in text
    assert ("PASS" in text) or ("SHORT" in text)
    n_strengths = len(results["strengths"])
    rows = [round(h * TILE / max(w, h)) for w, h in results["photo_sizes"]]
    with Image.open(out / "art-gallery.png") as image:  # two rows a photo, then keep's row
        assert image.height >= 2 * sum(rows) + TILE
        assert (1 + n_strengths) * TILE <= image.width <= 2500
    with Image.open(out / "model-card.png") as card:
        assert card.height >= OUTPUT_SIZE * len(results["portraits"])
        assert card.width >= 3 * max(size[0] for size in results["photo_sizes"])
    assert {c["check"].split(" ")[0] for c in results["checks"]} >= {
        "movement", "specificity", "blurred-luminance", "colour", "strength",
    }  # fmt: skip
    assert any("portraits" in c["check"] for c in results["checks"])


def test_the_figures_are_finite_and_in_range(bench_results) -> None:
    _, results = bench_results
    assert results["photos"] == list(QUICK_PHOTOS) and results["portraits"] == ["astronaut-face"]
    assert results["output_size"] == OUTPUT_SIZE and results["view_size"] == VIEW_SIZE
    assert results["working_size"] == 80  # 2.5 x the tiny recipe's 32 px
    assert results["photo_sizes"] == [list(at_output_size(photo(n)).shape[1::-1])
                                      for n in QUICK_PHOTOS]  # fmt: skip
    assert results["strengths"] == sorted(results["strengths"])
    assert 0.5 in results["strengths"]  # the recommended strength of the tiny recipe
    steps = results["recommended"]["a"]["steps"]
    assert steps == RECIPE.steps
    for row in results["rows"]:
        for w in "ab":
            assert _finite(row[f"movement_{w}"]) and row[f"movement_{w}"] >= 0
            for key in ("ssim", "ssim_portraits"):
                assert -1.0 <= row[f"{key}_{w}"] <= 1.0
            for key in ("levels", "levels_keep"):
                assert 0.0 <= row[f"{key}_{w}"] <= 255.0
            assert 0.0 <= row[f"chroma_keep_{w}"] <= row[f"chroma_{w}"] + 1.0
            assert 0.0 <= row[f"d_{w}_own"] <= 1.0 and 0.0 <= row[f"d_{w}_other"] <= 1.0
            assert row[f"passes_{w}"] == step_count(row["strength"], steps)
            assert row[f"seconds_{w}"] > 0
    sig = results["signature"]
    assert max(sig["a_within"], sig["b_within"]) < sig["a_held_vs_b_held"]


def test_content_fades_with_strength_and_keep_keeps_the_colours(bench_results) -> None:
    """Strength 0 takes no step and returns the photo exactly; strength 1
    is further from the photo; with keep the chroma stays near the photo's at every
    strength, far nearer than the model's own colours once it paints."""
    _, results = bench_results
    rows = {row["strength"]: row for row in results["rows"]}
    for w in "ab":
        assert rows[0.0][f"passes_{w}"] == 0 and rows[0.0][f"levels_{w}"] == 0.0
        assert rows[0.0][f"ssim_{w}"] > rows[1.0][f"ssim_{w}"]
        assert rows[1.0][f"levels_{w}"] > rows[0.0][f"levels_{w}"]
        assert rows[0.5][f"chroma_keep_{w}"] < 0.5 * rows[0.5][f"chroma_{w}"]


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


def test_the_floor_at_a_working_size_counts_the_detail_it_gives_up() -> None:
    """Noised at half the size and brought back, the photo comes back less close than noised
    at its own size, denoised or not; with its chroma kept, closer than without."""
    schedule, photos = Schedule(), [resized(photo("coffee"), 128)]
    own = denoise_floor.floor(photos, (0.05,), schedule)[0.05]
    half = denoise_floor.floor(photos, (0.05,), schedule, working=40)[0.05]
    keep = denoise_floor.floor(photos, (0.05,), schedule, working=40, keep=True)[0.05]
    assert half["nl_means"] > own["nl_means"]
    assert keep["nl_means"] < half["nl_means"]


def test_the_benchmark_reports_the_floor_beside_the_near_zero_check(bench_results) -> None:
    out, results = bench_results
    assert set(results["floor"]) == {f"{NEAR_ZERO:g}"}  # the quick strengths' one near zero
    floor = results["floor"][f"{NEAR_ZERO:g}"]
    (check,) = [c for c in results["checks"] if c["check"].startswith(f"strength {NEAR_ZERO:g}")
                and c["check"].endswith(" A")]  # fmt: skip
    assert f"oracle NL-means floor {floor['nl_means']:.2f}" in check["measured"]
    row = next(r for r in results["rows"] if r["strength"] == NEAR_ZERO)
    assert check["pass"] == (row["levels_keep_a"] <= 2 * floor["nl_means"])
    assert "NL-means, oracle" in (out / "art-bench.md").read_text()


def test_the_floor_has_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--strengths", "0.05", "--photos", "coffee", "--size", "64"]
    assert denoise_floor.main(argv) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0.05")]
    sd, none, tv, nl_means = (float(cell) for cell in row.strip("|").split("|")[1:])
    assert sd == 11.4 and nl_means < none and tv < none
