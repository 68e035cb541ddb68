"""Content Credentials with the real c2pa-python: a test CA and ES256 signer made here, each
output format signed and verified by the same library, a tampered output failing, and bad
settings stopping the start with a message that names the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

c2pa = pytest.importorskip("c2pa")

from c2pa_kit import make_chain  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from core.outputs.content_credentials import read_manifest  # noqa: E402
from core.outputs.labels import DIGITAL_SOURCE_TYPE  # noqa: E402
from core.runtime.engine import Engine  # noqa: E402
from core.runtime.img2img import OutputSettings  # noqa: E402
from daemon.oneshot import process  # noqa: E402
from daemon.settings import ProcessSettings  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
# Where each format's pixels start: a byte changed after it is a change to the image.
PIXELS = {"png": b"IDAT", "jpeg": b"\xff\xda", "webp": b"VP8 "}


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_signed_outputs_verify_and_tampered_ones_fail(
    pixel_checkpoint: Path, tmp_path: Path, fmt: str
) -> None:
    from conftest import write_images

    cert, key = make_chain(tmp_path)
    settings = ProcessSettings(checkpoint=pixel_checkpoint, size=64, output_format=fmt,
                               c2pa_cert=cert, c2pa_key=key)  # fmt: skip
    output = OutputSettings.from_settings(settings)
    assert output.credentials is not None
    write_images(tmp_path / "in", 1)
    engine = Engine.from_path(pixel_checkpoint, device="cpu")
    process([tmp_path / "in"], tmp_path / "out", engine, size=64, resize="fit", fmt=fmt,
            output=output, progress=False)  # fmt: skip
    data = (tmp_path / "out" / f"img0000.jpg{EXTENSIONS[fmt]}").read_bytes()
    manifest, state = read_manifest(data, fmt)
    assert state == "Valid"  # signed by our chain; "Trusted" would need it in a trust list
    action = manifest["assertions"][0]["data"]["actions"][0]
    assert action["action"] == "c2pa.created"
    assert action["digitalSourceType"] == DIGITAL_SOURCE_TYPE
    assert len(action["parameters"]["input_sha256"]) == 64
    tampered = bytearray(data)
    tampered[data.rindex(PIXELS[fmt]) + 40] ^= 0x55
    try:
        _, tampered_state = read_manifest(bytes(tampered), fmt)
    except c2pa.C2paError:
        tampered_state = "unreadable"
    assert tampered_state != "Valid"


def test_off_by_default(pixel_checkpoint: Path) -> None:
    assert (
        OutputSettings.from_settings(ProcessSettings(checkpoint=pixel_checkpoint)).credentials
        is None
    )


def test_missing_or_invalid_key_stops_with_a_message(
    pixel_checkpoint: Path, tmp_path: Path
) -> None:
    cert, key = make_chain(tmp_path)
    with pytest.raises(ValidationError, match="c2pa_key is needed"):
        ProcessSettings(checkpoint=pixel_checkpoint, c2pa_cert=cert)
    with pytest.raises(ValidationError, match="c2pa_cert/c2pa_key: cannot read the key"):
        ProcessSettings(checkpoint=pixel_checkpoint, c2pa_cert=cert, c2pa_key=tmp_path / "no.pem")
    (tmp_path / "other").mkdir()
    other_cert, _ = make_chain(tmp_path / "other")  # a certificate for another key
    with pytest.raises(
        ValidationError, match="c2pa_cert/c2pa_key: the certificate and key cannot sign"
    ):
        ProcessSettings(checkpoint=pixel_checkpoint, c2pa_cert=other_cert, c2pa_key=key)
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ValidationError, match="cannot sign"):
        ProcessSettings(checkpoint=pixel_checkpoint, c2pa_cert=cert, c2pa_key=tmp_path / "junk.pem")
