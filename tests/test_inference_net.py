"""core.network.folded: the BatchNorm-folded network against the post's module, real torch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import seeded_model

from core.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from core.network.folded import FoldedModel, _has_fused_ops, stage_dtypes
from core.network.model import ConvDiffusionModel
from core.network.precision import PRECISIONS
from core.runtime.devices import native_reduced_dtype
from core.runtime.engine import Engine


def negative_scale_model() -> ConvDiffusionModel:
    """BatchNorm weights of both signs and a zero: the clamp form, not only the ReLU form."""
    model = seeded_model(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(-1.5, 1.5)
                module.weight[0] = 0.0
                module.bias.uniform_(-0.3, 0.3)
    return model


def reference(model: ConvDiffusionModel, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("make", [seeded_model, negative_scale_model])
def test_fp32_equals_the_post_module(
    make: Callable[[], ConvDiffusionModel], fused: bool, channels_last: bool
) -> None:
    model = make()
    x = torch.randn(3, 3, 40, 64, generator=torch.Generator().manual_seed(0))
    folded = FoldedModel(model, "fp32", channels_last=channels_last, fused=fused)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = folded(x)
    assert out.dtype == torch.float32 and out.shape == (3, 3, 40, 64)
    assert (out - reference(model, x)).abs().max() < 1e-5
    assert folded.fused == (fused and _has_fused_ops())  # no silent fallback on this CPU


def test_both_folding_forms_are_used() -> None:
    relu_form = FoldedModel(seeded_model(0))
    clamp_form = FoldedModel(negative_scale_model())
    assert all(stage.relu_form for stage in relu_form._stages)
    assert not any(stage.relu_form for stage in clamp_form._stages)


def test_fused_and_plain_paths_agree_in_bf16() -> None:
    model = seeded_model(0)
    x = torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fused = FoldedModel(model, "bf16", channels_last=True, fused=True)(x)
        plain = FoldedModel(model, "bf16", channels_last=True, fused=False)(x)
    assert fused.dtype == torch.float32  # the Sigmoid runs in fp32 whatever the stages use
    assert (fused - plain).abs().max() < 2 / 255


def test_reduced_precisions_stay_close_and_mixed_is_closer() -> None:
    model = negative_scale_model()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    exact = reference(model, x)
    with torch.inference_mode():
        errors = {p: float((FoldedModel(model, p)(x) - exact).abs().max()) for p in PRECISIONS}
    assert errors["fp32"] < 1e-5
    assert 0 < errors["bf16-mixed"] < errors["bf16"] < 0.1


def test_stage_dtypes() -> None:
    assert stage_dtypes("fp32") == (torch.float32,) * 6
    mixed = stage_dtypes("bf16-mixed")
    assert mixed[0] == mixed[-1] == torch.float32 and torch.bfloat16 in mixed
    with pytest.raises(ValueError, match="bf16-mixed"):
        stage_dtypes("int8")


@pytest.mark.parametrize(("gain", "expected"), [(4, "bf16-mixed"), (16, "fp32")])
def test_auto_precision_steps_down_until_the_probe_passes(
    tmp_path: Path, gain: float, expected: str
) -> None:
    """Scaling the output layer amplifies rounding: x4 fails all-bf16 but not the mixed plan
    (fp32 next to the image), x16 fails both. Whatever is picked stays within 2/255."""
    if native_reduced_dtype(torch.device("cpu")) != torch.bfloat16:
        pytest.skip("this CPU has no native bf16: auto is always fp32 here")
    model = seeded_model(0)
    with torch.no_grad():
        model.dec3[0].weight.mul_(gain)
    path = tmp_path / "sensitive.safetensors"
    save_checkpoint(path, model.state_dict(), CheckpointMeta())
    auto = Engine(load_checkpoint(path), device="cpu", precision="auto")
    exact = Engine(load_checkpoint(path), device="cpu", precision="fp32")
    assert auto.precision == expected
    assert auto._probe_error("bf16") > 1.5 / 255
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    assert float((auto.infer(x) - exact.infer(x)).abs().max()) <= 2 / 255


def test_the_settings_and_the_cli_offer_every_precision() -> None:
    from typing import get_args

    from daemon.settings import DaemonSettings

    assert get_args(DaemonSettings.model_fields["precision"].annotation) == ("auto", *PRECISIONS)
