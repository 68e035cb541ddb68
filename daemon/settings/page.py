"""The daemon's page and JSON API settings (``PageSettings``): the retry token, thumbnails,
paging. A mixin of ``DaemonSettings``, whose ``http_host``/``http_port`` the server binds;
the check that a public bind has a token is DaemonSettings' (it reads both halves).

The retry token is the page's only secret: it is a ``SecretStr`` marked secret (its repr and
every log line show ``**********``, and no settings error shows it), and it may come from a
file (``page_token_file``, e.g. a Docker secret) so that it never has to sit in an
environment listing.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings

from core.config import SECRET, FieldError

MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve anywhere


class PageSettings(BaseSettings):
    """The page's settings."""

    page_token: SecretStr | None = Field(
        None,
        description="secret that the page's retry action needs (header X-Artd-Token); "
        "unset: the page is read-only. Required when http_host is not loopback",
        json_schema_extra=SECRET,
    )
    page_token_file: Path | None = Field(
        None,
        description="read page_token from this file instead (a Docker or systemd secret)",
    )
    page_size: int = Field(24, ge=1, le=200, description="results per page of the gallery")
    page_thumb_px: int = Field(
        192, ge=32, le=1024, multiple_of=8, description="thumbnail's longer side"
    )
    page_thumb_cache_mb: float = Field(
        64.0, ge=1.0, description="bound of the thumbnail cache under the state folder"
    )
    page_index_seconds: float = Field(
        2.0, ge=0.1, description="the outbox listing is re-read at most this often"
    )
    page_hosts: str = Field(
        "",
        description="comma-separated host names (besides IP addresses and localhost) the "
        "page is reached by; a POST naming another Host is refused (DNS rebinding)",
    )
    page_max_connections: int = Field(
        64, ge=4, le=4096, description="HTTP connections served at once; more are closed"
    )

    @field_validator("page_token")
    @classmethod
    def _token_length(cls, value: SecretStr | None) -> SecretStr | None:
        # The message never holds the token (nor its length): only the rule.
        if value is not None and len(value.get_secret_value()) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"page_token (ARTD_PAGE_TOKEN) must be at least {MIN_TOKEN_CHARS} characters"
            )
        return value

    @model_validator(mode="after")
    def _one_token_source(self) -> PageSettings:
        if self.page_token is not None and self.page_token_file is not None:
            raise FieldError(
                "page_token",
                "set page_token or page_token_file (ARTD_PAGE_TOKEN_FILE), not both",
            )
        return self

    def retry_token(self) -> str | None:
        """The token, read from ``page_token_file`` when that is set; None: retry is off.
        Raises ValueError naming the setting when the file is unreadable or too short."""
        if self.page_token is not None:
            return self.page_token.get_secret_value()
        if self.page_token_file is None:
            return None
        try:
            token = self.page_token_file.read_text().strip()
        except OSError as exc:
            raise ValueError(
                f"page_token_file (ARTD_PAGE_TOKEN_FILE): cannot read "
                f"{self.page_token_file}: {exc.strerror}"
            ) from None
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"page_token_file (ARTD_PAGE_TOKEN_FILE): {self.page_token_file} holds fewer "
                f"than {MIN_TOKEN_CHARS} characters"
            )
        return token
