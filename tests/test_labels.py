"""The standard AI label and the input's metadata, read back by an independent reader
(exiftool): DigitalSourceType in PNG, JPEG and WebP, EXIF Software/ImageDescription, the
private keys still readable, quality settings, format "same", and opt-in metadata copying
(never the orientation, GPS only with its own setting)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import ExifTags, Image, TiffImagePlugin
from test_colour import exiftool

from core.outputs.encoding import read_metadata
from core.outputs.labels import DIGITAL_SOURCE_TYPE
from core.runtime.engine import Engine
from core.runtime.img2img import OutputSettings
from daemon.oneshot import process

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed"),
]
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


@pytest.fixture(scope="module")
def engine(pixel_checkpoint: Path) -> Engine:
    return Engine.from_path(pixel_checkpoint, device="cpu")


def photo_with_metadata(path: Path) -> Path:
    """A JPEG with EXIF date, artist, copyright, GPS and a rotating Orientation, XMP keywords."""
    exif = Image.Exif()
    exif[ExifTags.Base.Artist] = "Ada Painter"
    exif[ExifTags.Base.Copyright] = "(c) 2024 Ada Painter"
    exif[ExifTags.Base.Orientation] = 6
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2024:05:06 07:08:09"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    rational = TiffImagePlugin.IFDRational
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (rational(48), rational(51), rational(2964, 100))
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (rational(2), rational(17), rational(4020, 100))
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
        '22-rdf-syntax-ns#"><rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/">'
        "<dc:subject><rdf:Bag><rdf:li>cat</rdf:li><rdf:li>study</rdf:li></rdf:Bag></dc:subject>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(skimage.data.chelsea()).save(path, "JPEG", exif=exif, xmp=xmp.encode())
    return path


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_exiftool_reads_the_standard_label(engine: Engine, tmp_path: Path, fmt: str) -> None:
    source = photo_with_metadata(tmp_path / "in" / "cat.jpg")
    process([source], tmp_path / "out", engine, size=64, resize="fit", fmt=fmt, progress=False)
    output = tmp_path / "out" / f"cat.jpg{EXTENSIONS[fmt]}"
    found = exiftool(output)
    assert found["XMP-iptcExt:DigitalSourceType"] == DIGITAL_SOURCE_TYPE, found
    assert found["XMP-xmp:CreatorTool"].startswith("artd ")
    private = read_metadata(output.read_bytes())
    assert private["ai_generated"] == "true"  # the private keys the daemon's checks read
    assert len(private["artd:input_sha256"]) == 64
    if fmt != "png":
        assert found["IFD0:Software"].startswith("artd ")
        assert "trainedAlgorithmicMedia" in found["IFD0:ImageDescription"]
        assert private["artd:input_sha256"] in found["IFD0:ImageDescription"]
    # Not copied by default: no author, no GPS, and never the orientation.
    assert not any(k.startswith("GPS:") for k in found)
    assert "IFD0:Artist" not in found and "IFD0:Orientation" not in found


def test_metadata_is_copied_only_when_asked_and_gps_on_its_own(
    engine: Engine, tmp_path: Path
) -> None:
    source = photo_with_metadata(tmp_path / "in" / "cat.jpg")
    runs = {"copy": {"copy_metadata": True}, "gps": {"copy_metadata": True, "copy_gps": True}}
    for name, options in runs.items():
        settings = OutputSettings(64, fmt="jpeg", **options)
        process([source], tmp_path / name, engine, size=64, resize="fit", fmt="jpeg",
                output=settings, progress=False)  # fmt: skip
    copied = exiftool(tmp_path / "copy" / "cat.jpg.jpg")
    assert copied["IFD0:Artist"] == "Ada Painter"
    assert copied["IFD0:Copyright"] == "(c) 2024 Ada Painter"
    assert copied["ExifIFD:DateTimeOriginal"] == "2024:05:06 07:08:09"
    assert copied["XMP-dc:Subject"] == ["cat", "study"]
    assert copied["XMP-dc:Creator"] == "Ada Painter"
    assert copied["XMP-iptcExt:DigitalSourceType"] == DIGITAL_SOURCE_TYPE
    assert "IFD0:Orientation" not in copied
    assert not any(k.startswith("GPS:") for k in copied)
    with_gps = exiftool(tmp_path / "gps" / "cat.jpg.jpg")
    assert with_gps["GPS:GPSLatitudeRef"] == "North"
    assert with_gps["GPS:GPSLatitude"].startswith("48 deg 51'")
    with Image.open(tmp_path / "gps" / "cat.jpg.jpg") as out:
        assert out.width < out.height  # orientation 6 applied to the pixels, once


def test_quality_and_lossless_settings(engine: Engine, tmp_path: Path) -> None:
    source = photo_with_metadata(tmp_path / "in" / "cat.jpg")
    sizes = {}
    for name, fmt, options in [
        ("jpeg-50", "jpeg", {"jpeg_quality": 50}),
        ("jpeg-98", "jpeg", {"jpeg_quality": 98}),
        ("webp-40", "webp", {"webp_quality": 40}),
        ("webp-lossless", "webp", {"webp_lossless": True}),
    ]:
        settings = OutputSettings(128, fmt=fmt, **options)
        process([source], tmp_path / name, engine, size=128, resize="fit", fmt=fmt,
                output=settings, progress=False)  # fmt: skip
        sizes[name] = next((tmp_path / name).iterdir()).stat().st_size
    assert sizes["jpeg-50"] < sizes["jpeg-98"]
    assert sizes["webp-40"] < sizes["webp-lossless"]
    lossless = next((tmp_path / "webp-lossless").iterdir()).read_bytes()
    assert b"VP8L" in lossless and b"VP8 " not in lossless


def test_format_same_keeps_each_inputs_format(engine: Engine, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    photo = Image.fromarray(skimage.data.coffee())
    for name, fmt in (("a.jpg", "JPEG"), ("b.png", "PNG"), ("c.webp", "WEBP"), ("d.gif", "GIF")):
        photo.save(inputs / name, fmt)
    settings = OutputSettings(64, fmt="same")
    report = process([inputs], tmp_path / "out", engine, size=64, resize="fit", fmt="same",
                     output=settings, progress=False)  # fmt: skip
    assert not report.rejected
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["a.jpg.jpg", "b.png.png", "c.webp.webp", "d.gif.png"]
    for path in (tmp_path / "out").iterdir():
        with Image.open(path) as img:
            assert img.format == {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP"}[path.suffix]
        assert read_metadata(path.read_bytes())["ai_generated"] == "true"


def test_private_metadata_round_trips_in_every_format() -> None:
    from core.outputs.result import encode_output

    meta = {"ai_generated": "true", "artd:model": "été", "artd:input_sha256": "ab" * 32}
    img = Image.fromarray(np.zeros((16, 16, 3), np.uint8))
    for fmt in EXTENSIONS:
        data = encode_output(img, meta, OutputSettings(16, fmt=fmt))
        assert read_metadata(data) == meta
        assert Image.open(io.BytesIO(data)).info["icc_profile"]
