"""``python -m core.train --objective style`` end to end, offline: a VGG16 weights file with
random weights in torchvision's layout, engraving-style procedural art as the collection,
scikit-image's photos as content. The run trains, lowers the style loss on held-out photos,
resumes bit for bit, records its objective, passes the gate, and its checkpoint serves in
``artd process`` and the real daemon; without VGG weights it stops before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from daemon_harness import Daemon, outputs, quarantined, wait_for
from PIL import Image
from safetensors.torch import load_file
from skimage import data as photos
from test_oneshot import artd
from torchvision.models.vgg import cfgs, make_layers

from core.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from core.network.model import IMAGENET_MEAN, IMAGENET_STD, ConvDiffusionModel
from core.network.space import imagenet
from core.objectives import get, of, sampler_for
from core.outputs.encoding import read_metadata
from core.runtime.samplers import SinglePass
from core.synthetic import procedural
from core.train import main
from core.training.command import parse_settings
from core.training.distributed import Dist
from core.training.losses import StyleFeatures, gram, load_vgg_file
from core.training.run_folder import RunFolder
from core.training.style import build_style_loss, evaluate_style, mean_grams

SIZE = 32
REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """16 engraving-style images: a homogeneous collection, the style a run learns."""
    root = tmp_path_factory.mktemp("engravings")
    procedural.write_dataset(root, 16, 40, seed=3, styles=("engraving",))
    return root


@pytest.fixture(scope="module")
def content(tmp_path_factory) -> Path:
    """25 real photos: five of scikit-image's, whole and in quarters."""
    root = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        image = Image.fromarray(getattr(photos, name)())
        image.save(root / f"{name}.jpg", quality=90)
        w, h = image.size
        for i, (x, y) in enumerate([(0, 0), (w // 2, 0), (0, h // 2), (w // 2, h // 2)]):
            image.crop((x, y, x + w // 2, y + h // 2)).save(root / f"{name}-{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory) -> Path:
    """Random VGG16 ``features[:16]`` weights in torchvision's state_dict layout."""
    path = tmp_path_factory.mktemp("vgg") / "vgg16-random.pth"
    torch.manual_seed(0)
    layers = make_layers(cfgs["D"])[:16]
    torch.save({f"features.{k}": v for k, v in layers.state_dict().items()}, path)
    return path


def args(collection: Path, content: Path, vgg: Path, out: Path, *extra: str) -> list[str]:
    # Random VGG features are small: a style weight of 1e7 makes the Gram term the one the
    # network fits (the documented defaults are for ImageNet weights).
    return [
        "--objective", "style", "--data", str(collection), "--content-data", str(content),
        "--vgg-weights", str(vgg), "--out", str(out), "--epochs", "2", "--batch-size", "4",
        "--image-size", str(SIZE), "--num-workers", "0", "--no-tensorboard",
        "--no-vgg-download", "--val-fraction", "0.3", "--sample-count", "3",
        "--style-weight", "1e7", "--tv-weight", "0", "--precision", "fp32", "--device", "cpu",
        *extra,
    ]  # fmt: skip


def only_run(out: Path) -> Path:
    runs = sorted(out.glob("run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(collection, content, vgg_file, tmp_path_factory) -> tuple[Path, list[str]]:
    """One style run of 4 epochs: its run folder and its arguments."""
    out = tmp_path_factory.mktemp("style-run")
    argv = args(collection, content, vgg_file, out, "--epochs", "4")
    assert main(argv) == 0
    return only_run(out), argv


def test_style_run_records_its_objective_and_draws_photo_and_stylised_rows(trained, content):
    run, _ = trained
    meta = load_checkpoint(run / "checkpoints" / "epoch-004.safetensors").meta
    assert meta.objective == "style" and meta.image_space == "pixel"
    assert meta.normalization == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    assert meta.diffusion is None and meta.sampler == {}
    assert meta.settings["content_data"] == str(content) and meta.train_size == SIZE
    assert meta.decoder == "transpose"
    assert load_checkpoint(run / "checkpoints" / "best.safetensors").meta.objective == "style"
    assert isinstance(sampler_for(meta), SinglePass) and sampler_for(meta).objective == "style"

    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "content", "style", "tv", "val_loss", "val_content", "val_style"):
        assert all(isinstance(r[key], float) and np.isfinite(r[key]) for r in rows), key
    log = (run / "train.log").read_text()
    assert "training 4 (style) epochs" in log and "style loss: VGG16 weights from" in log
    for name in ("content-manifest.jsonl", "content-rejected.jsonl", "manifest.jsonl"):
        assert (run / name).is_file(), name
    content_val = sum(
        json.loads(line)["split"] == "val" for line in (run / "content-manifest.jsonl").open()
    )
    # Rows of held-out content photo | its stylised output.
    grid = Image.open(run / "samples" / "epoch-004.png")
    assert grid.size == (2 * (SIZE + 2) + 2, min(3, content_val) * (SIZE + 2) + 2)


def test_training_lowers_the_style_loss_on_held_out_photos(trained):
    run, argv = trained
    s = parse_settings(argv)
    d = Dist(0, 1, torch.device("cpu"))
    data = get(s.objective).load_data(s, d, RunFolder(None))  # the run's own split, from its cache
    loss = build_style_loss(s, d, StyleFeatures(load_vgg_file(s.vgg_weights)), data.style_set)
    torch.manual_seed(s.seed)  # the run's initial weights
    untrained = evaluate_style(ConvDiffusionModel(), data.val_batches, loss, d.device, imagenet())
    best = load_checkpoint(run / "checkpoints" / "best.safetensors")
    model = ConvDiffusionModel()
    model.load_state_dict(best.state_dict)
    after = evaluate_style(model, data.val_batches, loss, d.device, imagenet())
    assert after["val_style"] < 0.8 * untrained["val_style"], (untrained, after)
    assert after["val_loss"] < untrained["val_loss"]
    assert best.meta.metrics["val_loss"] == pytest.approx(after["val_loss"], rel=1e-5)


def test_style_resume_matches_an_uninterrupted_run(collection, content, vgg_file, tmp_path):
    """With one style image drawn per step (the harder case: the draw must resume too)."""
    common = ["--deterministic", "--seed", "5", "--style-target", "sample"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(args(collection, content, vgg_file, straight, "--epochs", "3", *common)) == 0
    assert main(args(collection, content, vgg_file, resumed, "--epochs", "2", *common)) == 0
    again = args(collection, content, vgg_file, resumed, "--epochs", "3", "--resume", "latest")
    assert main([*again, *common]) == 0

    a, b = only_run(straight), only_run(resumed)
    weights_a = load_file(a / "checkpoints" / "epoch-003.safetensors")
    weights_b = load_file(b / "checkpoints" / "epoch-003.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)  # bit for bit
    assert [r["loss"] for r in metrics(b)] == [r["loss"] for r in metrics(a)]
    assert [r["val_loss"] for r in metrics(b)] == [r["val_loss"] for r in metrics(a)]
    assert load_checkpoint(b / "checkpoints" / "epoch-003.safetensors").meta.objective == "style"


def test_the_collections_gram_target_is_deterministic(collection, vgg_file, tmp_path):
    s = parse_settings(
        ["--objective", "style", "--data", str(collection), "--out", str(tmp_path),
         "--image-size", str(SIZE), "--val-fraction", "0.3"]
    )  # fmt: skip
    d = Dist(0, 1, torch.device("cpu"))
    data = get(s.objective).load_data(
        s, d, RunFolder(None)
    )  # no --content-data: the collection is the content
    assert len(data.style_set) == len(data.train_set)
    features = StyleFeatures(load_vgg_file(vgg_file))
    cpu = torch.device("cpu")
    first = mean_grams(features, data.style_set, cpu, 4)
    assert all(
        torch.equal(first[k], mean_grams(features, data.style_set, cpu, 4)[k]) for k in first
    )
    in_one = mean_grams(features, data.style_set, cpu, 64)  # batch composition: rounding only
    assert all(torch.allclose(first[k], in_one[k], rtol=1e-5, atol=0) for k in first)
    assert {k: tuple(v.shape) for k, v in first.items()} == {
        "relu1_2": (1, 64, 64), "relu2_2": (1, 128, 128), "relu3_3": (1, 256, 256),
    }  # fmt: skip
    with torch.autocast("cpu", dtype=torch.bfloat16):  # Gram matrices stay fp32
        assert gram(torch.rand(2, 4, 8, 8, dtype=torch.bfloat16)).dtype == torch.float32


def test_style_metadata_round_trips_and_refuses_a_schedule():
    meta = CheckpointMeta.from_dict(CheckpointMeta(objective="style").to_dict())
    assert meta.objective == "style" and meta.diffusion is None
    # Refused by its objective, as the engine and the gate ask before using it.
    scheduled = CheckpointMeta(objective="style", diffusion={"k": 1}).to_dict()
    with pytest.raises(ValueError, match="diffusion"):
        of(CheckpointMeta.from_dict(scheduled))


def test_without_vgg_weights_style_stops_before_training(collection, content, tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "empty-torch-home"), "OMP_NUM_THREADS": "1"}
    argv = [
        "--objective", "style", "--data", str(collection), "--content-data", str(content),
        "--out", str(tmp_path / "out"), "--no-vgg-download", "--perceptual-weight", "0",
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "core.train", *argv],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    expected = tmp_path / "empty-torch-home" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert str(expected) in result.stderr and "--vgg-weights" in result.stderr
    assert "--objective denoise" in result.stderr
    assert not list((tmp_path / "out").glob("run-*"))


def test_content_data_is_refused_for_other_objectives(collection, content, capsys):
    assert main(["--data", str(collection), "--content-data", str(content)]) == 2
    assert "content_data" in capsys.readouterr().err


def test_gate_compares_style_with_style_and_refuses_other_objectives(
    collection, content, vgg_file, tmp_path
):
    served = tmp_path / "served"
    served.mkdir()
    pointer = served / "current"
    torch.manual_seed(0)
    reconstruct = save_checkpoint(
        served / "postlike.safetensors", ConvDiffusionModel().state_dict(), CheckpointMeta()
    )
    os.symlink(reconstruct, pointer)
    gated = ["--epochs", "1", "--promote", str(pointer)]

    refused = tmp_path / "refused"
    assert main(args(collection, content, vgg_file, refused, *gated)) == 3
    verdict = json.loads((only_run(refused) / "gate.json").read_text())
    assert verdict["candidate_objective"] == "style" and "objectives differ" in verdict["reason"]
    assert pointer.resolve() == reconstruct.resolve()

    first = tmp_path / "first"
    assert (
        main(args(collection, content, vgg_file, first, *gated, "--promote-across-objectives")) == 0
    )
    assert load_checkpoint(pointer).meta.objective == "style"
    worse = tmp_path / "worse"
    assert main(args(collection, content, vgg_file, worse, *gated, "--lr", "1e-9")) == 3
    verdict = json.loads((only_run(worse) / "gate.json").read_text())
    assert verdict["served_objective"] == "style" and verdict["served_loss"] is not None
    assert verdict["candidate_loss"] > verdict["served_loss"]


def photo_jpeg(folder: Path, name: str, size: tuple[int, int] = (96, 64)) -> Path:
    """One of scikit-image's photos, shrunk, as a JPEG in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jpg"
    Image.fromarray(getattr(photos, name)()).resize(size).save(path, quality=92)
    return path


def test_a_style_checkpoint_serves_in_artd_process_and_the_daemon(trained, tmp_path):
    run, _ = trained
    checkpoint = run / "checkpoints" / "best.safetensors"
    inputs = tmp_path / "in"
    for name in ("astronaut", "coffee"):
        photo_jpeg(inputs, name)
    out = tmp_path / "out"
    result = artd(
        "process", inputs, "--out", out, "--checkpoint", checkpoint, "--size", "64",
        "--strength", "0.3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ignoring the sampler settings" in result.stderr
    processed = out / "astronaut.jpg.png"
    meta = read_metadata(processed.read_bytes())
    assert meta["artd:objective"] == "style" and "artd:sampler" not in meta

    root = tmp_path / "root"
    with Daemon(root, checkpoint, strength=0.3, steps=4) as daemon:
        for name in ("astronaut", "coffee"):
            photo_jpeg(root / "inbox", name)
        names = ["astronaut.jpg.png", "coffee.jpg.png"]
        wait_for(lambda: outputs(root) == names, 60, "the style outputs")
        assert not quarantined(root)
        assert "style checkpoint (one pass, no sampler): ignoring" in daemon.log
        assert daemon.stop() == 0
    served = root / "outbox" / "astronaut.jpg.png"
    assert read_metadata(served.read_bytes())["artd:objective"] == "style"
    # One pass, one path: the daemon and artd process give the same pixels.
    assert np.array_equal(np.asarray(Image.open(served)), np.asarray(Image.open(processed)))
    assert np.asarray(Image.open(served)).shape == (40, 64, 3)


def test_style_under_torchrun_two_processes(collection, content, vgg_file, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = args(collection, content, vgg_file, out, "--epochs", "1", "--batch-size", "2")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "core.train", *argv],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run(out)
    assert [r["epoch"] for r in metrics(run)] == [1]
    assert "x2" in (run / "train.log").read_text()
    assert load_checkpoint(run / "checkpoints" / "epoch-001.safetensors").meta.objective == "style"
