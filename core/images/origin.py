"""What an output keeps of its input: format, colour profile and the metadata worth copying.

Read at decode, from the file's own headers, into a small picklable record that crosses the
daemon's decoder-process boundary beside the pixels. Only what the output may carry is kept:
the input's format (``format = "same"``), its RGB profile (``output_profile = "input"``), and
its date, author, copyright and keywords from EXIF, IPTC and XMP, plus its GPS position
(written only when ``copy_gps`` allows). Its orientation is never kept: it is applied to the
pixels at decode, and copying the tag would rotate the output a second time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from xml.sax.saxutils import unescape

from PIL import ExifTags, Image, IptcImagePlugin

from core.images.colour import profile_space

_BASE = ExifTags.Base
_IPTC_BYLINE, _IPTC_KEYWORDS, _IPTC_COPYRIGHT, _IPTC_DATE = (2, 80), (2, 25), (2, 116), (2, 55)


@dataclass(frozen=True)
class Origin:
    """The input's format (PIL's name), RGB profile and copyable metadata (module docstring)."""

    format: str | None = None
    icc_profile: bytes | None = None
    date: str | None = None  # EXIF form, "YYYY:MM:DD HH:MM:SS"
    artist: str | None = None
    copyright: str | None = None
    keywords: tuple[str, ...] = ()
    gps: dict[int, object] = field(default_factory=dict)  # the EXIF GPS IFD, tag -> value

    @property
    def has_metadata(self) -> bool:
        return bool(self.date or self.artist or self.copyright or self.keywords or self.gps)


def origin_of(img: Image.Image) -> Origin:
    """The record for an opened (loaded) image; a broken metadata block only loses itself."""
    icc = img.info.get("icc_profile") or None
    exif = _exif(img)
    xmp = _xmp_fields(img)
    iptc = _iptc(img)
    return Origin(
        format=img.format,
        icc_profile=icc if icc and profile_space(icc) == "RGB" else None,
        date=_text(exif.get(_BASE.DateTimeOriginal) or exif.get(_BASE.DateTime))
        or _iptc_date(iptc.get(_IPTC_DATE))
        or xmp.get("date"),
        artist=_text(exif.get(_BASE.Artist))
        or _iptc_text(iptc.get(_IPTC_BYLINE))
        or xmp.get("creator"),
        copyright=_text(exif.get(_BASE.Copyright))
        or _iptc_text(iptc.get(_IPTC_COPYRIGHT))
        or xmp.get("rights"),
        keywords=_keywords(iptc.get(_IPTC_KEYWORDS)) or _xmp_keywords(xmp),
        gps=_gps(img),
    )


def _exif(img: Image.Image) -> dict[int, object]:
    try:
        exif = img.getexif()
        merged = dict(exif)
        merged.update(exif.get_ifd(ExifTags.IFD.Exif))
        return merged
    except Exception:
        return {}


def _gps(img: Image.Image) -> dict[int, object]:
    try:
        return dict(img.getexif().get_ifd(ExifTags.IFD.GPSInfo))
    except Exception:
        return {}


def _iptc(img: Image.Image) -> dict[tuple[int, int], object]:
    try:
        return IptcImagePlugin.getiptcinfo(img) or {}
    except Exception:
        return {}


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.strip("\x00 ")
    return value or None


def _iptc_text(value: object) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return _text(value)


def _iptc_date(value: object) -> str | None:
    text = _iptc_text(value)  # CCYYMMDD
    if text and re.fullmatch(r"\d{8}", text):
        return f"{text[:4]}:{text[4:6]}:{text[6:]} 00:00:00"
    return None


def _keywords(value: object) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value] if value else []
    return tuple(t for t in (_text(v) for v in items) if t)


_XMP_SIMPLE = {
    "date": re.compile(r"<(?:photoshop:DateCreated|xmp:CreateDate)>([^<]+)<", re.S),
    "creator": re.compile(r"<dc:creator>.*?<rdf:li[^>]*>([^<]+)</rdf:li>", re.S),
    "rights": re.compile(r"<dc:rights>.*?<rdf:li[^>]*>([^<]+)</rdf:li>", re.S),
}
_XMP_SUBJECT = re.compile(r"<dc:subject>(.*?)</dc:subject>", re.S)
_XMP_ITEM = re.compile(r"<rdf:li[^>]*>([^<]+)</rdf:li>")


def _xmp_fields(img: Image.Image) -> dict[str, str]:
    """The four fields from the input's XMP packet, if it has one (element form only)."""
    raw = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp") or b""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    if not text:
        return {}
    found = {}
    for name, pattern in _XMP_SIMPLE.items():
        match = pattern.search(text)
        if match:
            found[name] = unescape(match.group(1).strip())
    subject = _XMP_SUBJECT.search(text)
    if subject:
        found["subject"] = "\n".join(unescape(k) for k in _XMP_ITEM.findall(subject.group(1)))
    if "date" in found:
        found["date"] = _xmp_date(found["date"])
    return found


def _xmp_keywords(xmp: dict[str, str]) -> tuple[str, ...]:
    return tuple(k for k in xmp.get("subject", "").split("\n") if k)


def _xmp_date(value: str) -> str:
    """ISO 8601 (XMP) to EXIF's "YYYY:MM:DD HH:MM:SS"; unchanged if not recognised."""
    match = re.match(r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2}))?)?", value)
    if not match:
        return value
    y, mo, d, h, mi, s = (g or "00" for g in match.groups())
    return f"{y}:{mo}:{d} {h}:{mi}:{s}"
