"""Objectives as objects (``core.objectives``): adding one is one class and one ``register``
line. A one-pass objective defined here (``invert``: the photographic negative) trains with
``python -m core.train`` end to end, passes the promotion gate and serves through the engine
and the img2img step; the registry refuses unknown names, naming the choices; the built-in
objectives record what they always recorded. Real files, real torch, 32 px, on the CPU."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import textured_image
from PIL import Image
from test_train import args, metrics, only_run

from core.checkpoint import CheckpointMeta, load_checkpoint
from core.config import SettingsError
from core.diffusion.generate import generation_settings
from core.diffusion.schedule import Schedule
from core.objectives import (
    OBJECTIVES,
    Objective,
    UnknownObjective,
    get,
    names,
    of,
    register,
    sampler_for,
    unregister,
)
from core.runtime.engine import Engine
from core.runtime.img2img import Inference, OutputSettings
from core.runtime.samplers import DiffusionSampler, SinglePass
from core.synthetic import procedural
from core.train import main
from core.training.command import build_parser, parse_settings

pytestmark = pytest.mark.usefixtures("one_thread")


class Invert(Objective):
    """The whole of a new objective: a name, a summary and what the network should make of
    an image (here its negative); everything else is the one-pass default."""

    name = "invert"
    summary = "invert (the photographic negative; a test's objective)"

    def target(self, pixels: torch.Tensor) -> torch.Tensor:
        return 1 - pixels


@pytest.fixture
def invert() -> Iterator[Objective]:
    """``invert`` registered for one test."""
    objective = register(Invert())  # the one registration line
    try:
        yield objective
    finally:
        unregister(objective.name)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """12 procedural images of mixed aspect."""
    root = tmp_path_factory.mktemp("images")
    procedural.write_dataset(root, 12, 40, seed=5, vary_aspect=True)
    return root


def test_a_registered_objective_trains_passes_the_gate_and_serves(invert, images, tmp_path):
    out, pointer = tmp_path / "out", tmp_path / "served" / "current"
    argv = args(images, out, "--objective", "invert", "--perceptual-weight", "0",
                "--device", "cpu", "--promote", str(pointer))  # fmt: skip
    assert main(argv) == 0
    run = only_run(out)
    rows = metrics(run)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert set(rows[0]) == {
        "epoch", "loss", "mse", "perceptual", "val_loss", "val_mse", "val_perceptual",
        "val_psnr", "lr", "images_per_s", "seconds",
    }  # fmt: skip
    assert all(np.isfinite(row["val_loss"]) for row in rows)
    assert (run / "samples" / "epoch-002.png").is_file()

    best = load_checkpoint(run / "checkpoints" / "best.safetensors")
    assert best.meta.objective == "invert" and best.meta.settings["objective"] == "invert"
    assert best.meta.diffusion is None and best.meta.sampler == {}
    verdict = json.loads((run / "gate.json").read_text())
    assert verdict["promoted"] and verdict["candidate_objective"] == "invert"
    assert pointer.resolve() == best.path

    engine = Engine.from_path(pointer, device="cpu", precision="fp32")
    assert isinstance(engine.sampler, SinglePass) and engine.objective == "invert"
    photo = textured_image(48, 32)
    (served,) = engine.run_images([photo])
    assert isinstance(served, Image.Image) and served.size == (48, 32)
    (stepped,) = Inference(engine, OutputSettings(48)).run([np.asarray(photo)])
    assert isinstance(stepped, Image.Image) and stepped.size == (48, 32)
    assert np.asarray(stepped).std() > 0  # a real picture, not a flat fill
    with pytest.raises(ValueError, match="cannot generate from noise; serve a denoise"):
        generation_settings(engine, None)


def test_the_validation_figure_judges_the_objectives_target(invert):
    """``invert``'s figure compares the output with the negative, not with the image."""
    batch = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    negative = 1 - batch.permute(0, 3, 1, 2).float() / 255

    class Negative(torch.nn.Module):  # the network's output is 0..1 pixels: the negative
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return negative

    from core.training.losses import TrainingLoss

    meta = CheckpointMeta(objective="invert")
    figure = invert.figure(meta)
    loss, cpu = TrainingLoss(None, 0.0), torch.device("cpu")
    judged = invert.evaluate(Negative(), [(batch, ["a", "b"])], loss, cpu, figure)
    assert judged["val_mse"] < 1e-10
    as_reconstruct = get("reconstruct").evaluate(Negative(), [(batch, ["a", "b"])], loss, cpu,
                                                 figure)  # fmt: skip
    assert as_reconstruct["val_mse"] > 0.01


def test_the_registry_refuses_an_unknown_objective_naming_the_choices(monkeypatch, tmp_path):
    with pytest.raises(UnknownObjective, match="unknown objective 'paint': choose one of "
                       "reconstruct, denoise, style"):  # fmt: skip
        get("paint")
    assert issubclass(UnknownObjective, ValueError)
    painted = CheckpointMeta.from_dict({**CheckpointMeta().to_dict(), "objective": "paint"})
    with pytest.raises(UnknownObjective, match="unknown objective 'paint': choose one of "):
        of(painted)  # the engine and the gate ask this before serving or judging it
    with pytest.raises(UnknownObjective, match="'paint'"):
        sampler_for(painted)
    monkeypatch.setenv("ARTD_TRAIN_OBJECTIVE", "paint")
    with pytest.raises(SettingsError, match="choose one of reconstruct, denoise, style"):
        parse_settings(["--data", str(tmp_path)])
    with pytest.raises(ValueError, match="already registered"):
        register(get("denoise"))


def test_the_cli_choices_are_the_registry(invert, capsys):
    objective = next(a for a in build_parser()._actions if a.dest == "objective")
    assert tuple(objective.choices) == names() == (*OBJECTIVES, "invert")
    unregister("invert")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--data", "x", "--objective", "invert"])
    assert "invalid choice: 'invert'" in capsys.readouterr().err
    register(invert)  # for the fixture's clean-up


def test_builtin_objectives_record_and_serve_as_before(tmp_path):
    s = parse_settings(["--data", str(tmp_path)])
    assert names()[:4] == OBJECTIVES == ("reconstruct", "denoise", "style", "guided")
    assert get("reconstruct").meta_fields(s) == {"objective": "reconstruct"}
    assert get("style").meta_fields(s) == {"objective": "style"}
    assert get("denoise").meta_fields(s) == {
        "objective": "denoise",
        "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "diffusion": Schedule().to_dict(),
        "sampler": {"strength": 0.5, "steps": 25, "eta": 1.0},
    }
    assert get("reconstruct").loss_parts == get("denoise").loss_parts == (
        "loss", "mse", "perceptual",
    )  # fmt: skip
    assert get("style").loss_parts == ("loss", "content", "style", "tv")
    assert [n for n in OBJECTIVES if get(n).can_generate] == ["denoise", "guided"]
    denoise = CheckpointMeta(**get("denoise").meta_fields(s))  # type: ignore[arg-type]
    assert isinstance(sampler_for(denoise), DiffusionSampler)
    assert isinstance(sampler_for(CheckpointMeta()), SinglePass)
