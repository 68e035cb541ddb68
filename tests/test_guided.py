"""The ``guided`` objective end to end (core/objectives/guided.py, core/network/guide.py) and the
diffusion sampler's working scale: training records the guide and the recommended working
size, resumes bit for bit, passes the gate by its own figure; bad settings and bad files are
refused by name; ``artd process``, ``artd generate`` and the real daemon serve a tiny guided
checkpoint on two scikit-image photos; denoise checkpoints sample exactly as before.
Real files, real torch, real subprocesses, 32 px training on the CPU."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from checkpoint_kit import rewrite_meta
from conftest import seeded_model, textured_image
from daemon_harness import Daemon, wait_for
from loguru import logger
from PIL import Image
from safetensors.torch import load_file
from test_oneshot import artd
from test_sampling_commands import metadata, pixels, sampler_of, save_denoise_checkpoint
from test_training_denoise import metrics, only_run

from core.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, save_checkpoint
from core.config import SettingsError, load_settings, settings_from_flags
from core.diffusion.sampler_settings import SamplerRequest, SamplerSettings
from core.diffusion.schedule import image_seed
from core.network.guide import Guide, gaussian_blur
from core.runtime.engine import Engine
from core.runtime.samplers import GuidedSampler, seeds_for, working_shape
from core.synthetic import procedural
from core.train import main
from daemon.settings import DaemonSettings, JobError, ProcessSettings, Resolver

SIZE = 32
WORKING = 80  # 2.5 x SIZE, a multiple of 8: the recommended working size
SHA = "ab" * 32  # an input's content hash, for seeds

pytestmark = pytest.mark.usefixtures("one_thread")


# --- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 engraving-style images: the collection a guided run learns its manner from."""
    root = tmp_path_factory.mktemp("collection")
    procedural.write_dataset(root, 24, 40, seed=3, styles=("engraving",))
    return root


def args(data: Path, out: Path, *extra: str, objective: str = "guided") -> list[str]:
    return [
        "--objective", objective, "--data", str(data), "--out", str(out), "--epochs", "1",
        "--batch-size", "8", "--image-size", str(SIZE), "--num-workers", "0", "--device", "cpu",
        "--no-tensorboard", "--perceptual-weight", "0", "--val-fraction", "0.25",
        "--sample-steps", "2", "--sample-count", "2", *extra,
    ]  # fmt: skip


def errors_of(argv: list[str]) -> tuple[int, str]:
    """``core.train.main(argv)``'s exit status and its ERROR log lines."""
    messages: list[str] = []
    sink = logger.add(messages.append, level="ERROR")
    try:
        status = main(argv)
    finally:
        logger.remove(sink)
    return status, "".join(messages)


@pytest.fixture(scope="module")
def guided_run(collection: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of a luminance-guided run: the tiny checkpoint every serving test uses."""
    out = tmp_path_factory.mktemp("guided")
    assert main(args(collection, out, "--seed", "5")) == 0
    return only_run(out)


@pytest.fixture(scope="module")
def guided(guided_run: Path) -> Path:
    return guided_run / "checkpoints" / "best.safetensors"


@pytest.fixture(scope="module")
def denoise_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_denoise_checkpoint(tmp_path_factory.mktemp("denoise") / "denoise.safetensors")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real photos (scikit-image's astronaut and cat) as PNG, plus a second crop of the
    astronaut at the first one's size, so that two files share a batch."""
    folder = tmp_path_factory.mktemp("photos") / "in"
    folder.mkdir()
    astronaut = Image.fromarray(skimage.data.astronaut())
    lanczos = Image.Resampling.LANCZOS
    astronaut.resize((160, 160), lanczos).save(folder / "astronaut.png")
    astronaut.crop((128, 0, 512, 384)).resize((160, 160), lanczos).save(folder / "face.png")
    Image.fromarray(skimage.data.chelsea()).resize((192, 128), lanczos).save(folder / "cat.png")
    return folder


def without_date(path: Path) -> dict[str, str]:
    """An output's metadata but its creation time (to the second, so two runs may differ)."""
    meta = metadata(path)
    del meta["artd:created"]
    return meta


def photo_tensor(folder: Path, name: str, size: int) -> torch.Tensor:
    """A photo as 0..1 NCHW pixels at ``size`` x ``size``."""
    with Image.open(folder / name) as image:
        resized = image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1)[None].float() / 255


