"""The trainer end to end on tiny data: files, rejects, resume, retention, VGG, gate, torchrun.

Runs call ``core.train.main`` in-process (the same code ``python -m core.train`` runs) where
only the result matters, and a real subprocess where the exit status, the message or
several processes are the point.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torchvision.models.vgg import cfgs, make_layers

from core.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from core.config import SettingsError
from core.network.model import ConvDiffusionModel
from core.synthetic import procedural
from core.train import main
from core.training.command import parse_settings
from core.training.gate import EXIT_NOT_PROMOTED
from core.training.losses import VGG16_FILENAME

REPO = Path(__file__).resolve().parents[1]
CORRUPT = {"broken.jpg": "not_an_image", "empty.jpg": "empty_file", "cut.jpg": "truncated"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """16 procedural images (class sub-folders, mixed aspect) plus three broken files."""
    root = tmp_path_factory.mktemp("art")
    paths = procedural.write_dataset(root, 16, 40, seed=11, vary_aspect=True)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (root / "empty.jpg").write_bytes(b"")
    (root / "cut.jpg").write_bytes(paths[0].read_bytes()[:400])
    return root


@pytest.fixture
def vgg_in_hub_cache(tmp_path, monkeypatch) -> Path:
    """A small random VGG16 features file where torchvision's cache would hold the real one."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    path = tmp_path / "torch-home" / "hub" / "checkpoints" / VGG16_FILENAME
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    layers = make_layers(cfgs["D"])[:16]
    torch.save({f"features.{k}": v for k, v in layers.state_dict().items()}, path)
    return path


def args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(data), "--out", str(out), "--epochs", "2", "--batch-size", "4",
        "--image-size", "32", "--num-workers", "0", "--no-tensorboard", "--no-vgg-download",
        *extra,
    ]  # fmt: skip


