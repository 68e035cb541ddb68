"""Generators of real image files (good, broken and hostile) for the test suites.

Each ``write_*`` function takes a directory, writes one file there and returns its Path.
Images are small and deterministic; :func:`pattern` gives the pixels they are built from.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def pattern(width: int = 48, height: int = 32) -> np.ndarray:
    """HWC uint8 RGB: horizontal red ramp, vertical green ramp, constant blue."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    red = np.broadcast_to(x, (height, width))
    green = np.broadcast_to(y, (height, width))
    blue = np.full((height, width), 96, np.float32)
    return np.stack([red, green, blue], axis=2).round().astype(np.uint8)


def _save(img: Image.Image, path: Path, fmt: str, **params: object) -> Path:
    img.save(path, fmt, **params)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _crafted_png(width: int, height: int, idat: bytes | None) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    chunks = _png_chunk(b"IHDR", ihdr)
    if idat is not None:
        chunks += _png_chunk(b"IDAT", idat)
    return b"\x89PNG\r\n\x1a\n" + chunks + _png_chunk(b"IEND", b"")


def write_empty(directory: Path, name: str = "empty.jpg") -> Path:
    path = directory / name
    path.write_bytes(b"")
    return path


def write_text_as_jpeg(directory: Path, name: str = "notes.jpg") -> Path:
    path = directory / name
    path.write_text("these are not the pixels you are looking for\n" * 20)
    return path


def write_jpeg(
    directory: Path, name: str = "photo.jpg", size: tuple[int, int] = (48, 32), quality: int = 95
) -> Path:
    return _save(Image.fromarray(pattern(*size)), directory / name, "JPEG", quality=quality)


def write_png(directory: Path, name: str = "image.png", size: tuple[int, int] = (48, 32)) -> Path:
    return _save(Image.fromarray(pattern(*size)), directory / name, "PNG")


def write_noise_png(
    directory: Path, name: str = "noise.png", size: tuple[int, int] = (64, 48)
) -> Path:
    """Seeded RGB noise: incompressible, so most of the file is pixel data (IDAT)."""
    noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return _save(Image.fromarray(noise), directory / name, "PNG")


def write_truncated(source: Path, directory: Path, keep: int, name: str | None = None) -> Path:
    """The first ``keep`` bytes of ``source`` (negative: all but the last ``-keep``)."""
    data = source.read_bytes()
    path = directory / (name or f"truncated-{keep}-{source.name}")
    path.write_bytes(data[:keep])
    return path


def write_png_header_only(
    directory: Path, width: int, height: int, name: str = "header-only.png"
) -> Path:
    """A valid IHDR claiming ``width`` x ``height``, then the file ends just inside IDAT."""
    header = _crafted_png(width, height, idat=None)[:-12]  # signature + IHDR
    path = directory / name
    path.write_bytes(header + struct.pack(">I", 1 << 20) + b"IDAT" + zlib.compress(b"")[:2])
    return path


def write_png_bomb(directory: Path, side: int = 100_000, name: str = "bomb.png") -> Path:
    """A tiny PNG whose IHDR (valid CRC) claims ``side`` x ``side`` pixels."""
    path = directory / name
    path.write_bytes(_crafted_png(side, side, idat=zlib.compress(b"\x00" * 64)))
    return path


def write_png_corrupt_idat(directory: Path, name: str = "corrupt.png") -> Path:
    """A complete PNG (IHDR, IDAT, IEND, all CRCs valid) whose IDAT is not zlib data."""
    path = directory / name
    path.write_bytes(_crafted_png(16, 16, idat=b"\x13\x37" * 200))
    return path


def write_cmyk_jpeg(directory: Path, name: str = "cmyk.jpg") -> Path:
    """Pure red in CMYK (C=0, M=255, Y=255, K=0): Adobe-inverted as Photoshop writes it."""
    img = Image.new("CMYK", (32, 24), (0, 255, 255, 0))
    return _save(img, directory / name, "JPEG", quality=95)


