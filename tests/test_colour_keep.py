"""The ``colour`` setting: ``keep`` puts each output's luminance under its input's own chroma
(core.images.colour.keep_colours) through ``artd process``, the daemon's sidecars and
transparency; ``collection`` leaves outputs as they were, byte for byte; ``auto``, the default,
serves what the checkpoint recommends (``meta.colour``), else ``collection``."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import skimage.color
import skimage.data
from daemon_harness import Daemon, wait_for
from PIL import Image
from test_oneshot import artd
from test_settings import artd_check
from test_transparency import gradient_alpha, write_inputs

from core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from core.config import settings_from_flags
from core.images import loading
from core.images.colour import ColourPolicy, keep_colours
from core.outputs.encoding import read_metadata
from core.outputs.result import encode_result
from core.runtime.engine import Engine
from core.runtime.img2img import Inference, OutputSettings
from daemon.oneshot import process
from daemon.settings import ProcessSettings
from daemon.settings.presets import JobError, validated

pytestmark = pytest.mark.usefixtures("one_thread")


def ycbcr(image: Image.Image | np.ndarray) -> np.ndarray:
    """The Y, Cb and Cr planes (PIL's, JPEG's BT.601) as floats, HxWx3."""
    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    return np.asarray(image.convert("RGB").convert("YCbCr"), np.float64)


def lab_chroma_difference(a: Image.Image, b: Image.Image) -> float:
    """Mean distance between two images' CIE Lab (a*, b*), per pixel."""
    da = skimage.color.rgb2lab(np.asarray(a)) - skimage.color.rgb2lab(np.asarray(b))
    return float(np.hypot(da[..., 1], da[..., 2]).mean())


def given_to_the_model(path: Path, size: int) -> Image.Image:
    """The input at the output size, as the decoders hand it to the model."""
    return loading.load(path, size, colour=ColourPolicy())


def test_keep_through_artd_process_keeps_the_photos_chroma(
    pixel_checkpoint: Path, tmp_path: Path
) -> None:
    photo = tmp_path / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(photo)
    for mode in ("collection", "keep"):
        done = artd("process", photo, "--out", tmp_path / mode, "--checkpoint", pixel_checkpoint,
                    "--size", "256", "--colour", mode, "--device", "cpu")  # fmt: skip
        assert done.returncode == 0, done.stderr
    keep = Image.open(tmp_path / "keep" / "coffee.png.png")
    collection = Image.open(tmp_path / "collection" / "coffee.png.png")
    given = given_to_the_model(photo, 256)
    assert keep.size == collection.size == given.size == (256, 168)
    kept, made, source = ycbcr(keep), ycbcr(collection), ycbcr(given)
    assert np.abs(kept[..., 1:] - source[..., 1:]).mean() < 1.0  # the input's Cb, Cr
    assert np.abs(kept[..., 0] - made[..., 0]).mean() < 1.0  # the model's Y
    # The fixture's random network moves lightness by ~25 L*, and Lab's a*, b* move with L*
    # even where Cb, Cr do not: about 4 for keep, against 54 for the model's own colours.
    kept_chroma = lab_chroma_difference(keep, given)
    assert kept_chroma < 5.0
    assert lab_chroma_difference(collection, given) > 8 * kept_chroma
    settings = json.loads(read_metadata((tmp_path / "keep" / "coffee.png.png").read_bytes())[
        "artd:settings"])  # fmt: skip
    assert settings["palette"] == "keep"


