"""Colour management with real photos, real ICC profiles (colord-data, libgs-common) and
LittleCMS: the same picture tagged sRGB, Adobe RGB (1998), Display P3 and CMYK decodes to
within a few levels of itself, and through ``artd process`` gives outputs within a few levels
of each other; decoded without colour management it differs visibly. exiftool reads the
output's sRGB profile."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageCms

from bench.shared.colour_kit import ADOBE_RGB, CMYK_PROFILE, convert, display_p3_profile
from core.images.colour import SRGB_ICC, ColourPolicy, default_cmyk_profile, profile_description
from core.images.decode import decode
from core.runtime.engine import Engine
from core.runtime.img2img import OutputSettings
from daemon.oneshot import process

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not ADOBE_RGB.exists(), reason="colord-data is not installed"),
    pytest.mark.skipif(not CMYK_PROFILE.exists(), reason="libgs-common is not installed"),
]
PHOTO = skimage.data.chelsea()  # 451x300, natural colours, a cat


def tagged_files(folder: Path) -> dict[str, Path]:
    """The photo as sRGB (untagged JPEG), Adobe RGB (PNG), Display P3 (PNG), CMYK (TIFF with
    its profile) and CMYK JPEG without a profile (the standard CMYK profile applies)."""
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(PHOTO)
    files = {"srgb": folder / "srgb.png"}
    img.save(files["srgb"])
    for name, profile, mode, ext in [
        ("adobe", ADOBE_RGB, "RGB", "png"),
        ("p3", display_p3_profile(), "RGB", "png"),
        ("cmyk", CMYK_PROFILE, "CMYK", "tif"),
    ]:
        files[name] = folder / f"{name}.{ext}"
        out = convert(img, profile, mode)
        out.save(files[name], icc_profile=out.info["icc_profile"])
    files["cmyk-untagged"] = folder / "cmyk-untagged.jpg"
    convert(img, CMYK_PROFILE, "CMYK").save(files["cmyk-untagged"], quality=100)
    return files


def diff(a: np.ndarray | Image.Image, b: np.ndarray | Image.Image) -> np.ndarray:
    return np.abs(np.asarray(a, np.int16)[..., :3] - np.asarray(b, np.int16)[..., :3])


def test_profiles_are_what_they_say() -> None:
    assert profile_description(ADOBE_RGB.read_bytes()).endswith("Adobe RGB (1998)")
    assert profile_description(display_p3_profile()) == "Display P3"
    assert "CMYK" in profile_description(CMYK_PROFILE.read_bytes())
    assert default_cmyk_profile() == CMYK_PROFILE


def test_tagged_inputs_decode_to_the_same_srgb_and_unmanaged_ones_do_not(tmp_path: Path) -> None:
    files = tagged_files(tmp_path)
    managed, plain = ColourPolicy(), ColourPolicy(manage=False)
    for name, path in files.items():
        good = diff(decode(path, colour=managed), PHOTO)
        bad = diff(decode(path, colour=plain), PHOTO)
        if name.startswith("cmyk"):  # a press gamut: saturated colours are clipped by CMYK
            assert good.mean() < 2.5 and bad.mean() > 10, (name, good.mean(), bad.mean())
        else:
            assert good.mean() < 0.5 and good.max() <= 3, (name, good.mean(), good.max())
        if name != "srgb":
            assert bad.mean() > 3 and bad.max() > 15, (name, bad.mean(), bad.max())
            assert bad.mean() > 4 * good.mean(), (name, bad.mean(), good.mean())


def test_untagged_is_srgb_and_an_srgb_tag_changes_nothing(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(PHOTO).save(buf, "PNG", icc_profile=SRGB_ICC)
    tagged = decode(buf.getvalue(), colour=ColourPolicy())
    assert np.array_equal(np.asarray(tagged), PHOTO)


def test_intents_both_work_and_perceptual_differs_on_cmyk(tmp_path: Path) -> None:
    path = tagged_files(tmp_path)["cmyk"]
    relative = decode(path, colour=ColourPolicy(intent="relative"))
    perceptual = decode(path, colour=ColourPolicy(intent="perceptual"))
    assert diff(relative, PHOTO).mean() < diff(perceptual, PHOTO).mean()
    assert diff(perceptual, PHOTO).mean() < 10


def test_outputs_through_artd_process_agree_and_carry_srgb(
    pixel_checkpoint: Path, tmp_path: Path
) -> None:
    files = tagged_files(tmp_path / "in")
    engine = Engine.from_path(pixel_checkpoint, device="cpu")
    outputs = {}
    for manage in (True, False):
        out = tmp_path / f"out-{manage}"
        settings = OutputSettings(256, colour=ColourPolicy(manage=manage))
        report = process([tmp_path / "in"], out, engine, size=256, resize="fit", fmt="png",
                         output=settings, progress=False)  # fmt: skip
        assert not report.rejected
        outputs[manage] = {
            n: np.asarray(Image.open(out / f"{p.name}.png")) for n, p in files.items()
        }
    reference = outputs[True]["srgb"]
    for name in ("adobe", "p3", "cmyk", "cmyk-untagged"):
        good, bad = diff(outputs[True][name], reference), diff(outputs[False][name], reference)
        limit = 3.0 if name.startswith("cmyk") else 1.0
        assert good.mean() < limit, (name, good.mean())
        # The (random) model damps differences; unmanaged ones still stand 5x above managed.
        assert bad.mean() > 1.5 and bad.mean() > 5 * good.mean(), (name, bad.mean(), good.mean())
    with Image.open(tmp_path / "out-True" / "adobe.png.png") as png:
        assert png.info["icc_profile"] == SRGB_ICC


def test_output_profile_input_converts_back(pixel_checkpoint: Path, tmp_path: Path) -> None:
    files = tagged_files(tmp_path / "in")
    (tmp_path / "one").mkdir()
    shutil.copy(files["adobe"], tmp_path / "one")
    engine = Engine.from_path(pixel_checkpoint, device="cpu")
    srgb_out, input_out = tmp_path / "srgb", tmp_path / "input"
    for out, profile in ((srgb_out, "srgb"), (input_out, "input")):
        settings = OutputSettings(256, output_profile=profile)
        process([tmp_path / "one"], out, engine, size=256, resize="fit", fmt="png",
                output=settings, progress=False)  # fmt: skip
    back = Image.open(input_out / "adobe.png.png")
    assert back.info["icc_profile"] == ADOBE_RGB.read_bytes()
    as_srgb = ImageCms.profileToProfile(
        back, ImageCms.ImageCmsProfile(io.BytesIO(back.info["icc_profile"])),
        ImageCms.createProfile("sRGB"), outputMode="RGB",
    )  # fmt: skip
    assert diff(as_srgb, Image.open(srgb_out / "adobe.png.png")).mean() < 1.0
    assert diff(back, Image.open(srgb_out / "adobe.png.png")).mean() > 3  # really Adobe RGB


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")
def test_exiftool_reads_the_srgb_profile(pixel_checkpoint: Path, tmp_path: Path) -> None:
    files = tagged_files(tmp_path / "in")
    engine = Engine.from_path(pixel_checkpoint, device="cpu")
    for fmt, ext in (("png", ".png"), ("jpeg", ".jpg"), ("webp", ".webp")):
        out = tmp_path / fmt
        process([files["p3"]], out, engine, size=64, resize="fit", fmt=fmt, progress=False)
        found = exiftool(out / f"p3.png{ext}")
        assert found["ICC_Profile:ProfileDescription"] == "sRGB built-in", found
        assert found["ICC-header:ColorSpaceData"] == "RGB "


def exiftool(path: Path) -> dict[str, str]:
    done = subprocess.run(["exiftool", "-j", "-G1", "-a", str(path)], capture_output=True,
                          text=True, check=True, timeout=60)  # fmt: skip
    return json.loads(done.stdout)[0]


def test_the_embedded_srgb_profile_is_the_same_bytes_in_every_run() -> None:
    """LittleCMS stamps the time into a profile it builds; artd's sRGB profile carries a fixed
    date, so an output made twice (two processes, seconds apart) is the same file."""
    import struct
    import sys
    import time

    from core.images.colour import SRGB_ICC_DATE

    assert struct.unpack(">6H", SRGB_ICC[24:36]) == SRGB_ICC_DATE
    profile = ImageCms.getOpenProfile(io.BytesIO(SRGB_ICC))
    assert "sRGB" in ImageCms.getProfileDescription(profile)
    time.sleep(1.1)  # a second later: an unfixed header would differ in its seconds field
    script = "import sys; from core.images.colour import SRGB_ICC; sys.stdout.write(SRGB_ICC.hex())"
    other = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert bytes.fromhex(other) == SRGB_ICC
