"""The denoise sampler in the one inference path (core.runtime.samplers, core.runtime.engine,
core.runtime.img2img, core.diffusion.generate): real checkpoint files, the real network, real
torch on the CPU, 32 px."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import seeded_model, textured_image
from loguru import logger

from core.checkpoint import CheckpointMeta, save_checkpoint
from core.diffusion.generate import generate, generated_provenance
from core.diffusion.sampler_settings import (
    DEFAULT_SAMPLER_SETTINGS,
    SamplerRequest,
    SamplerSettings,
)
from core.diffusion.schedule import Schedule
from core.images.pixels import to_uint8_array
from core.objectives import sampler_for
from core.outputs.encoding import read_metadata
from core.runtime.engine import Engine
from core.runtime.img2img import Inference, OutputSettings
from core.runtime.samplers import DiffusionSampler, content_seeds

HALF = {"mean": [0.5] * 3, "std": [0.5] * 3}
FEW = SamplerRequest(strength=0.5, steps=6)  # three network calls per image


pytestmark = pytest.mark.usefixtures("one_thread")


def denoise_meta(**sampler: float) -> CheckpointMeta:
    return CheckpointMeta(
        objective="denoise",
        diffusion=Schedule().to_dict(),
        normalization=HALF,
        sampler=dict(sampler),
        epoch=3,
    )


@pytest.fixture(scope="module")
def denoise_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("denoise") / "denoise.safetensors"
    save_checkpoint(path, seeded_model(0).state_dict(), denoise_meta())
    return path


@pytest.fixture(scope="module")
def engine(denoise_checkpoint: Path) -> Engine:
    return Engine.from_path(denoise_checkpoint, device="cpu", precision="fp32", max_batch=4)


def arrays(count: int, size: int = 32) -> list[np.ndarray]:
    return [to_uint8_array(textured_image(size, size, seed=i)) for i in range(count)]


def sha(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest()


def pixels_of(results: list) -> list[bytes]:
    return [np.asarray(result).tobytes() for result in results]


def test_same_input_and_settings_give_identical_pixels_alone_or_in_a_batch(engine: Engine) -> None:
    images = arrays(3)
    hashes = [sha(a) for a in images]
    step = Inference(engine, OutputSettings(32), FEW)
    batched = pixels_of(step.run(images, hashes))
    again = pixels_of(step.run(images, hashes))
    alone = [pixels_of(step.run([a], [h]))[0] for a, h in zip(images, hashes, strict=True)]
    reordered = pixels_of(step.run(images[::-1], hashes[::-1]))[::-1]
    assert batched == again == alone == reordered
    assert len(set(batched)) == 3


def test_float_outputs_across_batch_sizes(engine: Engine) -> None:
    """What oneDNN's batch-size dependent kernels do to the sampler's float output: tiny
    differences (recorded here) that the uint8 rounding above does not see at 32 px."""
    x = torch.from_numpy(np.stack(arrays(3))).permute(0, 3, 1, 2).float().div(255)
    settings = engine.sampler_settings(FEW)
    assert settings is not None
    seeds = content_seeds(x, settings)
    together = engine.infer(x, seeds, FEW)
    alone = torch.cat([engine.infer(x[i : i + 1], seeds[i : i + 1], FEW) for i in range(3)])
    assert float((together - alone).abs().max()) < 1e-4


def test_a_different_seed_or_file_gives_a_different_output(engine: Engine) -> None:
    [image] = arrays(1)
    base = Inference(engine, OutputSettings(32), FEW)
    seeded = Inference(engine, OutputSettings(32), SamplerRequest(strength=0.5, steps=6, seed=7))
    other = Inference(engine, OutputSettings(32), SamplerRequest(strength=0.5, steps=6, seed=8))
    outputs = [pixels_of(s.run([image], [sha(image)]))[0] for s in (base, seeded, other)]
    outputs.append(pixels_of(base.run([image], ["0" * 64]))[0])  # same pixels, other file
    assert len(set(outputs)) == 4


def test_strength_zero_returns_the_input(engine: Engine) -> None:
    images = arrays(2)
    results = Inference(engine, OutputSettings(32), SamplerRequest(strength=0.0)).run(images)
    for image, result in zip(images, results, strict=True):
        assert np.array_equal(np.asarray(result), image)


def test_similarity_to_the_input_falls_as_strength_rises(engine: Engine) -> None:
    [image] = arrays(1)
    errors = []
    for strength in (0.1, 0.5, 1.0):
        step = Inference(engine, OutputSettings(32), SamplerRequest(strength=strength, steps=4))
        [out] = step.run([image], [sha(image)])
        errors.append(np.abs(np.asarray(out).astype(int) - image.astype(int)).mean())
    assert errors[0] < errors[1] <= errors[2] + 1


def test_a_v_checkpoint_is_served_by_its_parameterisation(tmp_path: Path) -> None:
    """The same weights read as v keep the input at a low strength, read as x0 they redraw
    it: the engine samples by what the checkpoint's schedule records. Measured at strength
    0.05: 11.5 levels off for v, 74.0 for x0 (mean abs, 0..255)."""
    [image] = arrays(1)
    errors = {}
    for parameterisation in ("x0", "v"):
        meta = denoise_meta()
        meta.diffusion = Schedule(parameterisation=parameterisation).to_dict()
        path = save_checkpoint(
            tmp_path / f"{parameterisation}.safetensors", seeded_model(0).state_dict(), meta
        )
        served = Engine.from_path(path, device="cpu", precision="fp32", max_batch=4)
        step = Inference(served, OutputSettings(32), SamplerRequest(strength=0.05, steps=20))
        [out] = step.run([image], [sha(image)])
        errors[parameterisation] = np.abs(np.asarray(out).astype(int) - image.astype(int)).mean()
    assert errors["v"] < 20 < errors["x0"], errors


def test_defaults_are_the_checkpoint_recommendation_then_the_global_ones(tmp_path: Path) -> None:
    path = tmp_path / "recommends.safetensors"
    save_checkpoint(path, seeded_model(0).state_dict(), denoise_meta(strength=0.3, steps=10.0))
    engine = Engine.from_path(path, device="cpu", precision="fp32")
    assert engine.sampler_settings() == SamplerSettings(strength=0.3, steps=10, eta=1.0)
    assert engine.sampler_settings(SamplerRequest(eta=0.0, seed=5)) == SamplerSettings(
        strength=0.3, steps=10, eta=0.0, seed=5
    )
    assert sampler_for(denoise_meta()).recommended == DEFAULT_SAMPLER_SETTINGS == SamplerSettings()
    assert SamplerSettings(strength=0.5, steps=25, eta=1.0) == DEFAULT_SAMPLER_SETTINGS


@pytest.mark.parametrize(
    ("field", "value"), [("strength", 1.5), ("steps", 0), ("eta", -0.1), ("seed", "x")]
)
def test_invalid_settings_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SamplerRequest(**{field: value})  # type: ignore[arg-type]


def test_a_denoise_checkpoint_must_use_the_model_space_normalization() -> None:
    meta = denoise_meta()
    meta.normalization = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    with pytest.raises(ValueError, match="normalization"):
        sampler_for(meta)
    assert isinstance(sampler_for(denoise_meta()), DiffusionSampler)


def test_reconstruct_ignores_sampler_settings_with_one_log_line(pixel_checkpoint: Path) -> None:
    engine = Engine.from_path(pixel_checkpoint, device="cpu", precision="fp32")
    images = arrays(3)
    today = pixels_of(Inference(engine, OutputSettings(32)).run(images))
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="WARNING")
    try:
        request = SamplerRequest(strength=0.9, steps=3, seed=1)
        step = Inference(engine, OutputSettings(32), request)
        assert step.sampler_settings is None
        ignored = pixels_of(step.run(images, [sha(a) for a in images]))
        ignored += pixels_of(engine.run_images([textured_image(32, 32)], request))
        Inference(engine, OutputSettings(32), request)
    finally:
        logger.remove(sink)
    assert ignored[:3] == today
    assert len([line for line in lines if "ignoring the sampler settings" in line]) == 1
    meta = read_metadata(step.encode(textured_image(32, 32), "ab" * 32))
    assert meta["artd:objective"] == "reconstruct" and "artd:sampler" not in meta


def test_provenance_records_objective_and_sampler_settings(engine: Engine) -> None:
    step = Inference(engine, OutputSettings(32, "fit", "png"), SamplerRequest(steps=6, seed=3))
    [image] = arrays(1)
    [out] = step.run([image], [sha(image)])
    meta = read_metadata(step.encode(out, sha(image)))
    assert meta["artd:objective"] == "denoise"
    assert json.loads(meta["artd:sampler"]) == {
        "strength": 0.5,
        "steps": 6,
        "eta": 1.0,
        "seed": 3,
    }
    assert json.loads(meta["artd:settings"]) == {"size": 32, "resize": "fit", "format": "png"}


def test_run_all_pairs_hashes_with_their_images_across_shapes(engine: Engine) -> None:
    images = [*arrays(3), to_uint8_array(textured_image(16, 32, seed=5))]
    hashes = [sha(a) for a in images]
    step = Inference(engine, OutputSettings(32), FEW)
    together = pixels_of(step.run_all(images, hashes))
    alone = [pixels_of(step.run([a], [h]))[0] for a, h in zip(images, hashes, strict=True)]
    assert together == alone


def test_backoff_halves_keep_each_image_with_its_seed(engine: Engine) -> None:
    settings = engine.sampler_settings(FEW)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    seeds = [11, 12, 13]
    whole = engine._sample(x, "fp32", seeds, settings)
    halves = torch.stack(engine._in_halves(x, seeds, settings))
    assert float((whole - halves).abs().max()) < 1e-4


def test_generate_makes_count_images_of_the_size_stable_per_index(engine: Engine) -> None:
    request = SamplerRequest(steps=3)
    five = generate(engine, 5, 24, 16, seed=1, request=request)  # two batches of max 4
    assert [image.size for image in five] == [(24, 16)] * 5
    two = generate(engine, 2, 24, 16, seed=1, request=request)
    assert pixels_of(two) == pixels_of(five[:2])
    assert pixels_of(generate(engine, 1, 24, 16, seed=2, request=request)) != pixels_of(two[:1])
    meta = generated_provenance(engine, 1, 4, request, {"size": "24x16"})
    assert meta["artd:source"] == "generate:1:4" and meta["artd:objective"] == "denoise"
    assert json.loads(meta["artd:sampler"])["strength"] == 1.0
    with pytest.raises(ValueError, match="multiple of 8"):
        generate(engine, 1, 20, 16, seed=0)


def test_generate_refuses_a_reconstruct_checkpoint(pixel_checkpoint: Path) -> None:
    engine = Engine.from_path(pixel_checkpoint, device="cpu", precision="fp32")
    with pytest.raises(ValueError, match="cannot generate from noise"):
        generate(engine, 1, 16, 16, seed=0)


def test_auto_precision_probes_the_whole_sampler(denoise_checkpoint: Path) -> None:
    auto = Engine.from_path(denoise_checkpoint, device="cpu", precision="auto")
    fp32 = Engine.from_path(denoise_checkpoint, device="cpu", precision="fp32")
    images = arrays(2)
    hashes = [sha(a) for a in images]
    a = Inference(auto, OutputSettings(32), FEW).run(images, hashes)
    b = Inference(fp32, OutputSettings(32), FEW).run(images, hashes)
    for x, y in zip(a, b, strict=True):
        diff = np.abs(np.asarray(x).astype(int) - np.asarray(y).astype(int))
        assert diff.max() <= 2, f"{auto.precision}: {diff.max()}/255"


def test_non_finite_sampling_fails_that_item_after_the_fp32_retry(tmp_path: Path) -> None:
    state = seeded_model(0).state_dict()
    state["enc1.0.weight"] = state["enc1.0.weight"].sign() * 3e38  # overflows to inf, then NaN
    path = tmp_path / "overflow.safetensors"
    save_checkpoint(path, state, denoise_meta())
    engine = Engine.from_path(path, device="cpu", precision="auto")
    assert engine.precision == "fp32"  # the probe ran the sampler and saw non-finite output
    [result] = Inference(engine, OutputSettings(16), FEW).run(arrays(1, 16), ["ab" * 32])
    assert getattr(result, "reason", None) == "non_finite_output"