# --- 1. training ---------------------------------------------------------------------------


def test_a_guided_run_records_its_guide_and_working_size(
    collection: Path, guided_run: Path, tmp_path: Path
) -> None:
    best = load_checkpoint(guided_run / "checkpoints" / "best.safetensors")
    meta = best.meta
    assert meta.objective == "guided" and meta.settings["objective"] == "guided"
    assert meta.guide == {
        "abstraction": "luminance", "blur_min": 1.5, "blur_max": 4.0, "serve_blur": 1.5,
        "dropout": 0.0, "scale": 1.0, "channels": 2,
    }  # fmt: skip
    assert meta.sampler == {"strength": 0.5, "steps": 2, "eta": 1.0, "working_size": WORKING}
    assert meta.diffusion is not None and meta.normalization == {"mean": [0.5] * 3,
                                                                 "std": [0.5] * 3}  # fmt: skip
    assert tuple(best.state_dict["enc1.0.weight"].shape) == (64, 5, 3, 3)  # 3 + luma + presence
    assert tuple(best.state_dict["enc2.0.weight"].shape) == (128, 64, 3, 3)  # the rest as before
    assert (guided_run / "samples" / "epoch-001.png").is_file()
    assert "training 1 (guided) epochs" in (guided_run / "train.log").read_text()
    rows = metrics(guided_run)
    assert [row["epoch"] for row in rows] == [1]
    assert all(np.isfinite(row["val_loss"]) for row in rows)

    colour, denoise = tmp_path / "colour", tmp_path / "denoise"
    assert main(args(collection, colour, "--guide-abstraction", "colour")) == 0
    colour_ckpt = load_checkpoint(only_run(colour) / "checkpoints" / "best.safetensors")
    assert colour_ckpt.meta.guide is not None
    assert colour_ckpt.meta.guide["abstraction"] == "colour"
    assert colour_ckpt.meta.guide["channels"] == 4  # RGB + presence
    assert tuple(colour_ckpt.state_dict["enc1.0.weight"].shape) == (64, 7, 3, 3)
    engine = Engine.from_path(colour_ckpt.path, device="cpu", precision="fp32")
    (served,) = engine.run_images([textured_image(48, 32)])
    assert isinstance(served, Image.Image) and served.size == (48, 32)

    assert main(args(collection, denoise, objective="denoise")) == 0
    assert set(rows[0]) == set(metrics(only_run(denoise))[0])  # the same metrics.jsonl keys
    plain = load_checkpoint(only_run(denoise) / "checkpoints" / "best.safetensors").meta
    assert plain.guide is None and "working_size" not in plain.sampler


# --- 2. bit-exact resume -------------------------------------------------------------------


def test_a_guided_run_resumes_bit_exactly_with_guide_dropout(
    collection: Path, tmp_path: Path
) -> None:
    common = ["--deterministic", "--seed", "5", "--guide-dropout", "0.3"]
    straight, resumed, kept = tmp_path / "straight", tmp_path / "resumed", tmp_path / "kept"
    assert main(args(collection, straight, "--epochs", "2", *common)) == 0
    assert main(args(collection, resumed, "--epochs", "1", *common)) == 0
    assert main(args(collection, resumed, "--epochs", "2", "--resume", "latest", *common)) == 0
    # The same run with every guide kept: the withheld guides are what it learnt from.
    no_dropout = [*common[:-1], "0"]
    assert main(args(collection, kept, "--epochs", "2", *no_dropout)) == 0

    def weights(out: Path) -> dict[str, torch.Tensor]:
        return load_file(only_run(out) / "checkpoints" / "epoch-002.safetensors")

    a, b, c = weights(straight), weights(resumed), weights(kept)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert [r["loss"] for r in metrics(only_run(resumed))] == [
        r["loss"] for r in metrics(only_run(straight))
    ]
    meta = load_checkpoint(only_run(resumed) / "checkpoints" / "epoch-002.safetensors").meta
    assert meta.guide is not None and meta.guide["dropout"] == 0.3

    # The guide's abstraction is the network's shape: a resumed run cannot change it.
    again = args(collection, resumed, "--epochs", "3", "--resume", "latest", *common,
                 "--guide-abstraction", "colour")  # fmt: skip
    status, errors = errors_of(again)
    assert status == 1
    assert "the run's guide keeps luminance, not colour" in errors
    assert "start a new run to change the guide" in errors


