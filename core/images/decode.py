"""Safe decode of one untrusted image file: every failure an ImageError with a reason.

Every decode failure surfaces as an :class:`ImageError` with a machine-readable ``reason``
(the quarantine reason) and a human message. PIL globals are left alone: PIL's own
decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``, 89.5 Mpx) stays active beside
``max_pixels``: it warns between 89.5 and 179 Mpx and refuses above (reported as
``too_many_pixels``, so a ``max_pixels`` above 179 Mpx has no effect). Truncated files are
never accepted (``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set).

Pixel scaling of deep modes: 16-bit data (``I;16*``) and ``I`` (taken as 16-bit data, clipped
to 0..65535) are divided by 257, so 65535 -> 255; ``F`` is taken as 0..1 (clipped, NaN -> 0).
A tRNS colour on 16-bit greyscale is ignored (no PIL mode carries it as alpha).

Colour (``colour``, a core.images.colour.ColourPolicy): None keeps the plain PIL conversions (the
first design; the low-level default, so this module's contract is unchanged); the daemon,
``artd process`` and training pass a policy, and the embedded ICC profile is then converted to
sRGB before anything else (core.images.colour). ``keep_alpha`` returns RGBA for an input with alpha
or a transparent colour (palette, tRNS) instead of compositing it on ``background``; the alpha
is resized and oriented with the image. :func:`decode_with_plan` also returns what the output
keeps of its input (core.images.origin).

Resizing and tensors: core.images.pixels; decode and resize in one: core.images.loading.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.durable import open_regular
from core.images.colour import ColourPolicy
from core.images.origin import Origin, origin_of
from core.reasons import Reason

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"})
DEFAULT_MAX_PIXELS = 100_000_000
Source = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]

# Most common first: Image.open tries the plugins in this order. EPS is never among them,
# so PIL can never hand a dropped file to Ghostscript.
_OPEN_ORDER = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_SNIFF_BYTES = 1024
# Magic numbers at offset 0: allowed formats (to tell "broken" from "not an image") and the
# common image formats we refuse (to tell "unsupported" from "not an image").
_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "BMP": (b"BM",),
    "TIFF": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    "PSD": (b"8BPS",),
    "ICO/CUR": (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00"),
    "PDF": (b"%PDF",),
    "PostScript/EPS": (b"%!PS", b"\xc5\xd0\xd3\xc6"),
    "JPEG 2000": (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51"),
    "JPEG XL": (b"\xff\x0a", b"\x00\x00\x00\x0cJXL "),
    "QOI": (b"qoif",),
    "DDS": (b"DDS ",),
    "ICNS": (b"icns",),
    "XCF": (b"gimp xcf",),
    "OpenEXR": (b"v/1\x01",),
}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
_NETPBM = re.compile(rb"P[1-7]\s")
_SWAPS_AXES = {5, 6, 7, 8}
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageError(Exception):
    """A file that cannot become an image; ``reason`` is one of ``core.reasons.DECODE_REASONS``."""

    def __init__(self, reason: str, message: str, path: str | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    def __reduce__(self) -> tuple[type[ImageError], tuple[str, str, str | None]]:
        # The daemon's isolated decoder sends these across a process boundary.
        return (ImageError, (self.reason, self.message, self.path))


def decode(
    source: Source,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
    draft_size: tuple[int, int] | None = None,
    colour: ColourPolicy | None = None,
    keep_alpha: bool = False,
) -> Image.Image:
    """Decode ``source`` (path, bytes or binary file) into a fully loaded RGB image (RGBA
    with ``keep_alpha`` when it has transparency; ``colour``: module docstring).

    ``draft_size`` (w, h, after EXIF orientation) is the size the caller will shrink to;
    when it is smaller the decoder may return a reduced image (JPEG draft, ``Image.reduce``)
    that is still at least that large. Raises :class:`ImageError` only.
    """
    shrink_to = None if draft_size is None else (lambda w, h: draft_size)
    img, _, finish = decode_with_plan(source, max_pixels, background, shrink_to, colour, keep_alpha)
    return finish(img) if finish else img


def decode_with_plan(
    source: Source,
    max_pixels: int,
    background: tuple[int, int, int],
    shrink_to: Callable[[int, int], tuple[int, int]] | None,
    colour: ColourPolicy | None = None,
    keep_alpha: bool = False,
) -> tuple[Image.Image, Origin, Callable[[Image.Image], Image.Image] | None]:
    """(image, origin, finish), the image shrunk toward ``shrink_to(w, h)`` (asked once with
    the upright header size; None: full size). With a colour policy the image is still in
    its own colour space (RGB, RGBA, L, LA or CMYK) and ``finish`` converts it to sRGB,
    after any resize the caller makes; without one ``finish`` is None."""
    path = _source_name(source)
    try:
        with _open_source(source, path) as fp:
            head = fp.read(_SNIFF_BYTES)
            fp.seek(0)  # PIL's plugins address the stream from offset 0
            if not head:
                raise ImageError(Reason.EMPTY_FILE, "the file is empty (0 bytes)", path)
            try:
                return _decode_stream(
                    fp, head, max_pixels, background, shrink_to, colour, keep_alpha
                )
            except (ImageError, MemoryError):
                raise
            except Exception as exc:
                raise _classify(exc, fp, _sniff(head)) from exc
    except ImageError as err:
        err.path = err.path or path
        raise
    except MemoryError:
        raise
    except Exception as exc:  # our own I/O on a hostile file object: never leak it
        raise ImageError(Reason.UNREADABLE, f"{type(exc).__name__}: {exc}", path) from exc


def _decode_stream(
    fp: IO[bytes],
    head: bytes,
    max_pixels: int,
    background: tuple[int, int, int],
    shrink_to: Callable[[int, int], tuple[int, int]] | None,
    colour: ColourPolicy | None,
    keep_alpha: bool,
) -> tuple[Image.Image, Origin, Callable[[Image.Image], Image.Image] | None]:
    try:
        img = Image.open(fp, formats=_OPEN_ORDER)
    except UnidentifiedImageError as exc:
        raise _unidentified(head, fp) from exc
    width, height = img.size
    if width * height > max_pixels:  # header size only: no pixel has been decoded yet
        msg = f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        raise ImageError(Reason.TOO_MANY_PIXELS, msg)
    # shrink_to is asked once, with the upright header size; JPEG needs it before load().
    target = None
    if shrink_to is not None and img.format in ("JPEG", "MPO"):
        target = _stored_target(shrink_to, img.size, _orientation(img))
        if target[0] < width and target[1] < height:
            img.draft("RGB", target)  # DCT scaling: the result stays >= target
    img.load()
    orientation = _orientation(img)  # PNG's eXIf may follow the pixels
    if shrink_to is not None and target is None:
        target = _stored_target(shrink_to, img.size, orientation)
    origin = origin_of(img)
    finish = None
    if colour is not None:
        rgb, icc = _cms_ready(img)
        finish = functools.partial(
            _finish, icc=icc, background=background, colour=colour, keep_alpha=keep_alpha
        )
    elif keep_alpha and _has_alpha(img):
        rgb = _to_rgba(img)
    else:
        rgb = _to_rgb(img, background)
    if target is not None:
        factor = min(rgb.width // target[0], rgb.height // target[1])
        if factor >= 2:
            rgb = rgb.reduce(factor)  # ceil(side / factor) >= target
    if orientation in _TRANSPOSE:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    return rgb, origin, finish


def _has_alpha(img: Image.Image) -> bool:
    return "A" in img.getbands() or "transparency" in img.info


def _to_rgba(img: Image.Image) -> Image.Image:
    try:
        if img.mode.startswith("I;16") or img.mode in ("I", "F"):
            return Image.fromarray(_deep_to_uint8(np.asarray(img), img.mode)).convert("RGBA")
        return img if img.mode == "RGBA" else img.convert("RGBA")
    except ValueError as exc:
        raise ImageError(
            Reason.UNSUPPORTED_FORMAT, f"pixel mode {img.mode} cannot become RGBA"
        ) from exc


# Modes LittleCMS converts directly (alpha split off by core.images.colour); others are first
# brought to one of them by PIL.
_CMS_MODES = frozenset({"RGB", "RGBA", "L", "LA", "CMYK"})


def _cms_ready(img: Image.Image) -> tuple[Image.Image, bytes | None]:
    """The image in a mode LittleCMS converts, and the profile that goes with it."""
    mode, icc = img.mode, img.info.get("icc_profile")
    try:
        if mode.startswith("I;16") or mode in ("I", "F"):
            work = Image.fromarray(_deep_to_uint8(np.asarray(img), mode))  # L
        elif mode in _CMS_MODES and "transparency" not in img.info:
            work = img
        elif mode in ("L", "1") and "transparency" in img.info:
            work = img.convert("LA")
        elif mode in ("P", "PA", "RGB") or _has_alpha(img):
            work = img.convert("RGBA" if _has_alpha(img) else "RGB")
        else:  # 1, YCbCr, LAB, HSV: PIL's own conversion, the profile (if any) not used
            work, icc = img.convert("RGB"), None
    except ValueError as exc:
        raise ImageError(Reason.UNSUPPORTED_FORMAT, f"pixel mode {mode} cannot become RGB") from exc
    return work, icc or None


def _finish(
    work: Image.Image,
    *,
    icc: bytes | None,
    background: tuple[int, int, int],
    colour: ColourPolicy,
    keep_alpha: bool,
) -> Image.Image:
    """The image as sRGB by its profile (core.images.colour), alpha kept or composited."""
    work.info = {"icc_profile": icc} if icc else {}  # reduce/transpose/resize drop info
    srgb = colour.to_srgb(work) if colour.manage else _plain(work)
    srgb.info.pop("icc_profile", None)  # the pixels are sRGB now (or taken as such)
    if srgb.mode == "RGBA" and not keep_alpha:
        out = Image.new("RGB", srgb.size, background)
        out.paste(srgb, (0, 0), srgb)
        return out
    return srgb


def _plain(img: Image.Image) -> Image.Image:
    """No colour management: PIL's conversion, as the first design did."""
    return img.convert("RGBA" if "A" in img.getbands() else "RGB")


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    mode = img.mode
    try:
        if mode == "RGB" and "transparency" not in img.info:
            return img
        if mode.startswith("I;16") or mode in ("I", "F"):
            return Image.fromarray(_deep_to_uint8(np.asarray(img), mode)).convert("RGB")
        if "A" in img.getbands() or "transparency" in img.info:
            rgba = img if mode == "RGBA" else img.convert("RGBA")
            out = Image.new("RGB", img.size, background)
            out.paste(rgba, (0, 0), rgba)
            return out
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageError(Reason.UNSUPPORTED_FORMAT, f"pixel mode {mode} cannot become RGB") from exc


