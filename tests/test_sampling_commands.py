"""Sampler settings through the commands: ``artd process``, ``artd generate`` and the
settings loaders (flags, ``ARTD_*``, TOML), with real checkpoint files and real
subprocesses; a tiny denoise checkpoint with few steps on 32-64 px images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import seeded_model, textured_image
from PIL import Image
from test_oneshot import artd

from core.checkpoint import CheckpointMeta, save_checkpoint
from core.config import SettingsError, load_settings, settings_from_flags
from core.diffusion.schedule import Schedule
from core.outputs.encoding import read_metadata
from daemon.settings import DaemonSettings, GenerateSettings, ProcessSettings

RECOMMENDED = {"strength": 0.5, "steps": 4, "eta": 1.0}


def save_denoise_checkpoint(path: Path, seed: int = 0) -> Path:
    """A denoise checkpoint of the post's network, recommending 4 steps at strength 0.5."""
    meta = CheckpointMeta(
        objective="denoise",
        diffusion=Schedule().to_dict(),
        normalization={"mean": [0.5] * 3, "std": [0.5] * 3},
        sampler=dict(RECOMMENDED),
        epoch=2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, seeded_model(seed).state_dict(), meta)
    return path


@pytest.fixture(scope="module")
def denoise_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_denoise_checkpoint(tmp_path_factory.mktemp("denoise") / "denoise.safetensors")


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def metadata(path: Path) -> dict[str, str]:
    return read_metadata(path.read_bytes())


def sampler_of(path: Path) -> dict[str, object]:
    return json.loads(metadata(path)["artd:sampler"])


# --- artd process --------------------------------------------------------------------------


def test_process_repeats_exactly_and_a_seed_rerolls(
    denoise_checkpoint: Path, tmp_path: Path
) -> None:
    photo = tmp_path / "in" / "photo.png"
    photo.parent.mkdir()
    textured_image(64, 48, seed=3).save(photo)
    common = ("--checkpoint", denoise_checkpoint, "--device", "cpu", "--size", "64")
    runs = {}
    for name, extra in (("a", ()), ("b", ()), ("seeded", ("--seed", "7"))):
        out = tmp_path / name
        done = artd("process", photo, "--out", out, *common, "--strength", "0.75", *extra)
        assert done.returncode == 0, done.stderr
        runs[name] = tmp_path / name / "photo.png.png"
    first, again, seeded = (pixels(runs[n]) for n in ("a", "b", "seeded"))
    assert first.shape == (48, 64, 3)
    assert np.array_equal(first, again), "the same file and settings must repeat exactly"
    assert not np.array_equal(first, seeded), "another seed must give another output"
    # The provenance says how each was made: the settings given over the model's own.
    assert sampler_of(runs["a"]) == {"strength": 0.75, "steps": 4, "eta": 1.0, "seed": None}
    assert sampler_of(runs["seeded"])["seed"] == 7
    meta = metadata(runs["a"])
    assert meta["artd:objective"] == "denoise"
    assert meta["artd:input_sha256"] == metadata(runs["seeded"])["artd:input_sha256"]


def test_process_refuses_a_bad_strength_naming_it(denoise_checkpoint: Path, tmp_path: Path) -> None:
    photo = tmp_path / "p.png"
    textured_image(32, 32).save(photo)
    done = artd("process", photo, "--out", tmp_path / "out", "--strength", "1.5")
    assert done.returncode == 1
    assert "strength (--strength)" in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_reconstruct_checkpoint_ignores_the_sampler_and_says_so(
    pixel_checkpoint: Path, tmp_path: Path
) -> None:
    photo = tmp_path / "p.png"
    textured_image(64, 48).save(photo)
    common = ("--checkpoint", pixel_checkpoint, "--device", "cpu", "--precision", "fp32")
    plain = artd("process", photo, "--out", tmp_path / "plain", *common)
    asked = artd("process", photo, "--out", tmp_path / "asked", *common, "--strength", "0.2")
    assert plain.returncode == asked.returncode == 0, asked.stderr
    assert "ignoring the sampler settings {'strength': 0.2}" in asked.stderr
    assert "ignoring" not in plain.stderr
    ours, theirs = tmp_path / "plain" / "p.png.png", tmp_path / "asked" / "p.png.png"
    assert np.array_equal(pixels(ours), pixels(theirs))
    assert "artd:sampler" not in metadata(theirs)
    assert metadata(theirs)["artd:objective"] == "reconstruct"


# --- artd generate -------------------------------------------------------------------------


