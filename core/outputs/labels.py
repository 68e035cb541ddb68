"""The standard AI label: IPTC DigitalSourceType in XMP, EXIF Software/ImageDescription.

artd's own ``ai_generated``/``artd:*`` keys are read by nobody but artd; platforms and photo
tools read IPTC's ``Iptc4xmpExt:DigitalSourceType`` (the value ``trainedAlgorithmicMedia``:
"created by a trained algorithm from sampled content"), so every output carries an XMP packet
with it, the model, the input's hash and the settings, and, in JPEG and WebP, EXIF
``Software`` and ``ImageDescription`` (PNG gets the same XMP, and its text chunks stay as
before). The packet also holds artd's private fields as JSON (``artd:metadata``), which is
where :func:`core.outputs.encoding.read_metadata` finds them in JPEG and WebP.

The input's own date, author, copyright and keywords (core.images.origin) are written only when the
caller passes them (``copy_metadata``); its GPS position only with ``gps=True``.
"""

from __future__ import annotations

import json
from xml.sax.saxutils import escape, quoteattr

from PIL import ExifTags, Image

from core.images.origin import Origin

# The IPTC term for AI output; the XMP label and the Content Credentials manifest both say it.
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
ARTD_NS = "http://ns.artd.local/1.0/"
_NAMESPACES = {
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "dc": "http://purl.org/dc/elements/1.1/",
    "photoshop": "http://ns.adobe.com/photoshop/1.0/",
    "artd": ARTD_NS,
}


def description(metadata: dict[str, str]) -> str:
    """The one-line ImageDescription: what made the output, from what."""
    model = metadata.get("artd:model", "a trained model")
    source = metadata.get("artd:source") or f"input sha256 {metadata.get('artd:input_sha256', '')}"
    return f"AI-generated (trainedAlgorithmicMedia) by artd with model {model} from {source}"


def xmp_packet(
    metadata: dict[str, str], *, ai_made: bool = True, copied: Origin | None = None
) -> bytes:
    """An XMP packet: the DigitalSourceType (when ``ai_made``), the model, input hash and
    settings as artd fields, the private fields as JSON, and ``copied``'s date, author,
    copyright and keywords."""
    props = []
    if ai_made:
        props.append(
            f"<Iptc4xmpExt:DigitalSourceType>{DIGITAL_SOURCE_TYPE}</Iptc4xmpExt:DigitalSourceType>"
        )
    if "Software" in metadata:
        props.append(f"<xmp:CreatorTool>{escape(metadata['Software'])}</xmp:CreatorTool>")
    if "artd:created" in metadata:
        props.append(f"<xmp:CreateDate>{escape(metadata['artd:created'])}</xmp:CreateDate>")
    if ai_made:
        props.append(_alt("dc:description", description(metadata)))
    for key in ("artd:model", "artd:model_sha256", "artd:input_sha256", "artd:settings"):
        if key in metadata:
            props.append(f"<{key}>{escape(metadata[key])}</{key}>")
    if copied is not None:
        props.extend(_copied_xmp(copied))
    if metadata:
        props.append(
            f"<artd:metadata>{escape(json.dumps(metadata, ensure_ascii=False))}</artd:metadata>"
        )
    xmlns = " ".join(f"xmlns:{p}={quoteattr(uri)}" for p, uri in _NAMESPACES.items())
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" {xmlns}>{"".join(props)}</rdf:Description>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def exif_block(
    metadata: dict[str, str],
    *,
    ai_made: bool = True,
    copied: Origin | None = None,
    gps: bool = False,
) -> bytes:
    """EXIF with Software and ImageDescription, ``copied``'s date, artist and copyright, and
    its GPS IFD only when ``gps``. Never an Orientation tag (module docstring of
    core.images.origin)."""
    exif = Image.Exif()
    if "Software" in metadata:
        exif[ExifTags.Base.Software] = metadata["Software"]
    if ai_made:
        exif[ExifTags.Base.ImageDescription] = description(metadata)
    if copied is not None:
        if copied.artist:
            exif[ExifTags.Base.Artist] = copied.artist
        if copied.copyright:
            exif[ExifTags.Base.Copyright] = copied.copyright
        if copied.date:
            exif[ExifTags.Base.DateTime] = copied.date
            exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = copied.date
        if gps and copied.gps:
            exif.get_ifd(ExifTags.IFD.GPSInfo).update(copied.gps)
    return exif.tobytes()


def _alt(name: str, text: str) -> str:
    return (
        f'<{name}><rdf:Alt><rdf:li xml:lang="x-default">{escape(text)}</rdf:li></rdf:Alt></{name}>'
    )


def _copied_xmp(origin: Origin) -> list[str]:
    props = []
    if origin.artist:
        props.append(
            f"<dc:creator><rdf:Seq><rdf:li>{escape(origin.artist)}</rdf:li></rdf:Seq></dc:creator>"
        )
    if origin.copyright:
        props.append(_alt("dc:rights", origin.copyright))
    if origin.keywords:
        items = "".join(f"<rdf:li>{escape(k)}</rdf:li>" for k in origin.keywords)
        props.append(f"<dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>")
    if origin.date:
        props.append(f"<photoshop:DateCreated>{escape(_iso(origin.date))}</photoshop:DateCreated>")
    return props


def _iso(exif_date: str) -> str:
    """EXIF "YYYY:MM:DD HH:MM:SS" as XMP's ISO 8601."""
    day, _, time = exif_date.partition(" ")
    return day.replace(":", "-") + (f"T{time}" if time else "")
