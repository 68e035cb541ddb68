"""The daemon's settings as a whole: each rule written once (the instance name, the output
defaults), and errors that name the setting (flag, env var) and never echo a secret."""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.config import (
    SECRET,
    FieldError,
    SettingsError,
    describe_errors,
    is_secret,
    load_settings,
    settings_from_flags,
)
from core.outputs.settings import OutputSettings
from daemon.settings import DaemonSettings, OutputOptions, ProcessSettings
from daemon.spool import Spool, SpoolError

SECRET_TOKEN = "s3cr3t-t0ken"  # too short for a page token: 12 characters
LONG_TOKEN = "a-long-enough-s3cr3t-t0ken-for-the-page"


def artd_check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``artd check`` in a subprocess with only these ``ARTD_*`` settings (and a root)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ARTD_")}
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", "check"],
        cwd=ROOT,
        env=clean | {"ARTD_ROOT": str(tmp_path / "root")} | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def no_artd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("ARTD_")]:
        monkeypatch.delenv(key)


# --- the instance name: the spool's rule ------------------------------------------------


def test_an_instance_name_the_spool_refuses_is_refused_by_artd_check(tmp_path: Path) -> None:
    done = artd_check(tmp_path, ARTD_INSTANCE="gpu@0")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "instance (--instance, ARTD_INSTANCE)" in done.stderr, done.stderr
    assert not (tmp_path / "root").exists()  # refused before any folder was made


@pytest.mark.parametrize("name", ["gpu@0", "-gpu", "a b", "x" * 65, "ok.name_1-2", "x" * 64])
def test_settings_and_spool_accept_the_same_instance_names(
    name: str, tmp_path: Path, no_artd_env: None
) -> None:
    try:
        DaemonSettings(instance=name, root=tmp_path)
        settings_ok = True
    except ValueError:
        settings_ok = False
    try:
        Spool(tmp_path, name)
        spool_ok = True
    except SpoolError:
        spool_ok = False
    assert settings_ok == spool_ok


# --- errors name the setting, never a secret ---------------------------------------------


