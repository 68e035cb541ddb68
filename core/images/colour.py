"""Colour management: every input converted to sRGB by its embedded ICC profile, and back.

The model was trained on sRGB pixels and outputs are viewed as sRGB, so an Adobe RGB, Display
P3 or CMYK input read as if it were sRGB shifts colour visibly (docs/colour.md has the
figures). LittleCMS (Pillow's ``ImageCms``) converts with the profile the file carries:

- tagged RGB or grey: its profile to sRGB; a profile that maps colours as sRGB does (most
  "sRGB" profiles in the wild) is detected once and skipped, so the common case costs nothing;
- CMYK: its profile, or the standard press profile (:func:`default_cmyk_profile`) when none
  is embedded: a plain ``convert("RGB")`` inverts the inks and ignores dot gain;
- untagged: taken as sRGB (what browsers and the web's standards do).

Intents: ``relative`` (relative colorimetric with black-point compensation, the default: colours
inside sRGB come through unchanged, out-of-gamut ones are clipped to the nearest) or
``perceptual`` (the whole gamut compressed; only LUT profiles such as CMYK ones have a
perceptual table, matrix RGB profiles fall back to colorimetric). Transforms are built once per
(profile, mode, intent) and cached: building one costs milliseconds, applying it microseconds
per thousand pixels. Alpha never goes through LittleCMS: it is split off and put back.

:func:`keep_colours` is the output colour mode ``keep``: a result's luminance under its input's
own chroma (luminance-only transfer, Gatys et al. 2016), in JPEG's YCbCr (BT.601, PIL's).
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from loguru import logger
from PIL import Image, ImageCms

ColourIntent = Literal["relative", "perceptual"]
# What an output's colours come from: the model's (the collection's palette) or the input's;
# ``auto`` is what the checkpoint recommends (``meta.colour``), else the model's.
Palette = Literal["auto", "collection", "keep"]
PALETTES: tuple[str, ...] = ("collection", "keep")  # what a checkpoint may recommend
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # Y of BT.601 (JPEG's YCbCr, PIL's)
INTENTS: dict[str, ImageCms.Intent] = {
    "relative": ImageCms.Intent.RELATIVE_COLORIMETRIC,
    "perceptual": ImageCms.Intent.PERCEPTUAL,
}
# The standard CMYK profile for untagged CMYK, first found wins: Ghostscript's SWOP-based
# press profile (Debian's libgs-common), then ICC's and Adobe's usual install places.
CMYK_PROFILE_PATHS = (
    Path("/usr/share/color/icc/ghostscript/default_cmyk.icc"),
    Path("/usr/share/color/icc/ISOcoated_v2_300_eci.icc"),
    Path("/usr/share/color/icc/CoatedFOGRA39.icc"),
)
_SRGB = ImageCms.createProfile("sRGB")
# The ICC header's creation date (bytes 24-35: year, month, day, hour, minute, second, each a
# big-endian uint16) is stamped by LittleCMS when the profile is built; a fixed one keeps every
# output that embeds this profile byte-identical from one run to the next. The profile ID
# (bytes 84-99) is zero, so no checksum covers the date.
SRGB_ICC_DATE = (2026, 1, 1, 0, 0, 0)
_built = ImageCms.ImageCmsProfile(_SRGB).tobytes()
SRGB_ICC: bytes = _built[:24] + struct.pack(">6H", *SRGB_ICC_DATE) + _built[36:]
_PROFILE_MODES = {"RGB ": "RGB", "GRAY": "L", "CMYK": "CMYK"}


class ColourError(ValueError):
    """An embedded profile LittleCMS cannot use (the image is then taken as untagged)."""


@dataclass(frozen=True)
class ColourPolicy:
    """How a decode treats colour: ``manage`` (False: PIL's plain conversions, for comparison
    and benchmarks), the ``intent``, and the CMYK profile for untagged CMYK as a path (None:
    :func:`default_cmyk_profile`). Small and picklable: it crosses to decoder processes."""

    manage: bool = True
    intent: ColourIntent = "relative"
    cmyk_profile: str | None = None

    def to_srgb(self, img: Image.Image) -> Image.Image:
        """:func:`to_srgb` with this policy's intent and CMYK profile."""
        path = self.cmyk_profile or default_cmyk_profile()
        cmyk = _profile_file(str(path)) if path is not None and img.mode == "CMYK" else None
        return to_srgb(img, intent=self.intent, cmyk_profile=cmyk)


@lru_cache(maxsize=8)
def _profile_file(path: str) -> bytes:
    return load_profile(path)


def default_cmyk_profile() -> Path | None:
    """The first installed standard CMYK profile (CMYK_PROFILE_PATHS), or None."""
    return next((p for p in CMYK_PROFILE_PATHS if p.is_file()), None)


def keep_colours(result: Image.Image, given: np.ndarray | Image.Image) -> Image.Image:
    """``result``'s luminance (Y) under the chroma (Cb, Cr) of ``given``, the RGB input the
    model was given, per pixel at ``result``'s size (``given`` resized to it if it differs):
    an RGB image. Deterministic; a few milliseconds for 512 px (docs/colour.md).

    The YCbCr is JPEG's (BT.601, full range), PIL's ``"YCbCr"`` mode. Only Y changes, so in
    RGB the input gains ``Y(result) - Y(given)`` on each channel: the same merge, in float
    and rounded once. PIL's own ``convert`` round trip rounds down at each step and would
    darken every output by about a level."""
    source = given if isinstance(given, Image.Image) else Image.fromarray(np.asarray(given))
    if source.mode != "RGB":
        source = source.convert("RGB")
    if source.size != result.size:
        source = source.resize(result.size, Image.Resampling.BICUBIC)
    out = np.asarray(source, np.float32)
    made = np.asarray(result if result.mode == "RGB" else result.convert("RGB"), np.float32)
    luma = made @ _LUMA  # Y(result) - Y(given), per pixel
    luma -= out @ _LUMA
    out += luma[..., None] + 0.5
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def profile_space(icc: bytes) -> str | None:
    """The PIL mode a profile's data colour space is (RGB, L, CMYK), None for any other."""
    return _PROFILE_MODES.get(icc[16:20].decode("latin-1")) if len(icc) >= 128 else None