# --- 3. the gate ---------------------------------------------------------------------------


def test_the_gate_judges_guided_runs_by_their_figure_and_never_across_objectives(
    collection: Path, tmp_path: Path
) -> None:
    pointer = tmp_path / "served" / "current"
    gated = ["--promote", str(pointer), "--seed", "5"]
    first = tmp_path / "first"
    assert main(args(collection, first, *gated)) == 0  # nothing served: promoted
    first_best = only_run(first) / "checkpoints" / "best.safetensors"
    verdict = json.loads((only_run(first) / "gate.json").read_text())
    assert verdict["promoted"] and verdict["reason"] == "nothing usable is served yet"
    assert verdict["candidate_objective"] == "guided"
    assert pointer.resolve() == first_best.resolve()

    worse = tmp_path / "worse"
    assert main(args(collection, worse, *gated, "--lr", "1e-9")) == 3
    judged = json.loads((only_run(worse) / "gate.json").read_text())
    assert judged["served_objective"] == judged["candidate_objective"] == "guided"
    # The served guided model judged on the same split by the same (guided) figure as when
    # it was the candidate: the figure is fixed, its noise and its guides keyed by image.
    assert judged["served_loss"] == verdict["candidate_loss"]
    assert judged["candidate_loss"] > judged["served_loss"]
    assert judged["reason"].startswith("new val loss") and " > served " in judged["reason"]
    assert "gate: kept" in (only_run(worse) / "train.log").read_text()
    assert pointer.resolve() == first_best.resolve()

    # A served denoise model: a guided candidate is not compared with it.
    denoise_pointer = tmp_path / "denoise-served" / "current"
    denoised = tmp_path / "denoise"
    assert main(args(collection, denoised, "--promote", str(denoise_pointer),
                     objective="denoise")) == 0  # fmt: skip
    denoise_best = (only_run(denoised) / "checkpoints" / "best.safetensors").resolve()
    across = ["--promote", str(denoise_pointer)]
    refused = tmp_path / "refused"
    assert main(args(collection, refused, *across)) == 3
    verdict = json.loads((only_run(refused) / "gate.json").read_text())
    assert verdict["promoted"] is False and verdict["served_loss"] is None
    assert (verdict["served_objective"], verdict["candidate_objective"]) == ("denoise", "guided")
    assert "objectives differ (served denoise, candidate guided)" in verdict["reason"]
    assert denoise_pointer.resolve() == denoise_best

    allowed = tmp_path / "allowed"
    assert main(args(collection, allowed, *across, "--promote-across-objectives")) == 0
    assert denoise_pointer.resolve() == (only_run(allowed) / "checkpoints" / "best.safetensors")
    assert load_checkpoint(denoise_pointer).meta.objective == "guided"


# --- 4. settings refused by name -----------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--objective", "denoise", "--guide-dropout", "0.2"],
         "guide_dropout (--guide-dropout, ARTD_TRAIN_GUIDE_DROPOUT): Value error, guide_dropout "
         "0.2 is only for --objective guided"),
        (["--objective", "reconstruct", "--guide-abstraction", "colour"],
         "guide_abstraction (--guide-abstraction"),
        (["--guide-blur-max", "1", "--guide-blur-min", "2"],
         "guide_blur_max (--guide-blur-max, ARTD_TRAIN_GUIDE_BLUR_MAX): Value error, must be at "
         "least guide_blur_min (2.0)"),
        (["--guide-dropout", "1"], "guide_dropout (--guide-dropout"),
        (["--guidance-scale", "0.5"], "guidance_scale (--guidance-scale"),
    ],
    ids=["dropout-on-denoise", "abstraction-on-reconstruct", "blur-range", "dropout-1",
         "scale-below-1"],
)  # fmt: skip
def test_bad_guide_settings_are_refused_naming_the_setting(
    collection: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra, named
) -> None:
    out = tmp_path / "out"
    assert main([*args(collection, out), *extra]) == 2  # later flags win over args' own
    assert named in capsys.readouterr().err
    assert not out.exists() or not list(out.glob("run-*"))