def test_a_short_page_token_is_refused_by_name_and_never_echoed(tmp_path: Path) -> None:
    done = artd_check(tmp_path, ARTD_PAGE_TOKEN=SECRET_TOKEN)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "page_token (--page-token, ARTD_PAGE_TOKEN)" in done.stderr, done.stderr
    assert "at least 16" in done.stderr
    assert SECRET_TOKEN not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ARTD_COPY_GPS": "true"}, "copy_gps (--copy-gps, ARTD_COPY_GPS)"),
        ({"ARTD_OUTPUT_FORMAT": "same"}, "output_format (--output-format, ARTD_OUTPUT_FORMAT)"),
        ({"ARTD_PAGE_TOKEN_FILE": "/run/secrets/t"}, "page_token (--page-token, ARTD_PAGE_TOKEN)"),
        ({"ARTD_HTTP_PORT": "lots"}, "http_port (--http-port, ARTD_HTTP_PORT)"),
    ],
)
def test_a_valid_token_is_never_echoed_beside_another_error(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    # A check across settings once printed every setting given, the token among them.
    done = artd_check(tmp_path, ARTD_PAGE_TOKEN=LONG_TOKEN, **env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert named in done.stderr, done.stderr
    assert LONG_TOKEN not in done.stderr + done.stdout
    assert "'root'" not in done.stderr  # no dict of the settings given


def test_a_token_in_the_config_file_is_never_echoed(tmp_path: Path, no_artd_env: None) -> None:
    config = tmp_path / "artd.toml"
    config.write_text(f'page_token = "{SECRET_TOKEN}"\n')
    with pytest.raises(SettingsError) as caught:
        load_settings(DaemonSettings, {}, config)
    text = str(caught.value)
    assert SECRET_TOKEN not in text
    assert f"page_token (--page-token, ARTD_PAGE_TOKEN, {config} key page_token)" in text


@pytest.mark.parametrize(
    ("cli", "named"),
    [
        ({"http_host": "0.0.0.0"}, "http_host (--http-host, ARTD_HTTP_HOST)"),
        ({"copy_gps": "true"}, "copy_gps (--copy-gps, ARTD_COPY_GPS)"),
        ({"c2pa_cert": "/no/cert.pem"}, "c2pa_key (--c2pa-key, ARTD_C2PA_KEY)"),
    ],
)
def test_checks_across_settings_name_the_setting_to_change(
    cli: dict[str, str], named: str, tmp_path: Path, no_artd_env: None
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(DaemonSettings, cli | {"root": str(tmp_path)})
    assert named in str(caught.value)
    assert "?" not in str(caught.value).split(":", 1)[1].split("(", 1)[0]


def test_artd_process_names_its_own_flags(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"copy_gps \(--copy-gps\)"):
        settings_from_flags(ProcessSettings, {"copy_gps": "true"})
    with pytest.raises(SettingsError, match=r"output_format \(--format\)"):
        settings_from_flags(ProcessSettings, {"output_format": "gif"})


def test_the_page_token_is_marked_secret() -> None:
    assert is_secret(DaemonSettings, "page_token")
    assert not is_secret(DaemonSettings, "page_token_file")
    assert not is_secret(DaemonSettings, "http_host")


# --- output defaults: written once -------------------------------------------------------

# OutputOptions' field -> the OutputSettings value it becomes.
_AS_OUTPUT = {
    "colour_management": lambda o: o.colour.manage,
    "colour_intent": lambda o: o.colour.intent,
    "cmyk_profile": lambda o: o.colour.cmyk_profile,
    "colour": lambda o: o.palette,  # the operator's colour mode (o.colour: the ColourPolicy)
    "c2pa_cert": lambda o: o.credentials,
    "c2pa_key": lambda o: o.credentials,
}


def test_output_defaults_are_the_dataclass_defaults(no_artd_env: None, tmp_path: Path) -> None:
    plain = OutputSettings(512)
    for name, field in OutputOptions.model_fields.items():
        want = _AS_OUTPUT.get(name, lambda o, n=name: getattr(o, n))(plain)
        assert field.default == want, name
    process = ProcessSettings()
    assert OutputSettings.from_settings(process) == plain
    daemon = DaemonSettings(root=tmp_path)
    assert daemon.background_rgb == plain.background
    assert OutputSettings.from_settings(daemon) == plain
    assert {f.name for f in dataclasses.fields(OutputSettings)} >= {"background", "fmt"}


# --- the package ----------------------------------------------------------------------------


def test_settings_modules_are_small_and_import_each_other_directly() -> None:
    package = ROOT / "daemon" / "settings"
    for path in package.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 450, path
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "daemon.settings", f"{path.name}: import the module"


class _Checked(BaseSettings):
    """A settings class with model-wide checks, as another command's may have."""

    model_config = SettingsConfigDict(env_prefix="ARTD_T_")
    depth: int = 1
    key: str = Field("k" * 20, json_schema_extra=SECRET)
    token: SecretStr | None = None

    @model_validator(mode="after")
    def _checks(self) -> _Checked:
        if self.depth == 2:
            raise ValueError("depth 2 needs a key")  # a plain error starting with the setting
        if self.depth == 3:
            raise FieldError("key", "key is too weak for depth 3")
        if self.depth == 4:
            raise ValueError("these settings do not go together")
        return self


@pytest.mark.parametrize(
    ("depth", "named"),
    [
        (2, "depth (--depth, ARTD_T_DEPTH): Value error, depth 2 needs a key (got 2)"),
        (3, "key (--key, ARTD_T_KEY): Value error, key is too weak for depth 3\n"),
        (4, "settings: Value error, these settings do not go together\n"),
    ],
)
def test_model_wide_errors_name_a_setting_and_show_no_secret(depth: int, named: str) -> None:
    secret_key, token = "my-private-key-material", "my-token-value-12345"
    with pytest.raises(ValidationError) as caught:
        _Checked(depth=depth, key=secret_key, token=token)
    text = describe_errors(caught.value, _Checked, None) + "\n"
    assert named in text, text
    assert secret_key not in text and token not in text and "{" not in text