def profile_description(icc: bytes) -> str:
    """The profile's own name ("Adobe RGB (1998)"), for logs and docs."""
    return ImageCms.getProfileDescription(_profile(icc)).strip()


def to_srgb(
    img: Image.Image,
    *,
    intent: ColourIntent = "relative",
    cmyk_profile: bytes | None = None,
) -> Image.Image:
    """``img`` (RGB, RGBA, L, LA or CMYK) as sRGB: RGB, or RGBA when it has alpha.

    The profile is ``img.info["icc_profile"]``; CMYK without one uses ``cmyk_profile`` (bytes
    of a CMYK profile; None: Pillow's plain conversion, logged once). A broken profile is
    logged and the image taken as untagged: a bad tag must not cost the picture."""
    icc = img.info.get("icc_profile") or None
    alpha = img.getchannel("A") if img.mode in ("RGBA", "LA") else None
    base = {"RGBA": "RGB", "LA": "L"}.get(img.mode, img.mode)
    colour = img.convert(base) if alpha is not None else img
    if icc is None and base == "CMYK":
        icc = cmyk_profile
        if icc is None:
            _warn_no_cmyk_profile()
    if icc is not None and profile_space(icc) != base:
        logger.debug("embedded profile is for another colour space than {}: ignored", base)
        icc = None
    if icc is None or (base == "RGB" and _is_srgb(icc)):
        rgb = colour.convert("RGB") if base != "RGB" else colour
    else:
        try:
            rgb = ImageCms.applyTransform(colour, _transform(icc, base, "RGB", intent))
        except (ImageCms.PyCMSError, ColourError, OSError) as exc:
            logger.warning("cannot use the embedded colour profile ({}); taken as sRGB", exc)
            rgb = colour.convert("RGB")
    if alpha is None:
        return rgb
    rgb.putalpha(alpha)
    return rgb


def from_srgb(img: Image.Image, icc: bytes, intent: ColourIntent = "relative") -> Image.Image:
    """An sRGB ``img`` (RGB or RGBA) converted into the RGB profile ``icc``, alpha untouched."""
    alpha = img.getchannel("A") if img.mode == "RGBA" else None
    rgb = img.convert("RGB") if alpha is not None else img
    out = ImageCms.applyTransform(rgb, _transform(icc, "RGB", "RGB", intent, reverse=True))
    if alpha is not None:
        out.putalpha(alpha)
    return out


def load_profile(path: os.PathLike[str] | str) -> bytes:
    """A profile file's bytes, checked to be a profile LittleCMS can open."""
    data = Path(path).read_bytes()
    _profile(data)
    return data


# --- cached LittleCMS objects ----------------------------------------------------------------


def _profile(icc: bytes) -> ImageCms.ImageCmsProfile:
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (ImageCms.PyCMSError, OSError, TypeError) as exc:
        raise ColourError(f"not a usable ICC profile ({exc})") from exc


def _transform(
    icc: bytes, in_mode: str, out_mode: str, intent: ColourIntent, *, reverse: bool = False
) -> ImageCms.ImageCmsTransform:
    return _cached_transform(hashlib.sha256(icc).digest(), icc, in_mode, out_mode, intent, reverse)


@lru_cache(maxsize=64)
def _cached_transform(
    key: bytes, icc: bytes, in_mode: str, out_mode: str, intent: str, reverse: bool
) -> ImageCms.ImageCmsTransform:
    # ``key`` is what the cache compares (32 bytes, not a whole profile); icc rides along.
    profile = _profile(icc)
    source, target = (_SRGB, profile) if reverse else (profile, _SRGB)
    return ImageCms.buildTransform(
        source,
        target,
        in_mode,
        out_mode,
        renderingIntent=INTENTS[intent],
        flags=ImageCms.Flags.BLACKPOINTCOMPENSATION,
    )


def _is_srgb(icc: bytes) -> bool:
    return _maps_as_srgb(hashlib.sha256(icc).digest(), icc)


@lru_cache(maxsize=64)
def _maps_as_srgb(key: bytes, icc: bytes) -> bool:
    """True when the profile maps a grid of colours within one level of sRGB's own mapping."""
    levels = np.linspace(0, 255, 9).astype(np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1)
    probe = Image.fromarray(grid.reshape(81, 9, 3))
    try:
        mapped = ImageCms.applyTransform(probe, _transform(icc, "RGB", "RGB", "relative"))
    except (ImageCms.PyCMSError, ColourError, OSError):
        return False
    diff = np.abs(np.asarray(mapped, np.int16) - np.asarray(probe, np.int16))
    return int(diff.max()) <= 1


@lru_cache(maxsize=1)
def _warn_no_cmyk_profile() -> None:
    logger.warning(
        "no CMYK profile installed (Debian: libgs-common) nor configured (cmyk_profile): "
        "untagged CMYK inputs are converted without colour management"
    )
