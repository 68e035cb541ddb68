"""Content Credentials (C2PA): a signed manifest in each output saying how it was made.

Optional (``c2pa_cert`` + ``c2pa_key``; off by default). The manifest's ``c2pa.actions``
assertion records one ``c2pa.created`` action with IPTC's ``trainedAlgorithmicMedia`` digital
source type, artd as the software agent, and the model and input hash as its parameters (the
input file itself is named by hash, not embedded as an ingredient: a 40 MB original inside
every output is not what an artist wants). Signing uses the ``c2pa-python`` package
(c2pa-rs), offline: no timestamp authority is contacted, so the signature's time is the
signer's claim. The certificate must be a chain whose leaf is not self-signed (c2pa-rs
refuses those) with an ES256/ES384/PS256/Ed25519 key; :meth:`ContentCredentials.load` checks
the pair by signing a tiny PNG once, so a bad key stops the start, not the first output.
"""

from __future__ import annotations

import functools
import io
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

import core
from core.outputs.labels import DIGITAL_SOURCE_TYPE

MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class CredentialsError(ValueError):
    """The certificate or key cannot sign (the message says which and why)."""


@dataclass
class ContentCredentials:
    """A signer for outputs; ``sign`` is safe from several encode threads."""

    cert_pem: bytes
    key_pem: bytes
    alg: str = "es256"

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, cert: os.PathLike[str] | str, key: os.PathLike[str] | str, alg: str = "es256"
    ) -> ContentCredentials:
        """Read and check the pair (module docstring); CredentialsError names what failed."""
        try:
            import c2pa  # noqa: F401
        except ImportError as exc:
            raise CredentialsError(f"the c2pa-python package is not installed ({exc})") from exc
        pems = []
        for what, path in (("certificate", cert), ("key", key)):
            try:
                pems.append(Path(path).read_bytes())
            except OSError as exc:
                raise CredentialsError(f"cannot read the {what} {path}: {exc.strerror}") from exc
        self = cls(pems[0], pems[1], alg)
        probe = io.BytesIO()
        Image.new("RGB", (8, 8)).save(probe, "PNG")
        try:
            self.sign(probe.getvalue(), "png", {"artd:model": "probe", "artd:input_sha256": ""})
        except Exception as exc:
            raise CredentialsError(f"the certificate and key cannot sign: {exc}") from exc
        return self

    def sign(self, data: bytes, fmt: str, metadata: dict[str, str]) -> bytes:
        """``data`` (an encoded ``fmt`` file) with a signed manifest embedded."""
        import c2pa

        info = c2pa.C2paSignerInfo(
            alg=self.alg.encode(), sign_cert=self.cert_pem,
            private_key=self.key_pem, ta_url=None,
        )  # fmt: skip
        with self._lock:  # the native signer is created per call; keep calls apart
            signer = c2pa.Signer.from_info(info)
            try:
                with c2pa.Builder(manifest(metadata)) as builder:
                    out = io.BytesIO()
                    builder.sign(signer, MIME[fmt], io.BytesIO(data), out)
                    return out.getvalue()
            finally:
                signer.close()


def load_credentials(
    cert: os.PathLike[str] | str, key: os.PathLike[str] | str
) -> ContentCredentials:
    """:meth:`ContentCredentials.load`, once per (files, their sizes and mtimes): the settings
    are validated per job and per start, and each load signs a probe."""
    stamps = []
    for path in (cert, key):
        try:
            st = os.stat(path)
            stamps.append((os.fspath(path), st.st_size, st.st_mtime_ns))
        except OSError:
            stamps.append((os.fspath(path), -1, -1))  # load() says why it cannot be read
    return _load_cached(tuple(stamps))


@functools.lru_cache(maxsize=8)
def _load_cached(stamps: tuple[tuple[str, int, int], ...]) -> ContentCredentials:
    return ContentCredentials.load(stamps[0][0], stamps[1][0])


def manifest(metadata: dict[str, str]) -> str:
    """The manifest definition (JSON) for one output."""
    params = {
        "model": metadata.get("artd:model", ""),
        "model_sha256": metadata.get("artd:model_sha256", ""),
        "input_sha256": metadata.get("artd:input_sha256", ""),
    }
    return json.dumps(
        {
            "claim_generator_info": [{"name": "artd", "version": core.__version__}],
            "title": "artd output",
            "assertions": [
                {
                    "label": "c2pa.actions",
                    "data": {
                        "actions": [
                            {
                                "action": "c2pa.created",
                                "digitalSourceType": DIGITAL_SOURCE_TYPE,
                                "softwareAgent": {"name": "artd", "version": core.__version__},
                                "parameters": params,
                            }
                        ]
                    },
                }
            ],
        }
    )


def read_manifest(data: bytes, fmt: str) -> tuple[dict, str | None]:
    """(the active manifest, the validation state) of a signed file; C2paError if none."""
    import c2pa

    with c2pa.Reader(MIME[fmt], io.BytesIO(data)) as reader:
        store = json.loads(reader.json())
        return store["manifests"][store["active_manifest"]], reader.get_validation_state()