def test_bad_working_size_and_refine_are_refused_naming_the_setting(
    tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch, pixel_checkpoint: Path
) -> None:
    done = artd("process", photos, "--out", tmp_path / "out", "--working-size", "10")
    assert done.returncode == 1
    assert (
        "working_size (--working-size): Value error, must be auto, 0 (the output size) or "
        "32..8192 pixels, got 10"
    ) in done.stderr
    assert not (tmp_path / "out").exists()
    for name, value in (("working_size", "big"), ("working_size", "8200"), ("refine", "2"),
                        ("refine", "-0.1"), ("refine", "nan")):  # fmt: skip
        with pytest.raises(SettingsError, match=rf"{name} \(--{name.replace('_', '-')}\)"):
            settings_from_flags(ProcessSettings, {name: value})
    good = settings_from_flags(ProcessSettings, {"working_size": "0", "refine": "0.25"})
    assert good.sampler_request().given() == {"working_size": 0, "refine": 0.25}
    auto = settings_from_flags(ProcessSettings, {"working_size": "auto"}).sampler_request()
    assert auto.working_size is None  # auto: the model's recommendation

    for key in [k for k in os.environ if k.startswith("ARTD_")]:
        monkeypatch.delenv(key)
    base = {"root": str(tmp_path / "root"), "checkpoint": str(pixel_checkpoint)}
    monkeypatch.setenv("ARTD_WORKING_SIZE", "big")
    with pytest.raises(SettingsError, match=r"working_size \(--working-size, ARTD_WORKING_SIZE\)"):
        load_settings(DaemonSettings, base)
    monkeypatch.setenv("ARTD_WORKING_SIZE", "64")
    monkeypatch.setenv("ARTD_REFINE", "2")
    with pytest.raises(SettingsError, match=r"refine \(--refine, ARTD_REFINE\)"):
        load_settings(DaemonSettings, base)
    monkeypatch.delenv("ARTD_REFINE")
    assert load_settings(DaemonSettings, base).sampler_request().working_size == 64
    monkeypatch.delenv("ARTD_WORKING_SIZE")
    config = tmp_path / "artd.toml"
    config.write_text("working_size = 5\n")
    in_file = r"working_size \(--working-size, ARTD_WORKING_SIZE, \S+artd\.toml key working_size\)"
    with pytest.raises(SettingsError, match=in_file):
        load_settings(DaemonSettings, base, config)
    config.write_text("working_size = 96\nrefine = 0.3\n")
    loaded = load_settings(DaemonSettings, base, config)
    assert loaded.sampler_request().given() == {"working_size": 96, "refine": 0.3}

    # A preset is refused at start, naming it and the key; a sidecar's job is refused.
    with pytest.raises(ValueError, match="preset 'w': key 'working_size'"):
        DaemonSettings(**base, presets={"w": {"working_size": 5}})
    with pytest.raises(ValueError, match="preset 'w': key 'refine'"):
        DaemonSettings(**base, presets={"w": {"refine": 1.5}})
    resolver = Resolver(DaemonSettings(**base, presets={"w": {"working_size": 48}}))
    job = resolver.resolve(PurePosixPath("w/a.jpg"), None)
    assert job["settings"]["working_size"] == 48
    assert resolver.resolve(PurePosixPath("a.jpg"), None)["settings"]["working_size"] == "auto"
    job = resolver.resolve(PurePosixPath("a.jpg"), b'{"working_size": 0, "refine": 0.5}')
    assert (job["settings"]["working_size"], job["settings"]["refine"]) == (0, 0.5)
    for text, key in (('{"working_size": 5}', "working_size"), ('{"refine": 3}', "refine"),
                      ('{"working_size": "huge"}', "working_size")):  # fmt: skip
        with pytest.raises(JobError, match=f"sidecar a.jpg.artd.json: key '{key}'"):
            resolver.resolve(PurePosixPath("a.jpg"), text.encode())


# --- 5. refusals naming the checkpoint file ------------------------------------------------


