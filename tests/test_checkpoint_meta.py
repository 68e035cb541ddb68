"""core.checkpoint metadata and weight validation: what is refused, and how it is named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from checkpoint_kit import (
    load_fails,
    rewrite_meta,
    sample_meta,
    saved_fixture,  # noqa: F401  (the saved fixture)
    weights_fixture,  # noqa: F401  (the weights fixture)
)

from core import objectives
from core.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    CheckpointMeta,
    build_model,
    load_checkpoint,
    save_checkpoint,
    validate_state_dict,
)
from core.network.model import ARCHITECTURE, ConvDiffusionModel

# --- metadata ------------------------------------------------------------------------------------


def test_meta_dict_round_trip_and_defaults() -> None:
    meta = sample_meta()
    assert CheckpointMeta.from_dict(meta.to_dict()) == meta
    default = CheckpointMeta()
    assert default.architecture == ARCHITECTURE
    assert default.format_version == FORMAT_VERSION
    assert default.normalization == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"image_space": "latent"}, "image_space"),
        ({"resize": "crop"}, "resize"),
        ({"train_size": 0}, "train_size"),
        ({"metrics": {"val_loss": float("nan")}}, "metrics"),
        ({"architecture": "UNet2D"}, "UNet2D"),
    ],
)
def test_save_refuses_bad_metadata(
    tmp_path: Path, weights: dict[str, torch.Tensor], override: dict, fragment: str
) -> None:
    path = tmp_path / "bad-meta.safetensors"
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(path, weights, sample_meta(**override))
    assert "bad-meta.safetensors" in str(info.value)
    assert fragment in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_version_property() -> None:
    ckpt = Checkpoint(
        path=Path("/x/epoch-050.safetensors"),
        state_dict={},
        meta=CheckpointMeta(),
        sha256="1a2b3c4d5e6f" + "0" * 52,
    )
    assert ckpt.version == "epoch-050.safetensors@1a2b3c4d5e6f"


# --- metadata problems in a file -----------------------------------------------------------------


def test_future_format_version_is_a_clear_error(saved: Path) -> None:
    rewrite_meta(saved, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    load_fails(saved, f"format_version {FORMAT_VERSION + 1}", "upgrade artd")


def test_wrong_architecture_in_metadata(saved: Path) -> None:
    rewrite_meta(saved, lambda m: m.update(architecture="StableDiffusionUNet"))
    load_fails(saved, "StableDiffusionUNet", ARCHITECTURE)


def test_unknown_image_space_in_metadata(saved: Path) -> None:
    rewrite_meta(saved, lambda m: m.update(image_space="latent"))
    load_fails(saved, "image_space", "latent")


def test_safetensors_without_our_metadata(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    import safetensors.torch

    path = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file(weights, str(path))
    load_fails(path, "not an artd checkpoint")


# --- validation ----------------------------------------------------------------------------------


def test_wrong_shape_names_key_expected_and_got(
    tmp_path: Path, weights: dict[str, torch.Tensor]
) -> None:
    bad = dict(weights)
    bad["enc1.0.weight"] = torch.zeros(32, 3, 3, 3)
    path = tmp_path / "wrong-shape.pth"
    torch.save(bad, path)
    load_fails(path, "enc1.0.weight", "(64, 3, 3, 3)", "(32, 3, 3, 3)")


def test_missing_and_unexpected_keys_are_listed(
    tmp_path: Path, weights: dict[str, torch.Tensor]
) -> None:
    bad = {k: v for k, v in weights.items() if not k.startswith("dec3.")}
    bad["head.weight"] = torch.zeros(1)
    path = tmp_path / "missing.pth"
    torch.save(bad, path)
    load_fails(path, "2 missing keys", "dec3.0.bias", "dec3.0.weight", "unexpected", "head.weight")


def test_many_missing_keys_are_summarised(tmp_path: Path) -> None:
    path = tmp_path / "other-model.pth"
    torch.save({f"layer{i}.weight": torch.zeros(1) for i in range(40)}, path)
    error = load_fails(path, "missing keys", "more")
    assert len(str(error)) < 1000


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_weights_name_the_tensor(
    tmp_path: Path, weights: dict[str, torch.Tensor], bad_value: float
) -> None:
    bad = dict(weights)
    bad["dec1.2.running_var"] = weights["dec1.2.running_var"].clone()
    bad["dec1.2.running_var"][5] = bad_value
    path = tmp_path / "poisoned.pth"
    torch.save(bad, path)
    load_fails(path, "non-finite", "dec1.2.running_var")


def test_integer_weights_are_refused(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    bad = dict(weights)
    bad["enc1.0.bias"] = torch.zeros(64, dtype=torch.int32)
    path = tmp_path / "ints.pth"
    torch.save(bad, path)
    load_fails(path, "enc1.0.bias", "int32")


def test_validate_state_dict_accepts_fresh_model_and_names_source() -> None:
    validate_state_dict(ConvDiffusionModel().state_dict(), "fresh")
    with pytest.raises(CheckpointError, match=r"^somewhere\.pth: .*enc1\.0\.weight"):
        validate_state_dict({"enc1.0.weight": torch.zeros(1)}, "somewhere.pth")


def test_save_refuses_nan_weights(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    poisoned = dict(weights)
    poisoned["enc2.0.weight"] = weights["enc2.0.weight"].clone()
    poisoned["enc2.0.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"nan\.safetensors.*enc2\.0\.weight"):
        save_checkpoint(tmp_path / "nan.safetensors", poisoned, sample_meta())
    assert list(tmp_path.iterdir()) == []


def test_build_model_refuses_weights_edited_after_loading(saved: Path) -> None:
    ckpt = load_checkpoint(saved)
    ckpt.state_dict.pop("dec3.0.bias")
    with pytest.raises(CheckpointError, match=r"dec3\.0\.bias"):
        build_model(ckpt)


def test_objective_defaults_to_reconstruct_for_metadata_written_before_it() -> None:
    data = CheckpointMeta().to_dict()
    for key in ("objective", "diffusion", "sampler"):
        data.pop(key)
    meta = CheckpointMeta.from_dict(data)
    assert (meta.objective, meta.diffusion, meta.sampler) == ("reconstruct", None, {})


def test_denoise_objective_round_trips_with_its_schedule_and_sampler() -> None:
    meta = CheckpointMeta(
        objective="denoise", diffusion={"kind": "cosine"}, sampler={"strength": 0.5, "steps": 25}
    )
    back = CheckpointMeta.from_dict(meta.to_dict())
    assert (back.objective, back.diffusion, back.sampler) == (
        "denoise",
        {"kind": "cosine"},
        {"strength": 0.5, "steps": 25},
    )


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"objective": "paint"}, "objective"),
        ({"objective": "denoise"}, "diffusion"),
        ({"diffusion": {"kind": "cosine"}}, "diffusion"),
        ({"sampler": {"strenght": 0.5}}, "sampler"),
        ({"sampler": {"steps": float("nan")}}, "sampler"),
    ],
)
def test_bad_objective_fields_name_the_field(changes: dict, named: str) -> None:
    """Refused when read (the sampler's fields) or when its objective is asked, as the engine
    and the gate do before using a checkpoint (which objectives exist, and what each records,
    are the objectives' to say: core.objectives.of)."""
    data = CheckpointMeta().to_dict() | changes
    with pytest.raises(ValueError, match=named):
        objectives.of(CheckpointMeta.from_dict(data))


@pytest.mark.parametrize("name", ["Paint", "../denoise", "", 42, None, "x" * 41])
def test_an_objective_name_that_is_no_name_is_refused_when_read(name: object) -> None:
    data = CheckpointMeta().to_dict() | {"objective": name}
    with pytest.raises(ValueError, match="objective must be a name"):
        CheckpointMeta.from_dict(data)