def write_png16_gradient(directory: Path, name: str = "gray16.png") -> Path:
    """16-bit greyscale, 256 wide: column ``x`` holds ``x * 257`` (0..65535)."""
    row = np.arange(256, dtype=np.uint16) * 257
    return _save(Image.fromarray(np.tile(row, (4, 1))), directory / name, "PNG")


def write_palette_png_transparent(directory: Path, name: str = "palette.png") -> Path:
    """Palette PNG (tRNS): index 0 fully transparent, index 1 opaque pure green.

    The left half of the image is index 0, the right half index 1.
    """
    img = Image.new("P", (16, 8), 0)
    img.putpalette([255, 0, 255, 0, 255, 0] + [0] * (254 * 3))
    img.paste(1, (8, 0, 16, 8))
    return _save(img, directory / name, "PNG", transparency=0)


def write_rgba_png(directory: Path, name: str = "rgba.png", alpha: int = 128) -> Path:
    """Pure red at constant ``alpha``."""
    return _save(Image.new("RGBA", (16, 8), (255, 0, 0, alpha)), directory / name, "PNG")


def write_la_png(directory: Path, name: str = "la.png", alpha: int = 128) -> Path:
    """Grey 200 at constant ``alpha``."""
    return _save(Image.new("LA", (16, 8), (200, alpha)), directory / name, "PNG")


def write_exif_rotated_jpeg(
    directory: Path, orientation: int = 6, name: str = "rotated.jpg"
) -> Path:
    """Stored 40x24 (w x h), black with a red block in the stored top-left corner."""
    img = Image.new("RGB", (40, 24), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 16, 8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(img, directory / name, "JPEG", quality=95, exif=exif.tobytes())


def write_animated_gif(directory: Path, name: str = "anim.gif") -> Path:
    """Three frames: red, green, blue (the first frame is red)."""
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(
        directory / name, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0
    )
    return directory / name


def write_bmp(directory: Path, name: str = "image.bmp") -> Path:
    return _save(Image.fromarray(pattern()), directory / name, "BMP")


def write_tiff(directory: Path, name: str = "image.tiff") -> Path:
    return _save(Image.fromarray(pattern()), directory / name, "TIFF", compression="tiff_lzw")


def write_webp(directory: Path, name: str = "image.webp", lossless: bool = True) -> Path:
    return _save(Image.fromarray(pattern()), directory / name, "WEBP", lossless=lossless)


def write_float_tiff(directory: Path, name: str = "float.tiff") -> Path:
    """Mode F, 256 wide: column ``x`` holds ``x / 255`` (0..1)."""
    row = np.arange(256, dtype=np.float32) / 255
    return _save(Image.fromarray(np.tile(row, (4, 1))), directory / name, "TIFF")


def write_int32_tiff(directory: Path, name: str = "int32.tiff") -> Path:
    """Mode I, 256 wide: column ``x`` holds ``x * 257``."""
    row = np.arange(256, dtype=np.int32) * 257
    return _save(Image.fromarray(np.tile(row, (4, 1))), directory / name, "TIFF")


def write_unsupported(directory: Path, fmt: str) -> Path:
    """A real image in a format outside the allow-list: ICO, PPM, PDF, EPS, PSD or QOI."""
    img = Image.fromarray(pattern(16, 16))
    if fmt == "PSD":  # PIL cannot write PSD: a minimal valid header + raw RGB data
        path = directory / "image.psd"
        header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 16, 16, 8, 3)
        path.write_bytes(header + struct.pack(">IIIH", 0, 0, 0, 0) + img.tobytes("raw", "RGB"))
        return path
    suffix = {"ICO": "ico", "PPM": "ppm", "PDF": "pdf", "EPS": "eps", "QOI": "qoi"}[fmt]
    return _save(img, directory / f"image.{suffix}", fmt)


def jpeg_bytes(size: tuple[int, int] = (48, 32), quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pattern(*size)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()
