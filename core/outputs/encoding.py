"""Encoding a result for the outbox, with its metadata embedded, and reading that back.

Private fields (``ai_generated``, ``artd:*``): PNG, one tEXt chunk per key (iTXt when not
Latin-1); JPEG, the dict as JSON in a COM marker; WebP, the dict as JSON in the XMP packet.
:func:`read_metadata` reads all three. The standard label (core.outputs.labels: XMP, EXIF), the
colour profile and the alpha channel are passed in by the caller (core.runtime.img2img): this module
only knows where each goes in each format. An image with alpha keeps it in PNG and WebP; JPEG
cannot hold it, so it is composited on ``background``.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from xml.sax.saxutils import unescape

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from core.outputs.labels import xmp_packet

OUTPUT_FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
DEFAULT_QUALITY = 92

_XMP_FIELD = re.compile(rb"<artd:metadata>(.*?)</artd:metadata>", re.DOTALL)
_PNG_XMP_KEY = "XML:com.adobe.xmp"


def encode(
    img: Image.Image,
    fmt: str,
    *,
    metadata: dict[str, str] | None = None,
    quality: int = DEFAULT_QUALITY,
    png_compress_level: int = 1,
    lossless: bool = False,
    icc_profile: bytes | None = None,
    xmp: bytes | None = None,
    exif: bytes | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
) -> bytes:
    """Encode to ``fmt`` (a key of :data:`OUTPUT_FORMATS`) with ``metadata`` embedded.

    ``quality``: JPEG and lossy WebP; ``lossless``: WebP only. ``xmp``: the packet to embed
    (for WebP it must carry the private fields, as core.outputs.labels.xmp_packet's does;
    without one WebP gets a packet of the private fields alone). ``exif``: JPEG, WebP and PNG
    (eXIf)."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r} (expected one of {list(OUTPUT_FORMATS)})")
    img = _output_mode(img, fmt, background)
    meta = metadata or {}
    # Always passed, None too: PIL would otherwise embed a stale ``img.info`` profile.
    extra: dict[str, object] = {"icc_profile": icc_profile or None}
    if exif:
        extra["exif"] = exif
    buf = io.BytesIO()
    if fmt == "png":
        _save_png(img, buf, meta, png_compress_level, xmp, extra)
    elif fmt == "jpeg":
        if meta:
            extra["comment"] = json.dumps(meta, ensure_ascii=False).encode()
        if xmp:
            extra["xmp"] = xmp
        img.save(buf, "JPEG", quality=quality, **extra)
    else:
        packet = xmp or (xmp_packet(meta, ai_made=False) if meta else None)
        if packet:
            extra["xmp"] = packet
        img.save(buf, "WEBP", quality=quality, lossless=lossless, **extra)
    return buf.getvalue()


def _output_mode(img: Image.Image, fmt: str, background: tuple[int, int, int]) -> Image.Image:
    if img.mode in ("RGBA", "LA") and fmt == "jpeg":
        flat = Image.new("RGB", img.size, background)
        rgba = img.convert("RGBA")
        flat.paste(rgba, (0, 0), rgba)
        return flat
    if img.mode in ("RGB", "L", "RGBA"):
        return img
    return img.convert("RGBA" if "A" in img.getbands() and fmt != "jpeg" else "RGB")


def _save_png(
    img: Image.Image,
    buf: io.BytesIO,
    meta: dict[str, str],
    level: int,
    xmp: bytes | None,
    extra: dict[str, object],
) -> None:
    info = PngInfo()
    for key, value in meta.items():
        if not 1 <= len(key) <= 79 or not key.isprintable() or not key.isascii():
            raise ValueError(f"PNG text keys must be 1-79 printable ASCII chars: {key!r}")
        info.add_text(key, value)
    if xmp:  # where exiftool and Adobe's tools look for XMP in a PNG
        info.add_itxt(_PNG_XMP_KEY, xmp.decode())
    # Z_RLE: zlib's strategy for PNG's filtered rows; 1.5x faster than the default
    # strategy at level 1 on model outputs, and the files are no larger (benchmarks.md).
    img.save(buf, "PNG", pnginfo=info, compress_level=level, compress_type=zlib.Z_RLE, **extra)


def read_metadata(data: bytes) -> dict[str, str]:
    """The private fields :func:`encode` embedded in ``data`` (PNG, JPEG or WebP); {} when none."""
    with Image.open(io.BytesIO(data), formats=["PNG", "JPEG", "WEBP"]) as img:
        if img.format == "PNG":
            img.load()  # text chunks after IDAT are only read with the pixels
            text = getattr(img, "text", {})
            return {str(k): str(v) for k, v in text.items() if k != _PNG_XMP_KEY}
        if img.format == "JPEG" and "comment" in img.info:
            return json.loads(img.info["comment"])
        xmp = img.info.get("xmp", b"")
        match = _XMP_FIELD.search(xmp if isinstance(xmp, bytes) else xmp.encode())
        return json.loads(unescape(match.group(1).decode())) if match else {}
