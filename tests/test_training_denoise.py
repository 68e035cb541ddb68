"""``python -m core.train --objective denoise`` end to end on tiny engraving data: metadata,
sample grids, bit-exact resume, the deterministic validation figure and the gate's refusal
to compare checkpoints of different objectives. Real files, real torch, 32 px."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from loguru import logger
from PIL import Image
from safetensors.torch import load_file

from core.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from core.diffusion.schedule import Schedule
from core.network.model import ConvDiffusionModel
from core.objectives import figure_for
from core.objectives import get as objective
from core.objectives.denoise import TrainingNoise
from core.synthetic import procedural
from core.train import main
from core.training.evaluate import evaluate
from core.training.figure import VAL_LEVELS, Figure
from core.training.losses import TrainingLoss

SIZE = 32
REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def engravings(tmp_path_factory) -> Path:
    """16 engraving-style images, the collection a denoise run learns a manner from."""
    root = tmp_path_factory.mktemp("engravings")
    procedural.write_dataset(root, 16, 40, seed=3, styles=("engraving",))
    return root


def args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--objective", "denoise", "--data", str(data), "--out", str(out), "--epochs", "2",
        "--batch-size", "4", "--image-size", str(SIZE), "--num-workers", "0",
        "--no-tensorboard", "--perceptual-weight", "0", "--val-fraction", "0.3",
        "--sample-steps", "4", "--sample-count", "3", *extra,
    ]  # fmt: skip


def only_run(out: Path) -> Path:
    runs = sorted(out.glob("run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_denoise_run_records_objective_schedule_sampler_and_draws_grids(engravings, tmp_path):
    out = tmp_path / "out"
    assert main(args(engravings, out, "--sample-strength", "0.6")) == 0
    run = only_run(out)
    ckpt = load_checkpoint(run / "checkpoints" / "epoch-002.safetensors")
    meta = ckpt.meta
    assert meta.objective == "denoise" and meta.image_space == "pixel"
    assert meta.diffusion == Schedule().to_dict()
    assert Schedule.from_dict(meta.diffusion) == Schedule()
    assert meta.sampler == {"strength": 0.6, "steps": 4, "eta": 1.0}
    assert meta.normalization == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert meta.settings["objective"] == "denoise" and meta.train_size == SIZE
    assert load_checkpoint(run / "checkpoints" / "best.safetensors").meta.objective == "denoise"

    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("loss", "mse", "val_loss", "val_mse", "val_psnr", "lr", "images_per_s"):
        assert all(isinstance(r[key], float) for r in rows), key
    assert "training 2 (denoise) epochs" in (run / "train.log").read_text()

    # Input and three strengths per held-out image, then one row from pure noise.
    val_images = sum(json.loads(line)["split"] == "val" for line in (run / "manifest.jsonl").open())
    shown = min(3, val_images)
    grid = Image.open(run / "samples" / "epoch-002.png")
    assert grid.size == (4 * (SIZE + 2) + 2, (shown + 1) * (SIZE + 2) + 2)


def test_denoise_resume_matches_an_uninterrupted_run(engravings, tmp_path):
    common = ["--deterministic", "--seed", "5"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(args(engravings, straight, "--epochs", "3", *common)) == 0
    assert main(args(engravings, resumed, "--epochs", "2", *common)) == 0
    assert main(args(engravings, resumed, "--epochs", "3", "--resume", "latest", *common)) == 0

    a, b = only_run(straight), only_run(resumed)
    weights_a = load_file(a / "checkpoints" / "epoch-003.safetensors")
    weights_b = load_file(b / "checkpoints" / "epoch-003.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)  # bit for bit
    assert [r["loss"] for r in metrics(b)] == [r["loss"] for r in metrics(a)]
    assert [r["val_loss"] for r in metrics(b)] == [r["val_loss"] for r in metrics(a)]

    # The objective cannot change under a resumed run.
    again = args(engravings, resumed, "--epochs", "4", "--resume", "latest", *common)
    messages: list[str] = []
    sink = logger.add(messages.append, level="ERROR")
    try:
        assert main(["reconstruct" if a == "denoise" else a for a in again]) == 1
    finally:
        logger.remove(sink)
    assert "start a new run to change the objective" in "".join(messages)


def test_a_run_with_the_low_noise_prior_records_it_and_resumes_bit_exactly(engravings, tmp_path):
    common = ["--deterministic", "--seed", "5", "--low-noise-prior", "dead-leaves",
              "--low-noise-below", "0.3"]  # fmt: skip
    straight, resumed, unswapped = tmp_path / "straight", tmp_path / "resumed", tmp_path / "none"
    assert main(args(engravings, straight, "--epochs", "2", *common)) == 0
    assert main(args(engravings, resumed, "--epochs", "1", *common)) == 0
    assert main(args(engravings, resumed, "--epochs", "2", "--resume", "latest", *common)) == 0
    none = ["--low-noise-share", "0"]  # the same random draws, nothing swapped
    assert main(args(engravings, unswapped, "--epochs", "2", *common, *none)) == 0

    def weights(out: Path) -> dict[str, torch.Tensor]:
        return load_file(only_run(out) / "checkpoints" / "epoch-002.safetensors")

    a, b, c = weights(straight), weights(resumed), weights(unswapped)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the swapped images were learnt
    meta = load_checkpoint(only_run(straight) / "checkpoints" / "epoch-002.safetensors").meta
    assert meta.settings["low_noise_prior"] == "dead-leaves"
    assert meta.settings["low_noise_below"] == 0.3 and meta.settings["low_noise_share"] == 0.8
    assert "1024 dead-leaves images swapped in" in (only_run(straight) / "train.log").read_text()


def test_a_v_run_records_its_parameterisation_and_resumes_only_as_v(engravings, tmp_path):
    out = tmp_path / "out"
    v = ["--parameterisation", "v", "--seed", "5"]
    assert main(args(engravings, out, "--epochs", "1", *v)) == 0
    run = only_run(out)
    meta = load_checkpoint(run / "checkpoints" / "epoch-001.safetensors").meta
    assert meta.diffusion == Schedule(parameterisation="v").to_dict()
    assert meta.settings["parameterisation"] == "v"
    assert (run / "samples" / "epoch-001.png").exists()
    # The validation figure judges the predicted clean image, so it compares with x0 runs'.
    assert 5.0 < metrics(run)[0]["val_psnr"] < 40.0

    messages: list[str] = []
    sink = logger.add(messages.append, level="ERROR")
    try:
        again = args(engravings, out, "--epochs", "2", "--resume", "latest", "--seed", "5")
        assert main(again) == 1  # x0 by default
    finally:
        logger.remove(sink)
    assert "start a new run to change the parameterisation" in "".join(messages)
    assert main(args(engravings, out, "--epochs", "2", "--resume", "latest", *v)) == 0


@pytest.mark.parametrize(
    ("extra", "word"),
    [
        (["--parameterisation", "v", "--perceptual-weight", "0.5"], "perceptual_weight"),
        (["--parameterisation", "v", "--objective", "reconstruct"], "parameterisation"),
        (["--low-noise-prior", "dead-leaves", "--objective", "reconstruct"], "low_noise_prior"),
        (["--low-noise-prior", "dead-leaves", "--low-noise-below", "0"], "low_noise_below"),
        (["--low-noise-prior", "dead-leaves", "--low-noise-share", "1.5"], "low_noise_share"),
    ],
)
def test_bad_parameterisation_settings_name_the_setting(engravings, tmp_path, capsys, extra, word):
    assert main([*args(engravings, tmp_path / "out"), *extra]) != 0
    assert f"{word} (--{word.replace('_', '-')}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("run-*"))


def test_training_noise_is_reseeded_per_epoch_and_differs_by_rank():
    cpu = torch.device("cpu")
    pixels = torch.rand(2, 3, 8, 8)
    first = TrainingNoise(Schedule(), seed=1, rank=0, device=cpu)
    a, target = first.pair(pixels)
    assert target is pixels  # x0: the clean image is the target
    b, _ = first.pair(pixels)
    first.start_epoch(0)
    assert torch.equal(first.pair(pixels)[0], a) and not torch.equal(a, b)
    other_rank = TrainingNoise(Schedule(), seed=1, rank=1, device=cpu)
    assert not torch.equal(other_rank.pair(pixels)[0], a)
    first.start_epoch(1)
    assert not torch.equal(first.pair(pixels)[0], a)


def test_denoise_validation_figure_is_deterministic_and_keyed_by_image():
    torch.manual_seed(0)
    model = ConvDiffusionModel()
    batch = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8)
    keys = ["a" * 64, "b" * 64, "c" * 64, "d" * 64]
    figure = Figure(objective("denoise").space(), Schedule())
    loss = TrainingLoss(None, 0.0)
    cpu = torch.device("cpu")

    rng_before = torch.get_rng_state()
    first = evaluate(model, [(batch, keys)], loss, cpu, figure=figure)
    assert torch.equal(torch.get_rng_state(), rng_before)  # fixed noise, not the run's RNG
    torch.manual_seed(123)  # whatever the global RNG, the figure is the same
    assert evaluate(model, [(batch, keys)], loss, cpu, figure=figure) == first
    split = [(batch[:1], keys[:1]), (batch[1:], keys[1:])]  # batch composition
    assert evaluate(model, split, loss, cpu, figure=figure) == pytest.approx(first, rel=1e-6)
    other = evaluate(model, [(batch, keys[::-1])], loss, cpu, figure=figure)
    assert other["val_mse"] != first["val_mse"]  # the noise follows the image's key

    inputs = list(figure.inputs(batch.permute(0, 3, 1, 2).float() / 255, keys))
    assert len(inputs) == len(VAL_LEVELS)
    assert figure_for(CheckpointMeta(objective="denoise", diffusion=Schedule().to_dict())).schedule
    assert figure_for(CheckpointMeta()).schedule is None


def reconstruct_checkpoint(path: Path) -> Path:
    """A served reconstruct model (the post's kind), deliberately good at nothing."""
    torch.manual_seed(0)
    return save_checkpoint(path, ConvDiffusionModel().state_dict(), CheckpointMeta(train_size=32))


def test_gate_refuses_to_compare_objectives_unless_asked(engravings, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    pointer = served / "current"
    os.symlink(reconstruct_checkpoint(served / "postlike.safetensors"), pointer)
    link_before = os.readlink(pointer)
    gated = ["--epochs", "1", "--promote", str(pointer)]

    refused = tmp_path / "refused"
    assert main(args(engravings, refused, *gated)) == 3
    verdict = json.loads((only_run(refused) / "gate.json").read_text())
    assert verdict["promoted"] is False and verdict["served_loss"] is None
    assert verdict["served_objective"] == "reconstruct"
    assert verdict["candidate_objective"] == "denoise"
    assert "objectives differ" in verdict["reason"]
    assert "objectives differ" in (only_run(refused) / "train.log").read_text()
    assert os.readlink(pointer) == link_before

    across = tmp_path / "across"
    assert main(args(engravings, across, *gated, "--promote-across-objectives")) == 0
    best = only_run(across) / "checkpoints" / "best.safetensors"
    assert pointer.resolve() == best.resolve()
    assert load_checkpoint(pointer).meta.objective == "denoise"

    # Denoise against denoise: compared on the fixed validation figure.
    worse = tmp_path / "worse"
    assert main(args(engravings, worse, *gated, "--lr", "1e-9")) == 3
    verdict = json.loads((only_run(worse) / "gate.json").read_text())
    assert verdict["served_objective"] == "denoise" and verdict["served_loss"] is not None
    assert verdict["candidate_loss"] > verdict["served_loss"]


def test_denoise_under_torchrun_two_processes(engravings, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "core.train", *args(engravings, out, "--epochs", "1", "--batch-size", "2",
                                   "--device", "cpu")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run(out)
    assert [r["epoch"] for r in metrics(run)] == [1]
    assert "x2" in (run / "train.log").read_text()
    assert (
        load_checkpoint(run / "checkpoints" / "epoch-001.safetensors").meta.objective == "denoise"
    )