def _deep_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    if mode == "F":
        arr = np.nan_to_num(arr.astype(np.float32, copy=False), nan=0.0)
        return (np.clip(arr, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    # round(v / 257): 16-bit white 65535 -> 255 and 8-bit data widened as v * 257 returns exactly.
    wide = np.clip(arr, 0, 65535).astype(np.uint32)
    return ((wide + 128) // 257).astype(np.uint8)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block does not make the pixels unusable
        return 1


def _stored_target(
    shrink_to: Callable[[int, int], tuple[int, int]], size: tuple[int, int], orientation: int
) -> tuple[int, int]:
    """The caller's target (given upright) in the file's stored, pre-rotation axes."""
    swap = orientation in _SWAPS_AXES
    w, h = (size[1], size[0]) if swap else size
    tw, th = shrink_to(w, h)
    return (th, tw) if swap else (tw, th)


def sniff(head: bytes) -> str | None:
    """The format a file's first bytes name (``JPEG``, ``PNG``, ``WEBP``...), or None."""
    return _sniff(head)


def _sniff(head: bytes) -> str | None:
    for name, magics in _SIGNATURES.items():
        if head.startswith(magics):
            return name
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "HEIF/AVIF"
    if _NETPBM.match(head):
        return "Netpbm (PPM/PGM/PBM)"
    if b"<svg" in head.lower():
        return "SVG"
    return None


def _unidentified(head: bytes, fp: IO[bytes]) -> ImageError:
    fmt = _sniff(head)
    if fmt is None:
        return ImageError(Reason.NOT_AN_IMAGE, "the content is not a recognized image format")
    if fmt not in ALLOWED_FORMATS:
        allowed = ", ".join(sorted(ALLOWED_FORMATS))
        return ImageError(
            Reason.UNSUPPORTED_FORMAT, f"{fmt} images are not accepted ({allowed} are)"
        )
    if _looks_truncated(fp, fmt):
        return ImageError(Reason.TRUNCATED, f"the {fmt} file ends before its header is complete")
    return ImageError(Reason.CORRUPT, f"the {fmt} header is invalid")


def _classify(exc: Exception, fp: IO[bytes], fmt: str | None) -> ImageError:
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return ImageError(
            Reason.TOO_MANY_PIXELS, f"PIL's decompression-bomb guard refused it ({exc})"
        )
    if isinstance(exc, OSError) and exc.errno is not None:
        return ImageError(Reason.UNREADABLE, detail)
    if isinstance(exc, EOFError) or "truncated" in str(exc).lower() or _looks_truncated(fp, fmt):
        return ImageError(Reason.TRUNCATED, f"the image data ends early ({detail})")
    return ImageError(Reason.CORRUPT, f"the image data cannot be decoded ({detail})")


def _looks_truncated(fp: IO[bytes], fmt: str | None) -> bool:
    """Structural end-of-file check, consulted only after a decode failed."""
    try:
        end = fp.seek(0, io.SEEK_END)
        fp.seek(max(0, end - 1024))
        tail = fp.read()
        if fmt == "JPEG":
            return b"\xff\xd9" not in tail
        if fmt == "PNG":
            return b"IEND" not in tail
        if fmt == "GIF":
            return not tail.rstrip(b"\x00").endswith(b";")
        if fmt == "WEBP":
            fp.seek(4)
            return int.from_bytes(fp.read(4), "little") + 8 > end
    except Exception:
        return False
    return False


def _source_name(source: Source) -> str | None:
    if isinstance(source, str | os.PathLike):
        return os.fsdecode(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else None


@contextmanager
def _open_source(source: Source, path: str | None) -> Iterator[IO[bytes]]:
    if isinstance(source, bytes | bytearray | memoryview):
        yield io.BytesIO(source)
        return
    if not isinstance(source, str | os.PathLike):
        yield source if source.seekable() else io.BytesIO(source.read())
        return
    try:
        # Links are not followed, and a FIFO dropped in the inbox must not hang open().
        fp = open_regular(source)
    except OSError as exc:
        raise _open_error(exc, source, path) from exc
    with fp:
        yield fp


def _open_error(exc: OSError, source: str | os.PathLike[str], path: str | None) -> ImageError:
    mode = None
    if exc.errno == errno.EINVAL:  # open_regular's "not a regular file": say which kind
        with suppress(OSError):
            mode = os.lstat(source).st_mode
    if mode is not None and not stat.S_ISREG(mode):
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        return ImageError(Reason.UNREADABLE, f"the path is {what}", path)
    return ImageError(Reason.UNREADABLE, f"cannot open: {exc.strerror or exc}", path)