def test_a_guided_checkpoint_without_its_guide_is_refused_naming_the_file(
    guided: Path, tmp_path: Path, photos: Path
) -> None:
    trained = load_checkpoint(guided)
    # Its own weights (5 input channels) with no guide: save refuses to write it...
    unguided = dataclasses.replace(trained.meta, guide=None)
    target = tmp_path / "saved.safetensors"
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(target, trained.state_dict, unguided)
    assert str(target) in str(info.value)
    assert "enc1.0.weight expected (64, 3, 3, 3) got (64, 5, 3, 3)" in str(info.value)
    assert not target.exists()
    # ... so the file is written with the guide cut out of its header.
    cut = tmp_path / "cut.safetensors"
    shutil.copy(guided, cut)
    rewrite_meta(cut, lambda meta: meta.pop("guide"))
    for load in (load_checkpoint, lambda p: Engine.from_path(p, device="cpu")):
        with pytest.raises(CheckpointError) as info:
            load(cut)
        assert str(cut) in str(info.value)
        assert "enc1.0.weight expected (64, 3, 3, 3) got (64, 5, 3, 3)" in str(info.value)
    done = artd("process", photos / "cat.png", "--out", tmp_path / "out", "--checkpoint", cut,
                "--device", "cpu")  # fmt: skip
    assert done.returncode == 1
    assert "cannot load the model" in done.stderr and str(cut) in done.stderr
    assert not (tmp_path / "out").exists()

    # A guided header, no guide, weights of the unguided network: they load, but it cannot
    # be served: the engine refuses it, saying what is missing.
    bare = save_checkpoint(tmp_path / "bare.safetensors", seeded_model(0).state_dict(), unguided)
    assert load_checkpoint(bare).meta.guide is None
    with pytest.raises(
        CheckpointError, match=r"bare.safetensors: a guided checkpoint must record its guide"
    ):
        Engine.from_path(bare, device="cpu")


def test_the_missing_guide_refusal_names_the_file(guided: Path, tmp_path: Path) -> None:
    unguided = dataclasses.replace(load_checkpoint(guided).meta, guide=None)
    bare = save_checkpoint(tmp_path / "bare.safetensors", seeded_model(0).state_dict(), unguided)
    with pytest.raises(CheckpointError) as info:
        Engine.from_path(bare, device="cpu")
    assert "guide" in str(info.value) and str(bare) in str(info.value)


def test_weights_without_the_guides_channels_are_refused_naming_the_file_and_the_shape(
    guided: Path, denoise_checkpoint: Path, tmp_path: Path
) -> None:
    meta = load_checkpoint(guided).meta
    target = tmp_path / "saved.safetensors"
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(target, seeded_model(0).state_dict(), meta)  # 3 input channels
    message = str(info.value)
    assert str(target) in message and "(2 guide channels)" in message
    assert "enc1.0.weight expected (64, 5, 3, 3) got (64, 3, 3, 3)" in message
    assert not target.exists()

    relabelled = tmp_path / "relabelled.safetensors"
    shutil.copy(denoise_checkpoint, relabelled)

    def as_guided(data: dict) -> None:
        data["objective"], data["guide"] = "guided", Guide().to_dict()

    rewrite_meta(relabelled, as_guided)
    for load in (load_checkpoint, lambda p: Engine.from_path(p, device="cpu")):
        with pytest.raises(CheckpointError) as info:
            load(relabelled)
        message = str(info.value)
        assert str(relabelled) in message and "(2 guide channels)" in message
        assert "enc1.0.weight expected (64, 5, 3, 3) got (64, 3, 3, 3)" in message

    def bad_channels(data: dict) -> None:
        data["guide"]["channels"] = 9

    shutil.copy(guided, relabelled)
    rewrite_meta(relabelled, bad_channels)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(relabelled)
    assert str(relabelled) in str(info.value) and "guide.channels must be an integer 1..4" in str(
        info.value
    )


@pytest.mark.parametrize(
    "extra", [["--sample-working-size", "10"], ["--image-size", "8"]], ids=["asked-10", "size-8"]
)
def test_a_run_never_writes_a_checkpoint_it_cannot_serve(
    collection: Path, tmp_path: Path, extra: list[str]
) -> None:
    out = tmp_path / "out"
    status = main([*args(collection, out), *extra])
    if status == 0:  # accepted: then what it wrote must be servable
        Engine.from_path(only_run(out) / "checkpoints" / "best.safetensors", device="cpu")
    else:
        assert status == 2 and not list(out.glob("run-*"))


# --- 6. artd process -----------------------------------------------------------------------


