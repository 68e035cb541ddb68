"""The ``upsample`` and ``upsample-full`` decoder variants (core.network.model): folded parity,
what the full-resolution level adds, checkpoint round trip,
refusal of weights that do not match the recorded variant, and a denoise run that trains,
records and serves it. Real torch, real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from loguru import logger

from core.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, save_checkpoint
from core.diffusion.sampler_settings import SamplerRequest
from core.network.folded import FoldedModel
from core.network.model import FULL_WIDTH, ConvDiffusionModel
from core.runtime.engine import Engine
from core.runtime.img2img import Inference, OutputSettings
from core.synthetic import procedural
from core.train import main

pytestmark = pytest.mark.usefixtures("one_thread")


def upsample_model(
    seed: int = 0, negative: bool = False, decoder: str = "upsample"
) -> ConvDiffusionModel:
    torch.manual_seed(seed)
    model = ConvDiffusionModel(decoder)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                if negative:
                    module.weight.uniform_(-1.5, 1.5)
    return model.eval()


def test_variants_share_names_not_decoder_shapes() -> None:
    post, up = ConvDiffusionModel().state_dict(), ConvDiffusionModel("upsample").state_dict()
    assert post.keys() == up.keys()
    assert post["dec1.0.weight"].shape == (256, 128, 3, 3)  # ConvTranspose2d: (in, out, k, k)
    assert up["dec1.0.weight"].shape == (128, 256, 3, 3)  # Conv2d: (out, in, k, k)
    assert post["enc1.0.weight"].shape == up["enc1.0.weight"].shape
    with pytest.raises(ValueError, match="decoder must be one of"):
        ConvDiffusionModel("pixelshuffle")


def test_full_variant_adds_a_full_resolution_level() -> None:
    post, full = ConvDiffusionModel().state_dict(), ConvDiffusionModel("upsample-full").state_dict()
    added = {k.split(".")[0] for k in full.keys() - post.keys()}
    assert added == {"fine", "dec3", "mix", "out"}  # dec3 gains a BatchNorm: it is no longer last
    assert post.keys() <= full.keys()
    assert full["dec3.0.weight"].shape == (FULL_WIDTH, 64, 3, 3)
    assert full["fine.0.weight"].shape == (FULL_WIDTH, 3, 3, 3)
    assert full["out.0.weight"].shape == (3, FULL_WIDTH, 3, 3)


def test_full_variant_learns_pixel_detail_the_post_layout_cannot() -> None:
    """Copying single-pixel noise through the network: the post's layout, whose finest
    features are at half resolution, stays far off; the full-resolution level learns it."""

    def fitted_error(decoder: str) -> float:
        torch.manual_seed(0)
        model = ConvDiffusionModel(decoder)
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(1)
        for _ in range(150):
            x = torch.rand(8, 3, 16, 16, generator=g)
            loss = torch.nn.functional.mse_loss(model(x * 2 - 1), x)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            return torch.nn.functional.mse_loss(model(x * 2 - 1), x).item()

    upsample, full = fitted_error("upsample"), fitted_error("upsample-full")
    assert full < 0.25 * upsample, (full, upsample)


@pytest.mark.parametrize("decoder", ["upsample", "upsample-full"])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("negative", [False, True])
def test_folded_upsample_equals_the_module(decoder: str, fused: bool, negative: bool) -> None:
    model = upsample_model(1, negative, decoder)
    x = torch.randn(2, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = model(x)
        got = FoldedModel(model, "fp32", fused=fused)(x)
    assert got.shape == want.shape == (2, 3, 24, 40)
    assert (got - want).abs().max() < 1e-5


def test_upsample_output_has_no_checkerboard_on_a_flat_input() -> None:
    """A flat input through random weights: the transposed decoder's output varies with the
    pixel's parity (the checkerboard); nearest upsampling + convolution does not, away from
    the borders."""

    def parity_spread(model: ConvDiffusionModel) -> float:
        with torch.inference_mode():
            out = model(torch.zeros(1, 3, 64, 64))[0, :, 8:-8, 8:-8]
        means = [out[:, i::2, j::2].mean().item() for i in (0, 1) for j in (0, 1)]
        return max(means) - min(means)

    torch.manual_seed(0)
    transposed = ConvDiffusionModel().eval()
    assert parity_spread(transposed) > 10 * parity_spread(upsample_model(0))


def test_checkpoint_records_and_enforces_the_variant(tmp_path: Path) -> None:
    model = upsample_model(2)
    meta = CheckpointMeta(train_size=32, decoder="upsample")
    path = save_checkpoint(tmp_path / "up.safetensors", model.state_dict(), meta)
    ckpt = load_checkpoint(path)
    assert ckpt.meta.decoder == "upsample"
    x = torch.rand(1, 3, 32, 32)
    engine = Engine(ckpt, device="cpu", precision="fp32")
    assert engine.model is not None
    with torch.inference_mode():
        assert (engine.model(x) - model(x)).abs().max() < 1e-5

    # Upsample weights recorded as the post's layout (or the reverse) are refused by name.
    with pytest.raises(CheckpointError, match="not valid ConvDiffusionModel weights"):
        save_checkpoint(tmp_path / "bad.safetensors", model.state_dict(), CheckpointMeta())
    post_weights = ConvDiffusionModel().state_dict()
    with pytest.raises(CheckpointError, match=r"\(upsample decoder\) weights"):
        save_checkpoint(tmp_path / "bad2.safetensors", post_weights, meta)
    # Files from before the field are the post's layout.
    assert CheckpointMeta.from_dict({k: v for k, v in meta.to_dict().items() if k != "decoder"})
    legacy = CheckpointMeta.from_dict(
        {k: v for k, v in CheckpointMeta().to_dict().items() if k != "decoder"}
    )
    assert legacy.decoder == "transpose"
    with pytest.raises(ValueError, match="decoder"):
        CheckpointMeta.from_dict({**meta.to_dict(), "decoder": "bilinear"})


def test_denoise_run_trains_and_serves_the_upsample_variant(tmp_path: Path) -> None:
    data = tmp_path / "data"
    procedural.write_dataset(data, 12, 40, seed=4, styles=("woodcut",))
    out = tmp_path / "out"
    common = [
        "--objective", "denoise", "--data", str(data), "--out", str(out), "--batch-size", "4",
        "--image-size", "32", "--num-workers", "0", "--no-tensorboard",
        "--perceptual-weight", "0", "--val-fraction", "0.3", "--sample-steps", "3",
        "--sample-count", "2", "--decoder", "upsample", "--seed", "1",
    ]  # fmt: skip
    assert main([*common, "--epochs", "1"]) == 0
    run = next(out.glob("run-*"))
    ckpt = load_checkpoint(run / "checkpoints" / "best.safetensors")
    assert ckpt.meta.decoder == "upsample" and ckpt.meta.objective == "denoise"

    engine = Engine(ckpt, device="cpu", precision="fp32")
    inference = Inference(engine, OutputSettings(32), SamplerRequest(strength=0.5, steps=4))
    pixels = np.asarray(procedural.generate(9, 32))
    (image,) = inference.run([pixels], ["ab" * 32])
    assert image.size == (32, 32)

    # A resumed run cannot change the network under it.
    messages: list[str] = []
    sink = logger.add(messages.append, level="ERROR")
    try:
        swapped = [a if a != "upsample" else "transpose" for a in common]
        assert main([*swapped, "--epochs", "2", "--resume", "latest"]) == 1
    finally:
        logger.remove(sink)
    assert "start a new run to change the network" in "".join(messages)
