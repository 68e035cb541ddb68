"""core.runtime.engine and core.runtime.img2img with real checkpoints and real torch: post parity,
batching, failures, the recorded image space."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import seeded_model, textured_image
from PIL import Image
from torchvision import transforms

from core.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from core.images import loading
from core.images.pixels import to_tensor, to_uint8_array
from core.network.model import IMAGENET_MEAN, IMAGENET_STD
from core.network.space import POST_IMAGE_SPACE
from core.outputs.encoding import read_metadata
from core.runtime.engine import Engine, pick_device
from core.runtime.errors import InferenceError
from core.runtime.img2img import Inference, OutputSettings


def post_inference(checkpoint: Path, image_path: Path) -> np.ndarray:
    """The post's own inference script (docs/post.md), returning what its save_image writes."""
    from core.network.model import ConvDiffusionModel

    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    transform = transforms.Compose(
        [transforms.Resize((128, 128)), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )
    model = ConvDiffusionModel()
    model.load_state_dict(torch.load(checkpoint))
    model.eval()
    x = transform(Image.open(image_path).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        y = model(x)
    y = (y.squeeze(0) * std.view(-1, 1, 1) + mean.view(-1, 1, 1)).clamp(0, 1)
    # torchvision.utils.save_image's conversion to 8 bits:
    return y.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()


def test_post_checkpoint_matches_post_inference(post_checkpoint: Path, tmp_path: Path) -> None:
    engine = Engine.from_path(post_checkpoint, device="cpu", precision="fp32")
    assert engine.checkpoint.meta.image_space == POST_IMAGE_SPACE
    for i, size in enumerate([(200, 150), (96, 160), (128, 128)]):
        path = tmp_path / f"in{i}.png"
        textured_image(*size, seed=i).save(path)
        [ours] = engine.run_images([loading.load(path, 128, "stretch")])
        expected = post_inference(post_checkpoint, path)
        diff = np.abs(np.asarray(ours).astype(int) - expected.astype(int))
        assert diff.max() <= 1, f"image {i}: max diff {diff.max()}/255"


def test_pixel_space_output_is_the_sigmoid(pixel_checkpoint: Path) -> None:
    engine = Engine.from_path(pixel_checkpoint, device="cpu", precision="fp32")
    x = to_tensor(textured_image(64, 48)).unsqueeze(0)
    model = seeded_model(0)
    normalized = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model(normalized)
    assert torch.allclose(engine.infer(x).cpu(), expected, atol=1e-5)


def test_batched_results_equal_single_runs(pixel_checkpoint: Path) -> None:
    engine = Engine.from_path(pixel_checkpoint, device="cpu", precision="fp32", max_batch=4)
    images = [textured_image(64, 48, seed=i) for i in range(6)] + [textured_image(32, 64)]
    batched = engine.run_images(images)
    assert len(batched) == len(images)
    for image, result in zip(images, batched, strict=True):
        [single] = engine.run_images([image])
        assert result.size == image.size
        diff = np.abs(np.asarray(result).astype(int) - np.asarray(single).astype(int))
        assert diff.max() <= 1


def test_auto_precision_stays_within_two_levels_of_fp32(pixel_checkpoint: Path) -> None:
    fp32 = Engine.from_path(pixel_checkpoint, device="cpu", precision="fp32")
    auto = Engine.from_path(pixel_checkpoint, device="cpu", precision="auto")
    images = [textured_image(128, 96, seed=i) for i in range(3)]
    for a, b in zip(fp32.run_images(images), auto.run_images(images), strict=True):
        diff = np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int))
        assert diff.max() <= 2, f"{auto.precision}: {diff.max()}/255"


def test_non_finite_output_fails_that_item_only(tmp_path: Path) -> None:
    # Finite but enormous weights overflow to inf, and inf - inf gives NaN downstream.
    state = seeded_model(0).state_dict()
    state["enc1.0.weight"] = state["enc1.0.weight"].sign() * 3e38
    path = tmp_path / "overflow.safetensors"
    save_checkpoint(path, state, CheckpointMeta())
    engine = Engine(load_checkpoint(path), device="cpu", precision="auto")
    assert engine.precision == "fp32"  # the probe saw non-finite output and kept fp32
    results = engine.run_images([textured_image(32, 32)])
    assert isinstance(results[0], InferenceError)
    assert results[0].reason == "non_finite_output"


def test_sizes_must_be_multiples_of_eight(pixel_checkpoint: Path) -> None:
    engine = Engine.from_path(pixel_checkpoint, device="cpu")
    with pytest.raises(ValueError, match="multiples of 8"):
        engine.infer(torch.rand(1, 3, 30, 32))


def test_device_choice() -> None:
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")


def test_compiled_model_matches_eager(pixel_checkpoint: Path) -> None:
    eager = Engine.from_path(pixel_checkpoint, device="cpu", precision="fp32")
    compiled = Engine.from_path(pixel_checkpoint, device="cpu", precision="fp32", compile=True)
    assert compiled._compiled is not None
    images = [textured_image(64, 48, seed=i) for i in range(3)] + [textured_image(32, 64)]
    for a, b in zip(eager.run_images(images), compiled.run_images(images), strict=True):
        diff = np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int))
        assert diff.max() <= 1
    assert compiled._compiled is not None, "compilation fell back to eager"


def test_the_recorded_normalization_drives_the_input(tmp_path: Path) -> None:
    """Pre-processing comes from the checkpoint's metadata (core.network.space), not from
    constants."""
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.5, 1.0]
    path = tmp_path / "own-stats.safetensors"
    meta = CheckpointMeta(normalization={"mean": mean, "std": std})
    save_checkpoint(path, seeded_model(0).state_dict(), meta)
    engine = Engine(load_checkpoint(path), device="cpu", precision="fp32")
    x = to_tensor(textured_image(32, 24)).unsqueeze(0)
    normalized = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = seeded_model(0)(normalized)
    assert torch.allclose(engine.infer(x).cpu(), expected, atol=1e-5)


def test_the_inference_step_batches_by_shape_and_encodes_with_provenance(
    pixel_checkpoint: Path,
) -> None:
    """core.runtime.img2img, the step the daemon and `artd process` share."""
    engine = Engine.from_path(pixel_checkpoint, device="cpu", precision="fp32", max_batch=2)
    step = Inference(engine, OutputSettings(64, "fit", "png"))
    images = [textured_image(64, 48, seed=i) for i in range(3)] + [textured_image(32, 64)]
    pixels = [to_uint8_array(image) for image in images]
    for ours, theirs in zip(step.run_all(pixels), engine.run_images(images), strict=True):
        assert np.asarray(ours).tobytes() == np.asarray(theirs).tobytes()
    [broken] = step.run([np.zeros((8, 12, 4), np.uint8)])  # four channels: the model refuses
    assert isinstance(broken, InferenceError) and broken.reason == "model_failed"
    meta = read_metadata(step.encode(images[0], "ab" * 32))
    assert meta["artd:input_sha256"] == "ab" * 32
    assert meta["artd:model"] == engine.version
    assert json.loads(meta["artd:settings"]) == {"size": 64, "resize": "fit", "format": "png"}
