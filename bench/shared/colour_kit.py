"""Real pictures in real colour spaces for the colour tests and the colour benchmark.

The profiles are real ICC files: Adobe RGB (1998) from Debian's colord-data, the CMYK press
profile from Ghostscript's libgs-common (``default_cmyk.icc``). No Debian package ships a
Display P3 profile, so :func:`display_p3_profile` writes one from the standard's published
numbers (DCI-P3 primaries, D65 white, the sRGB curve), as a plain ICC v4 matrix/TRC display
profile that LittleCMS reads like any other.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

ICC = Path("/usr/share/color/icc")
ADOBE_RGB = ICC / "colord" / "AdobeRGB1998.icc"
CMYK_PROFILE = ICC / "ghostscript" / "default_cmyk.icc"

_D50 = np.array([0.9642, 1.0, 0.8249])
_BRADFORD = np.array(
    [[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]]
)


def _xyz(x: float, y: float) -> np.ndarray:
    return np.array([x / y, 1.0, (1 - x - y) / y])


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _tag_xyz(xyz: np.ndarray) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in xyz)


def _tag_mluc(text: str) -> bytes:
    body = text.encode("utf-16-be")
    return b"mluc\0\0\0\0" + struct.pack(">II2s2sII", 1, 12, b"en", b"US", len(body), 28) + body


def _tag_srgb_curve() -> bytes:
    # parametricCurveType 3: the sRGB transfer function.
    params = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
    return b"para\0\0\0\0" + struct.pack(">HH", 3, 0) + b"".join(_s15(p) for p in params)


def display_p3_profile() -> bytes:
    """An ICC v4 Display P3 profile (module docstring), built from the standard's numbers."""
    primaries = [_xyz(0.680, 0.320), _xyz(0.265, 0.690), _xyz(0.150, 0.060)]
    white = _xyz(0.3127, 0.3290)
    m = np.stack(primaries, axis=1)
    rgb_to_xyz = m * np.linalg.solve(m, white)  # columns scaled so RGB 1,1,1 is the white
    cone_src, cone_dst = _BRADFORD @ white, _BRADFORD @ _D50
    adapt = np.linalg.inv(_BRADFORD) @ np.diag(cone_dst / cone_src) @ _BRADFORD
    colorants = adapt @ rgb_to_xyz
    curve = _tag_srgb_curve()
    chad = b"sf32\0\0\0\0" + b"".join(_s15(v) for v in adapt.flatten())
    tags = [
        (b"desc", _tag_mluc("Display P3")),
        (b"cprt", _tag_mluc("No copyright, use freely")),
        (b"wtpt", _tag_xyz(_D50)),
        (b"chad", chad),
        (b"rXYZ", _tag_xyz(colorants[:, 0])),
        (b"gXYZ", _tag_xyz(colorants[:, 1])),
        (b"bXYZ", _tag_xyz(colorants[:, 2])),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        padded = body + b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += padded
    size = offset + len(data)
    header = struct.pack(">I4sI4s4s4s", size, b"lcms", 0x04300000, b"mntr", b"RGB ", b"XYZ ")
    header += b"\0" * 12 + b"acsp" + b"APPL" + b"\0" * 4 + b"\0" * 8 + b"\0" * 8 + b"\0" * 4
    header += b"".join(_s15(v) for v in _D50) + b"lcms"
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + data


def convert(img: Image.Image, profile: bytes | Path, mode: str = "RGB") -> Image.Image:
    """``img`` (sRGB, untagged) converted with LittleCMS into ``profile``, the profile embedded."""
    target = ImageCms.ImageCmsProfile(
        io.BytesIO(profile) if isinstance(profile, bytes) else str(profile)
    )
    out = ImageCms.profileToProfile(
        img, ImageCms.createProfile("sRGB"), target,
        renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC, outputMode=mode,
        flags=ImageCms.Flags.BLACKPOINTCOMPENSATION,
    )  # fmt: skip
    out.info["icc_profile"] = target.tobytes()
    return out