def test_artd_process_serves_a_guided_checkpoint_at_a_working_size(
    guided: Path, photos: Path, tmp_path: Path
) -> None:
    model = ("--checkpoint", guided, "--device", "cpu", "--size", "96")

    def run(name: str, *inputs: Path, extra: tuple[str, ...] = ()) -> Path:
        done = artd("process", *inputs, "--out", tmp_path / name, *model, *extra)
        assert done.returncode == 0, done.stderr
        return tmp_path / name

    at48 = ("--working-size", "48")
    first = run("first", photos, extra=(*at48, "--batch", "4"))
    again = run("again", photos, extra=(*at48, "--batch", "4"))
    names = sorted(p.name for p in first.iterdir())
    assert names == ["astronaut.png.png", "cat.png.png", "face.png.png"]
    sizes = {name: Image.open(first / name).size for name in names}
    assert sizes == {"astronaut.png.png": (96, 96), "cat.png.png": (96, 64),
                     "face.png.png": (96, 96)}  # fmt: skip
    recorded = {"strength": 0.5, "steps": 2, "eta": 1.0, "seed": None, "working_size": 48}
    for name in names:
        out = first / name
        assert metadata(out)["artd:objective"] == "guided"
        assert sampler_of(out) == recorded
        assert np.asarray(Image.open(out)).std() > 0
        # Repeats exactly: the same pixels and the same record (but the creation second).
        assert np.array_equal(pixels(out), pixels(again / name)), name
        assert without_date(out) == without_date(again / name)
    assert not np.array_equal(pixels(first / "astronaut.png.png"), pixels(first / "face.png.png"))

    astronaut = photos / "astronaut.png"
    alone = run("alone", astronaut, extra=(*at48, "--batch", "1"))
    # One image alone, or beside another of its size in one batch: the same pixels.
    assert np.array_equal(pixels(alone / "astronaut.png.png"), pixels(first / "astronaut.png.png"))

    refined = run("refined", astronaut, extra=(*at48, "--refine", "0.2"))
    assert sampler_of(refined / "astronaut.png.png") == {**recorded, "refine": 0.2}
    assert not np.array_equal(
        pixels(refined / "astronaut.png.png"), pixels(alone / "astronaut.png.png")
    )

    full = run("full", astronaut, extra=("--working-size", "0"))
    assert sampler_of(full / "astronaut.png.png") == {k: v for k, v in recorded.items()
                                                     if k != "working_size"}  # fmt: skip
    assert not np.array_equal(
        pixels(full / "astronaut.png.png"), pixels(alone / "astronaut.png.png")
    )


def test_the_working_scale_samples_small_then_brings_the_result_up(
    guided: Path, photos: Path
) -> None:
    """What ``--working-size 48`` does at 96 px, done by hand: the photo brought to 48 px and
    sampled there (its guide computed there), the result bicubic up; ``refine`` then changes
    it; a working size the batch is not larger than changes nothing."""
    engine = Engine.from_path(guided, device="cpu", precision="fp32")
    assert isinstance(engine.sampler, GuidedSampler)
    x = photo_tensor(photos, "astronaut.png", 96)
    seeds = [image_seed(SHA, {})]
    at48 = engine.infer(x, seeds, SamplerRequest(working_size=48))
    small = F.interpolate(x, size=(48, 48), mode="bilinear", antialias=True).clamp(0, 1)
    sampled = engine.infer(small, seeds, SamplerRequest(working_size=0))
    by_hand = F.interpolate(sampled, size=(96, 96), mode="bicubic").clamp(0, 1)
    assert at48.shape == (1, 3, 96, 96)
    assert torch.allclose(at48, by_hand, atol=1e-6, rtol=0)
    full = engine.infer(x, seeds, SamplerRequest(working_size=0))
    assert float((full - at48).abs().max()) > 0.05
    refined = engine.infer(x, seeds, SamplerRequest(working_size=48, refine=0.3))
    assert float((refined - at48).abs().max()) > 0.01
    # 96 px is no larger than a working size of 96 or more: sampled at 96, refine unused.
    for request in (SamplerRequest(working_size=96), SamplerRequest(working_size=200, refine=0.5)):
        assert torch.equal(engine.infer(x, seeds, request), full)
    # A strength that takes no step returns the photo exactly, never through the working size.
    for strength in (0.0, 0.02):
        request = SamplerRequest(working_size=48, refine=0.3, strength=strength)
        assert torch.equal(engine.infer(x, seeds, request), x)