def test_collection_is_byte_identical_to_the_setting_absent(
    pixel_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FixedClock(datetime):
        @classmethod
        def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
            return datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    monkeypatch.setattr("core.outputs.provenance.datetime", FixedClock)
    photo = tmp_path / "in" / "astronaut.png"
    photo.parent.mkdir()
    Image.fromarray(skimage.data.astronaut()[::4, ::4]).save(photo)
    engine = Engine.from_path(pixel_checkpoint, device="cpu")
    written = {}
    for name, flags in (("absent", {}), ("collection", {"colour": "collection"})):
        settings = settings_from_flags(ProcessSettings, {"size": 64, **flags})
        output = OutputSettings.from_settings(settings)
        assert output.recorded() == {"size": 64, "resize": "fit", "format": "png"}
        process([photo], tmp_path / name, engine, size=64, resize="fit", fmt="png",
                output=output, progress=False)  # fmt: skip
        written[name] = (tmp_path / name / "astronaut.png.png").read_bytes()
    assert written["absent"] == written["collection"]
    assert "palette" not in read_metadata(written["absent"])["artd:settings"]


def test_a_sidecar_asks_for_keep_in_the_daemon(pixel_checkpoint: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    photo = Image.fromarray(skimage.data.astronaut()[::4, ::4])  # 128x128, the daemon makes 64
    photo.save(tmp_path / "photo.png")
    with Daemon(root, pixel_checkpoint):
        inbox = root / "inbox"
        (inbox / "kept.png.artd.json").write_text('{"colour": "keep"}')  # the sidecar first
        photo.save(inbox / "kept.png")
        photo.save(inbox / "plain.png")
        done = [root / "outbox" / f"{n}.png.png" for n in ("kept", "plain")]
        wait_for(lambda: all(p.exists() for p in done), 60, "both outputs")
    given = ycbcr(given_to_the_model(tmp_path / "photo.png", 64))
    kept, plain = (Image.open(p) for p in done)
    assert np.abs(ycbcr(kept)[..., 1:] - given[..., 1:]).mean() < 2.0
    assert np.abs(ycbcr(plain)[..., 1:] - given[..., 1:]).mean() > 5.0
    assert np.abs(ycbcr(kept)[..., 0] - ycbcr(plain)[..., 0]).mean() < 1.0
    recorded = [json.loads(read_metadata(p.read_bytes())["artd:settings"]) for p in done]
    assert recorded[0]["palette"] == "keep" and recorded[0]["job"]["colour"] == "keep"
    assert recorded[0]["sidecar"] == "kept.png.artd.json"
    assert "palette" not in recorded[1]  # the default, collection, is recorded by its absence


def test_a_bad_colour_is_refused_naming_the_setting(tmp_path: Path) -> None:
    done = artd_check(tmp_path, ARTD_COLOUR="purple")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "colour (--colour, ARTD_COLOUR)" in done.stderr, done.stderr
    with pytest.raises(JobError) as refused:
        validated({"colour": "purple"}, "sidecar")
    assert refused.value.key == "colour"
    # artd generate has no input: like every input-only output setting, not one of its flags.
    generate = artd("generate", "--out", tmp_path / "gen", "--colour", "keep")
    assert generate.returncode == 2
    assert "unrecognized arguments: --colour keep" in generate.stderr


def test_keep_on_rgba_keeps_the_alpha(pixel_checkpoint: Path, tmp_path: Path) -> None:
    files = write_inputs(tmp_path / "in")
    engine = Engine.from_path(pixel_checkpoint, device="cpu")
    out = tmp_path / "out"
    settings = OutputSettings(128, palette="keep")
    report = process([files["rgba"]], out, engine, size=128, resize="fit", fmt="png",
                     output=settings, progress=False)  # fmt: skip
    assert not report.rejected
    with Image.open(out / "rgba.png.png") as img:
        assert img.mode == "RGBA" and img.size == (128, 128)
        rgba = np.asarray(img)
    assert np.abs(rgba[..., 3].astype(int) - gradient_alpha(128, 128)).max() <= 3
    # Where it is opaque, the colour under the alpha is the input's chroma.
    given = np.asarray(loading.load(files["rgba"], 128, colour=ColourPolicy(), keep_alpha=True))
    opaque = (slice(None), slice(120, None))
    chroma = ycbcr(rgba[..., :3])[opaque][..., 1:] - ycbcr(given[..., :3])[opaque][..., 1:]
    assert np.abs(chroma).mean() < 1.5


def test_keep_colours_of_the_input_itself_is_the_input() -> None:
    photo = Image.fromarray(skimage.data.coffee()[::4, ::4])
    assert np.array_equal(np.asarray(keep_colours(photo, np.asarray(photo))), np.asarray(photo))
    grey = photo.convert("L").convert("RGB")
    merged = ycbcr(keep_colours(grey, photo))
    assert np.abs(merged[..., 0] - ycbcr(grey)[..., 0]).mean() < 1.0


def test_auto_serves_the_colour_the_checkpoint_recommends(
    pixel_checkpoint: Path, tmp_path: Path
) -> None:
    """``colour = auto`` (the default) is the checkpoint's ``meta.colour``, else the model's
    own; an explicit setting wins; the output records what was served."""
    served = load_checkpoint(pixel_checkpoint)
    keeping = save_checkpoint(tmp_path / "keeping.safetensors", served.state_dict,
                              dataclasses.replace(served.meta, colour="keep"))  # fmt: skip
    assert load_checkpoint(keeping).meta.colour == "keep"
    assert "colour" not in served.meta.to_dict()  # no recommendation, no field: as before
    photo = np.asarray(given_to_the_model(write_photo(tmp_path), 64))
    engine = Engine.from_path(keeping, device="cpu")
    chroma = {}
    for asked in ("auto", "collection", "keep"):
        inference = Inference(engine, OutputSettings(64, palette=asked))
        assert inference.output.palette == ("keep" if asked == "auto" else asked)
        (result,) = inference.run([photo], ["0" * 64])
        chroma[asked] = np.abs(ycbcr(result)[..., 1:] - ycbcr(photo)[..., 1:]).mean()
        recorded = inference.output.recorded()
        assert recorded.get("palette") == ("keep" if asked != "collection" else None)
        # As the service encodes what a model worker computed: the same record.
        written = encode_result(result, engine.checkpoint.identity, "0" * 64,
                                OutputSettings(64, palette=asked))  # fmt: skip
        settings = json.loads(read_metadata(written)["artd:settings"])
        assert settings.get("palette") == recorded.get("palette")
    assert chroma["auto"] == chroma["keep"] < 2.0 < chroma["collection"]
    plain = Inference(Engine.from_path(pixel_checkpoint, device="cpu"), OutputSettings(64))
    assert plain.output.palette == "collection"
    with pytest.raises(CheckpointError, match="colour must be one of"):
        bad = dataclasses.replace(served.meta, colour="sepia")
        save_checkpoint(tmp_path / "bad.safetensors", served.state_dict, bad)


def write_photo(folder: Path) -> Path:
    path = folder / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()[::4, ::4]).save(path)
    return path
