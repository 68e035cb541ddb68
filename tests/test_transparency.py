"""Transparency: an RGBA PNG with a gradient alpha, a 16-bit RGBA PNG and a palette PNG with
a transparent index keep their alpha (resized with the image) in PNG and WebP outputs of
``artd process``; JPEG outputs composite on the background, as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from core.images import loading
from core.images.colour import ColourPolicy
from core.runtime.engine import Engine
from core.runtime.img2img import OutputSettings
from daemon.oneshot import process

pytestmark = pytest.mark.usefixtures("one_thread")


def gradient_alpha(width: int, height: int) -> np.ndarray:
    """0 at the left edge to 255 at the right, the same on every row."""
    return np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (height, 1))


def write_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    photo = skimage.data.astronaut()[::2, ::2]  # 256x256
    rgba = np.dstack([photo, gradient_alpha(256, 256)])
    files = {"rgba": folder / "rgba.png", "deep": folder / "deep.png", "palette": folder / "p.png"}
    Image.fromarray(rgba, "RGBA").save(files["rgba"])
    deep = rgba.astype(np.uint16) * 257  # 16 bits per channel
    _write_png16_rgba(files["deep"], deep)
    palette = Image.fromarray(photo).quantize(15)  # indices 0..14
    index = np.asarray(palette).copy()
    index[:, :128] = 15  # the left half is the transparent index, used nowhere else
    transparent = Image.fromarray(index, "P")
    transparent.putpalette([*palette.getpalette()[:45], 0, 0, 0])
    transparent.save(files["palette"], transparency=15)
    return files


def _write_png16_rgba(path: Path, pixels: np.ndarray) -> None:
    """A real 16-bit RGBA PNG (Pillow cannot write one; zlib and the PNG spec can)."""
    import struct
    import zlib

    h, w, _ = pixels.shape
    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))  # fmt: skip


def test_decode_keeps_alpha_and_resizes_it(tmp_path: Path) -> None:
    files = write_inputs(tmp_path)
    for name in ("rgba", "deep"):
        img = loading.load(files[name], 64, colour=ColourPolicy(), keep_alpha=True)
        assert img.mode == "RGBA" and img.size == (64, 64)
        alpha = np.asarray(img)[..., 3].astype(int)
        assert np.abs(alpha - gradient_alpha(64, 64)).max() <= 3, name
    flat = loading.load(files["rgba"], 64, colour=ColourPolicy())
    assert flat.mode == "RGB"
    assert (np.asarray(flat)[:, 0] > 245).all()  # alpha 0 at the left: the white background
    palette = loading.load(files["palette"], 64, colour=ColourPolicy(), keep_alpha=True)
    alpha = np.asarray(palette)[..., 3]
    assert (alpha[:, :30] == 0).all() and (alpha[:, 34:] == 255).all()


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_outputs_keep_the_alpha(pixel_checkpoint: Path, tmp_path: Path, fmt: str) -> None:
    files = write_inputs(tmp_path / "in")
    engine = Engine.from_path(pixel_checkpoint, device="cpu")
    out = tmp_path / "out"
    settings = OutputSettings(128, fmt=fmt, webp_lossless=True)
    report = process([tmp_path / "in"], out, engine, size=128, resize="fit", fmt=fmt,
                     output=settings, progress=False)  # fmt: skip
    assert not report.rejected
    ext = ".png" if fmt == "png" else ".webp"
    for name in ("rgba", "deep"):
        with Image.open(out / f"{files[name].name}{ext}") as img:
            assert img.mode == "RGBA" and img.size == (128, 128)
            alpha = np.asarray(img)[..., 3].astype(int)
        assert np.abs(alpha - gradient_alpha(128, 128)).max() <= 3, name
    with Image.open(out / f"p.png{ext}") as img:
        alpha = np.asarray(img.convert("RGBA"))[..., 3]
    assert (alpha[:, :60] == 0).all() and (alpha[:, 68:] == 255).all()


def test_jpeg_composites_on_the_background(pixel_checkpoint: Path, tmp_path: Path) -> None:
    files = write_inputs(tmp_path / "in")
    engine = Engine.from_path(pixel_checkpoint, device="cpu")
    for keep in (True, False):
        out = tmp_path / f"out-{keep}"
        settings = OutputSettings(128, fmt="jpeg", keep_alpha=keep)
        process([files["rgba"]], out, engine, size=128, resize="fit", fmt="jpeg",
                output=settings, progress=False)  # fmt: skip
    with (
        Image.open(tmp_path / "out-True" / "rgba.png.jpg") as a,
        Image.open(tmp_path / "out-False" / "rgba.png.jpg") as b,
    ):
        assert a.mode == "RGB"
        # The model saw the same composited picture either way.
        assert np.abs(np.asarray(a, int) - np.asarray(b, int)).mean() < 2


def test_identity_alpha_round_trip_restores_straight_colour() -> None:
    from core.runtime.img2img import _attach_alpha, _composite

    rgba = np.dstack([skimage.data.coffee()[:64, :64], gradient_alpha(64, 64)])
    background = np.asarray((255, 255, 255), np.float32)
    flat = _composite(rgba, background)
    back = np.asarray(_attach_alpha(Image.fromarray(flat), rgba[..., 3], background), int)
    visible = rgba[..., 3] >= 64
    assert np.abs(back[visible][:, :3] - rgba[visible][:, :3]).max() <= 3
    assert np.array_equal(back[..., 3], rgba[..., 3])