def test_the_guide_leads_and_a_withheld_guide_ignores_the_photo(
    guided: Path, photos: Path, tmp_path: Path
) -> None:
    """From noise (strength 1) with one seed: with its guide each photo gives its own
    image; with the guide withheld (``artd generate`` without ``--guide``) the photo is
    not seen at all."""
    engine = Engine.from_path(guided, device="cpu", precision="fp32")
    photos_ = torch.cat([photo_tensor(photos, name, 32) for name in ("astronaut.png", "cat.png")])
    seeds = [image_seed(SHA, {})] * 2
    led = engine.infer(photos_, seeds, SamplerRequest(strength=1.0))
    free = engine.infer(photos_, seeds, SamplerRequest(strength=1.0, guide=False))
    assert float((led[0] - led[1]).abs().max()) > 0.05
    assert torch.equal(free[0], free[1])
    assert float((led[0] - free[0]).abs().max()) > 0.05

    # A guidance scale above 1: the guided and the withheld prediction in one call, mixed.
    scaled = tmp_path / "scaled.safetensors"
    shutil.copy(guided, scaled)

    def scale(meta: dict) -> None:
        meta["guide"]["scale"] = 3.0

    rewrite_meta(scaled, scale)
    boosted = Engine.from_path(scaled, device="cpu", precision="fp32")
    out = boosted.infer(photos_, seeds, SamplerRequest(strength=1.0))
    assert float((out - led).abs().max()) > 0.01 and 0 <= float(out.min()) <= float(out.max()) <= 1
    alone = boosted.infer(photos_[1:], seeds[1:], SamplerRequest(strength=1.0))
    assert torch.allclose(alone[0], out[1], atol=1e-5, rtol=0)


# --- 7. the daemon -------------------------------------------------------------------------