def test_generate_writes_images_with_provenance_and_never_overwrites(
    denoise_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "gen"
    args = ("generate", "--count", "3", "--size", "32x24", "--out", out, "--seed", "11")
    model = ("--checkpoint", denoise_checkpoint, "--device", "cpu", "--steps", "2")
    done = artd(*args, *model)
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["11-0000.png", "11-0001.png", "11-0002.png"]
    assert done.stdout.split() == [str(out / name) for name in names]
    images = [pixels(out / name) for name in names]
    for index, (name, image) in enumerate(zip(names, images, strict=True)):
        assert image.shape == (24, 32, 3)
        meta = metadata(out / name)
        assert meta["ai_generated"] == "true"
        assert meta["artd:source"] == f"generate:11:{index}"
        assert json.loads(meta["artd:sampler"]) == {
            "strength": 1.0,
            "steps": 2,
            "eta": 1.0,
            "seed": None,
        }
        assert json.loads(meta["artd:settings"]) == {"width": 32, "height": 24, "format": "png"}
    assert not np.array_equal(images[0], images[1])
    before = {name: (out / name).read_bytes() for name in names}
    again = artd(*args, *model)
    assert again.returncode == 1
    assert "already exists" in again.stderr and "11-0000.png" in again.stderr
    assert {name: (out / name).read_bytes() for name in names} == before


def test_generate_picks_and_logs_a_seed_that_repeats_the_run(
    denoise_checkpoint: Path, tmp_path: Path
) -> None:
    model = ("--checkpoint", denoise_checkpoint, "--device", "cpu", "--steps", "2")
    first = artd("generate", "--size", "16x16", "--out", tmp_path / "a", *model)
    assert first.returncode == 0, first.stderr
    [made] = list((tmp_path / "a").iterdir())
    seed = made.name.split("-")[0]
    assert f"--seed {seed} repeats this run" in first.stderr
    again = artd("generate", "--size", "16x16", "--out", tmp_path / "b", *model, "--seed", seed)
    assert again.returncode == 0, again.stderr
    repeat = tmp_path / "b" / made.name
    assert metadata(repeat)["artd:source"] == metadata(made)["artd:source"]
    assert np.array_equal(pixels(repeat), pixels(made))


def test_generate_refuses_a_reconstruct_checkpoint(pixel_checkpoint: Path, tmp_path: Path) -> None:
    done = artd(
        "generate", "--count", "2", "--size", "32x24", "--out", tmp_path / "out",
        "--checkpoint", pixel_checkpoint,
    )  # fmt: skip
    assert done.returncode == 1
    assert "reconstruct checkpoint" in done.stderr
    assert "cannot generate from noise" in done.stderr
    assert not (tmp_path / "out").exists()


# --- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("strength", "-0.1"),
        ("strength", "nan"),
        ("steps", "0"),
        ("steps", "1001"),
        ("steps", "2.5"),
        ("eta", "1.01"),
        ("seed", "-1"),
        ("seed", "lucky"),
    ],
)
def test_bad_sampler_settings_name_the_setting(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=rf"{name} \(--{name}\)"):
        settings_from_flags(ProcessSettings, {name: value})
    with pytest.raises(SettingsError, match=rf"{name} \(--{name}\)"):
        settings_from_flags(GenerateSettings, {name: value})


def test_sampler_settings_from_env_toml_and_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "artd.toml"
    config.write_text("steps = 12\neta = 0.0\n")
    monkeypatch.setenv("ARTD_STRENGTH", "0.35")
    settings = load_settings(DaemonSettings, {"seed": "9"}, config)
    assert (settings.strength, settings.steps, settings.eta, settings.seed) == (0.35, 12, 0.0, 9)
    request = settings.sampler_request()
    assert request.given() == {"strength": 0.35, "steps": 12, "eta": 0.0, "seed": 9}
    monkeypatch.setenv("ARTD_STRENGTH", "2")
    with pytest.raises(SettingsError, match="ARTD_STRENGTH"):
        load_settings(DaemonSettings, {})
    # Unset: every field left to the checkpoint's recommendation.
    assert not settings_from_flags(ProcessSettings, {}).sampler_request().is_set


@pytest.mark.parametrize("size", ["32", "32x", "x24", "30x24", "32x20x8", "0x8", "8192x8"])
def test_generate_size_must_be_width_x_height_in_multiples_of_8(size: str) -> None:
    with pytest.raises(SettingsError, match=r"size \(--size\)"):
        settings_from_flags(GenerateSettings, {"size": size})


def test_generate_size_parses() -> None:
    settings = settings_from_flags(GenerateSettings, {"size": "64X40", "count": "2"})
    assert (settings.width, settings.height, settings.size, settings.count) == (64, 40, "64x40", 2)


def test_check_reports_the_effective_sampler(denoise_checkpoint: Path, tmp_path: Path) -> None:
    env = {
        "ARTD_ROOT": str(tmp_path / "root"),
        "ARTD_CHECKPOINT": str(denoise_checkpoint),
        "ARTD_DEVICE": "cpu",
        "ARTD_STRENGTH": "0.25",
    }
    done = artd("check", env=env)
    assert done.returncode == 0, done.stderr
    model = json.loads(done.stdout)["model"]
    assert model["objective"] == "denoise"
    assert model["sampler"] == {"strength": 0.25, "steps": 4, "eta": 1.0, "seed": None}