def only_run(out: Path) -> Path:
    runs = sorted(out.glob("run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def files_in(run: Path) -> set[str]:
    return {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


EXPECTED_FILES = {
    "settings.json",
    "manifest.jsonl",
    "rejected.jsonl",
    "metrics.jsonl",
    "loss.png",
    "last.pt",
    "train.log",
    "checkpoints/best.safetensors",
    "checkpoints/epoch-002.safetensors",
    "samples/epoch-002.png",
}


def test_end_to_end_run_writes_exactly_the_expected_files(data_dir, tmp_path, vgg_in_hub_cache):
    out = tmp_path / "out"
    assert main(args(data_dir, out)) == 0  # perceptual weight 1.0: VGG from the hub cache

    run = only_run(out)
    assert files_in(run) == EXPECTED_FILES
    assert "VGG16 weights from the hub cache" in (run / "train.log").read_text()
    assert (out / ".cache" / "stretch-32" / "images.u8").is_file()

    rejected = [json.loads(line) for line in (run / "rejected.jsonl").read_text().splitlines()]
    assert {r["path"]: r["reason"] for r in rejected} == CORRUPT
    manifest_bytes = (run / "manifest.jsonl").read_bytes()
    manifest = [json.loads(line) for line in manifest_bytes.decode().splitlines()]
    assert len(manifest) == 16 and not {m["path"] for m in manifest} & set(CORRUPT)

    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("loss", "mse", "perceptual", "val_mse", "val_psnr", "lr", "images_per_s"):
        assert all(isinstance(r[key], float) for r in rows), key
    assert rows[0]["perceptual"] > 0 and rows[0]["lr"] == 1e-3

    ckpt = load_checkpoint(run / "checkpoints" / "epoch-002.safetensors")
    assert ckpt.meta.image_space == "pixel" and ckpt.meta.epoch == 2
    assert ckpt.meta.objective == "reconstruct" and ckpt.meta.diffusion is None
    assert ckpt.meta.sampler == {} and ckpt.meta.normalization["std"] == [0.229, 0.224, 0.225]
    assert ckpt.meta.train_size == 32 and ckpt.meta.resize == "stretch"
    assert ckpt.meta.dataset_hash == hashlib.sha256(manifest_bytes).hexdigest()
    assert ckpt.meta.settings["perceptual_weight"] == 1.0
    assert ckpt.meta.metrics["val_psnr"] == pytest.approx(rows[1]["val_psnr"])
    assert json.loads((run / "settings.json").read_text())["image_size"] == 32

    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and set(state) >= {"model", "optimizer", "scheduler", "rng"}
    from PIL import Image

    grid = Image.open(run / "samples" / "epoch-002.png")
    assert grid.width > grid.height / 2  # input | output, one row per validation image

    # A second run reuses the decode-once cache: nothing is decoded again.
    assert main(args(data_dir, out, "--epochs", "1", "--perceptual-weight", "0")) == 0
    newest = sorted(out.glob("run-*"))[-1]
    assert "0 decoded, 19 from cache" in (newest / "train.log").read_text()


def test_missing_vgg_weights_stop_before_training(data_dir, tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "empty-torch-home"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "core.train", *args(data_dir, tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    expected = tmp_path / "empty-torch-home" / "hub" / "checkpoints" / VGG16_FILENAME
    assert str(expected) in result.stderr
    assert "--vgg-weights" in result.stderr and "--perceptual-weight 0" in result.stderr
    assert not list((tmp_path / "out").glob("run-*"))


def test_bad_settings_fail_at_start_naming_the_setting(data_dir, tmp_path, monkeypatch, capsys):
    assert main(["--data", str(data_dir), "--epochs", "many"]) == 2
    assert "epochs" in capsys.readouterr().err
    assert main(["--data", str(data_dir), "--image-size", "30"]) == 2
    assert "image_size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--data", str(data_dir), "--epoks", "3"])
    assert info.value.code == 2

    monkeypatch.setenv("ARTD_TRAIN_BATCH_SIZE", "big")
    with pytest.raises(SettingsError, match="batch_size"):
        parse_settings(["--data", str(data_dir)])
    monkeypatch.delenv("ARTD_TRAIN_BATCH_SIZE")
    monkeypatch.setenv("ARTD_TRAIN_EPOCS", "3")
    with pytest.raises(SettingsError, match="ARTD_TRAIN_EPOCS"):
        parse_settings(["--data", str(data_dir)])
    monkeypatch.delenv("ARTD_TRAIN_EPOCS")

    config = tmp_path / "train.toml"
    config.write_text('epochs = 7\nlr = 0.01\nresize = "crop"\n')
    monkeypatch.setenv("ARTD_TRAIN_LR", "0.5")
    s = parse_settings(["--data", str(data_dir), "--config", str(config), "--epochs", "9"])
    assert (s.epochs, s.lr, s.resize, s.batch_size) == (9, 0.5, "crop", 32)  # flag > env > file
    config.write_text("epoch = 7\n")
    with pytest.raises(SettingsError, match="epoch"):
        parse_settings(["--data", str(data_dir), "--config", str(config)])


def test_resume_matches_an_uninterrupted_run_and_retention_holds(data_dir, tmp_path):
    common = ["--perceptual-weight", "0", "--deterministic", "--seed", "5"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    every_epoch = ["--checkpoint-every", "1", "--keep-last", "2"]
    assert main(args(data_dir, straight, "--epochs", "3", *every_epoch, *common)) == 0
    assert main(args(data_dir, resumed, "--epochs", "2", *common)) == 0
    # A state saved before objectives existed resumes as the reconstruct run it is.
    state_file = only_run(resumed) / "last.pt"
    state = torch.load(state_file, weights_only=True)
    del state["settings"]["objective"]
    torch.save(state, state_file)
    assert main(args(data_dir, resumed, "--epochs", "3", "--resume", "latest", *common)) == 0

    a, b = only_run(straight), only_run(resumed)
    weights_a = load_file(a / "checkpoints" / "epoch-003.safetensors")
    weights_b = load_file(b / "checkpoints" / "epoch-003.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)  # bit for bit
    assert [r["epoch"] for r in metrics(b)] == [1, 2, 3]
    assert [r["loss"] for r in metrics(b)] == [r["loss"] for r in metrics(a)]

    # Retention: the last two epoch checkpoints plus the best by validation loss.
    kept = {p.name for p in (a / "checkpoints").iterdir()}
    assert kept == {"epoch-002.safetensors", "epoch-003.safetensors", "best.safetensors"}
    rows = metrics(a)
    best_epoch = min(rows, key=lambda r: r["val_loss"])["epoch"]
    assert load_checkpoint(a / "checkpoints" / "best.safetensors").meta.epoch == best_epoch

    assert main(args(data_dir, tmp_path / "nothing", "--resume", "latest", *common)) == 1


def write_black_model(path: Path) -> Path:
    """A deliberately useless served model: its output is black whatever the input."""
    model = ConvDiffusionModel()
    with torch.no_grad():
        model.dec3[0].bias.fill_(-30.0)
    return save_checkpoint(path, model.state_dict(), CheckpointMeta(train_size=32))


def test_gate_promotes_a_better_model_and_keeps_a_worse_one(data_dir, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    pointer = served / "current"
    os.symlink(write_black_model(served / "black.safetensors"), pointer)
    quick = ["--perceptual-weight", "0", "--promote", str(pointer)]

    good_out = tmp_path / "good"
    assert main(args(data_dir, good_out, "--epochs", "3", *quick)) == 0
    good_run = only_run(good_out)
    assert pointer.is_symlink()
    assert pointer.resolve() == (good_run / "checkpoints" / "best.safetensors").resolve()
    assert json.loads((good_run / "gate.json").read_text())["promoted"] is True

    link_before = os.readlink(pointer)
    bad_out = tmp_path / "bad"
    assert main(args(data_dir, bad_out, "--epochs", "1", "--lr", "1e-9", *quick)) == 3
    assert EXIT_NOT_PROMOTED == 3
    assert os.readlink(pointer) == link_before
    verdict = json.loads((only_run(bad_out) / "gate.json").read_text())
    assert verdict["promoted"] is False and verdict["candidate_loss"] > verdict["served_loss"]


def test_torchrun_two_processes_write_one_run(data_dir, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "core.train", *args(data_dir, out, "--perceptual-weight", "0",
                                      "--batch-size", "2", "--device", "cpu"),
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run(out)
    assert files_in(run) == EXPECTED_FILES
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]  # one writer, not one line per process
    assert "x2" in (run / "train.log").read_text()  # both processes trained