def test_the_daemon_serves_a_guided_checkpoint_at_its_working_size(
    guided: Path, photos: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    with Daemon(root, guided, size=96, sidecar_orphan_seconds=1) as daemon:
        inbox = root / "inbox"
        (inbox / "bad.png.artd.json").write_text('{"working_size": 5}')
        shutil.copy(photos / "cat.png", inbox / "bad.png")
        (inbox / "cat.png.artd.json").write_text('{"working_size": 48}')
        shutil.copy(photos / "cat.png", inbox / "cat.png")
        shutil.copy(photos / "astronaut.png", inbox / "astronaut.png")
        outputs = [root / "outbox" / "cat.png.png", root / "outbox" / "astronaut.png.png"]
        refused = root / "quarantine" / "bad.png.error.json"
        wait_for(lambda: all(p.exists() for p in [*outputs, refused]), 120,
                 f"two outputs and one refusal (log: {daemon.log_path})")  # fmt: skip
        assert daemon.stop() == 0
    cat, astronaut = outputs
    assert metadata(cat)["artd:objective"] == metadata(astronaut)["artd:objective"] == "guided"
    assert sampler_of(cat)["working_size"] == 48  # the sidecar's
    assert sampler_of(astronaut)["working_size"] == WORKING  # auto: the model's recommendation
    assert Image.open(cat).size == (96, 64) and Image.open(astronaut).size == (96, 96)
    error = json.loads(refused.read_text())
    assert error["reason"] == "invalid_sidecar" and "key 'working_size'" in error["message"]


# --- 8. artd generate ----------------------------------------------------------------------


def test_artd_generate_with_and_without_a_guide(
    guided: Path, denoise_checkpoint: Path, photos: Path, tmp_path: Path
) -> None:
    common = ("generate", "--count", "2", "--size", "32x32", "--seed", "11", "--device", "cpu")
    done = artd(*common, "--out", tmp_path / "free", "--checkpoint", guided)
    assert done.returncode == 0, done.stderr
    done = artd(*common, "--out", tmp_path / "led", "--checkpoint", guided,
                "--guide", photos / "astronaut.png")  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = ["11-0000.png", "11-0001.png"]
    assert sorted(p.name for p in (tmp_path / "free").iterdir()) == names
    assert sorted(p.name for p in (tmp_path / "led").iterdir()) == names
    base = {"strength": 1.0, "steps": 2, "eta": 1.0, "seed": None, "working_size": WORKING}
    for name in names:
        free, led = tmp_path / "free" / name, tmp_path / "led" / name
        assert sampler_of(free) == {**base, "guide": False}  # the guide withheld, recorded
        assert sampler_of(led) == base
        assert metadata(free)["artd:source"] == metadata(led)["artd:source"]
        assert pixels(led).shape == (32, 32, 3)
        assert not np.array_equal(pixels(free), pixels(led))

    done = artd(*common, "--out", tmp_path / "denoise", "--checkpoint", denoise_checkpoint,
                "--guide", photos / "astronaut.png")  # fmt: skip
    assert done.returncode == 1
    assert "--guide" in done.stderr and "denoise checkpoint" in done.stderr
    assert "takes no guide image" in done.stderr
    assert not (tmp_path / "denoise").exists()


# --- 9. existing checkpoints sample as before ----------------------------------------------


def test_denoise_checkpoints_keep_their_seeds_and_outputs(denoise_checkpoint: Path) -> None:
    default, spelled = SamplerSettings(), SamplerSettings(working_size=0, refine=0.0, guide=True)
    assert default.to_dict() == spelled.to_dict() == {
        "strength": 0.5, "steps": 25, "eta": 1.0, "seed": None,
    }  # fmt: skip
    before = image_seed(SHA, {"strength": 0.5, "steps": 25, "eta": 1.0, "seed": None})
    assert seeds_for([SHA], default) == seeds_for([SHA], spelled) == [before]
    assert seeds_for([SHA], SamplerSettings(working_size=64)) != [before]  # recorded, so hashed
    assert "guide" not in CheckpointMeta().to_dict()  # every other header as it was

    engine = Engine.from_path(denoise_checkpoint, device="cpu", precision="fp32")
    assert not engine.sampler.takes_guide
    settings = engine.sampler_settings()
    assert settings is not None and settings.to_dict() == {
        "strength": 0.5, "steps": 4, "eta": 1.0, "seed": None,
    }  # fmt: skip
    x = torch.from_numpy(np.asarray(textured_image(32, 32, seed=4)).copy())
    x = x.permute(2, 0, 1)[None].float() / 255
    seeds = [before]
    plain = engine.infer(x, seeds, SamplerRequest())
    for request in (SamplerRequest(working_size=0, refine=0.0), SamplerRequest(working_size=32),
                    SamplerRequest(working_size=64, refine=0.5)):  # fmt: skip
        assert torch.equal(engine.infer(x, seeds, request), plain), request
    wide = torch.cat([x, x], dim=-1)  # 32 x 64: shorter side 32, still no larger than 32
    assert torch.equal(engine.infer(wide, seeds, SamplerRequest(working_size=32)),
                       engine.infer(wide, seeds, SamplerRequest()))  # fmt: skip


# --- 10. working scale and blur units ------------------------------------------------------


def test_working_shape_keeps_the_aspect_in_multiples_of_eight() -> None:
    # 160 / 344 of 512 = 238.1 -> 240, the nearest multiple of 8.
    assert working_shape((344, 512), 160) == (160, 240)
    assert working_shape((512, 344), 160) == (240, 160)
    assert working_shape((96, 96), 48) == (48, 48)
    assert working_shape((64, 96), 48) == (48, 72)
    assert working_shape((8, 4000), 32) is None  # the shorter side decides
    assert working_shape((344, 512), 0) is None
    assert working_shape((160, 512), 160) is None  # no larger than the working size
    assert working_shape((100, 512), 160) is None


def test_gaussian_blur_is_per_image_whatever_the_batch() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 2, 24, 20, generator=generator)
    sigmas = torch.tensor([0.0, 1.5, 3.0])
    batch = gaussian_blur(images, sigmas)
    for i in range(3):
        alone = gaussian_blur(images[i : i + 1], sigmas[i : i + 1])
        assert torch.equal(alone[0], batch[i]), i
    assert torch.equal(batch[0], images[0])  # below 0.3 px: left as it is
    assert float((batch[1] - images[1]).abs().max()) > 0.1
    assert float(batch[2].std()) < float(batch[1].std()) < float(images[1].std())
    # A flat image stays flat at its borders (reflected, normalised kernel).
    flat = torch.full((1, 1, 16, 16), 0.25)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([2.0])), flat, atol=1e-6)
    # The guide of one image does not depend on the others in its batch either.
    guide = Guide()
    pixels = torch.rand(3, 3, 16, 16, generator=generator)
    present = torch.tensor([True, False, True])
    together = guide.abstraction_of(pixels, sigmas, present)
    assert together.shape == (3, 2, 16, 16)
    assert torch.equal(together[1], torch.zeros(2, 16, 16))  # withheld: every channel 0
    assert torch.equal(together[2, 1], torch.ones(16, 16))  # presence
    alone = guide.abstraction_of(pixels[2:], sigmas[2:], present[2:])
    assert torch.equal(alone[0], together[2])
