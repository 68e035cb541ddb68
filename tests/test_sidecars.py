"""Job sidecars and presets without the daemon: names, bounded reads, hostile content, and the
one validation model (RenderSettings) behind defaults, presets and sidecars."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath

import pytest

from core.config import SettingsError, load_settings
from daemon import sidecars
from daemon.settings import (
    JOB_KEYS,
    SIDECAR_KEYS,
    DaemonSettings,
    JobError,
    RenderSettings,
    Resolver,
)


def settings(tmp_path: Path, checkpoint: Path, **presets: dict) -> DaemonSettings:
    return DaemonSettings(root=tmp_path / "root", checkpoint=checkpoint, size=64, presets=presets)


def test_names() -> None:
    assert sidecars.is_sidecar("a.jpg.artd.json")
    assert sidecars.is_sidecar("A.JPG.ARTD.JSON")
    assert not sidecars.is_sidecar(".artd.json")
    assert not sidecars.is_sidecar("a.jpg.json")  # Google Takeout's: not ours
    assert sidecars.image_name(sidecars.sidecar_name("x y.png")) == "x y.png"


def test_keys_come_from_the_render_settings() -> None:
    # Every render field a job may choose, and nothing about folders, paths or engines.
    assert {"size", "resize", "output_format", "strength", "steps", "eta", "seed"} <= JOB_KEYS
    assert set(RenderSettings.model_fields) >= JOB_KEYS
    for forbidden in ("root", "checkpoint", "device", "instance", "max_batch"):
        assert forbidden not in SIDECAR_KEYS


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
        (b"[" * 10_000 + b"]" * 10_000, "nested 10000 levels"),
        (b'{"a": {"b": {"c": 1}}}', "nested 3 levels"),
        (b"x" * (sidecars.MAX_BYTES + 1), "too large"),
    ],
)
def test_hostile_content_is_refused_before_json_recursion(data: bytes, fragment: str) -> None:
    with pytest.raises(sidecars.SidecarError, match=fragment):
        sidecars.parse(data)


def test_depth_ignores_brackets_in_strings() -> None:
    assert sidecars.nesting_depth('{"a": "[[[[{{{{\\"]]"}') == 1


def test_a_huge_sidecar_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg.artd.json"
    with open(path, "wb") as handle:
        handle.truncate(50 << 20)  # 50 MB
    with pytest.raises(sidecars.SidecarError, match="too large: 52428800 bytes"):
        sidecars.read_bounded(path)


def test_a_symlinked_sidecar_is_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"size": 64}')
    link = tmp_path / "a.jpg.artd.json"
    link.symlink_to(secret)
    with pytest.raises(sidecars.SidecarError, match="cannot be read"):
        sidecars.read_bounded(link)


def test_resolution_order_and_refusals(tmp_path: Path, pixel_checkpoint: Path) -> None:
    other = tmp_path / "other.safetensors"
    other.write_bytes(pixel_checkpoint.read_bytes())
    s = settings(
        tmp_path,
        pixel_checkpoint,
        watercolour={"checkpoint": str(other), "size": 96, "output_format": "webp"},
    )
    r = Resolver(s)
    default = r.resolve(PurePosixPath("a.jpg"), None)
    assert default["settings"]["size"] == 64 and default["model"] == "default"
    assert r.resolve(PurePosixPath("sub/a.jpg"), None)["preset"] is None  # not a preset folder
    job = r.resolve(PurePosixPath("watercolour/x/a.jpg"), None)
    assert (job["preset"], job["checkpoint"], job["output_ext"]) == (
        "watercolour",
        str(other),
        ".webp",
    )
    job = r.resolve(
        PurePosixPath("watercolour/a.jpg"), b'{"size": 32}', "watercolour/a.jpg.artd.json"
    )
    assert job["settings"]["size"] == 32 and job["settings"]["output_format"] == "webp"
    assert job["sidecar"] == "watercolour/a.jpg.artd.json"
    job = r.resolve(PurePosixPath("a.jpg"), b'{"model": "watercolour"}')
    assert job["checkpoint"] == str(other) and job["settings"]["size"] == 64

    hostile = {
        '{"root": "/"}': "unknown key 'root'",
        '{"checkpoint": "/etc/passwd"}': "key 'checkpoint': a sidecar names a model",
        '{"model": "/tmp/x.safetensors"}': "key 'model'",
        '{"model": "nope"}': "is not a configured model",
        '{"output_name": "../x"}': "unknown key 'output_name'",
        '{"size": 65}': "key 'size'",
        '{"size": "big"}': "key 'size'",
        '{"strength": 2}': "key 'strength'",
        '{"output_format": "exe"}': "key 'output_format'",
        '{"device": "cuda"}': "unknown key 'device'",
        '{"cmyk_profile": "/etc/passwd"}': "key 'cmyk_profile': a sidecar never names a file",
        '{"c2pa_key": "/root/key.pem"}': "key 'c2pa_key': a sidecar never names a file",
    }
    for text, fragment in hostile.items():
        with pytest.raises(JobError, match=fragment.replace("(", r"\(")):
            r.resolve(PurePosixPath("a.jpg"), text.encode())


def test_bad_presets_name_the_preset_and_the_key(tmp_path: Path, pixel_checkpoint: Path) -> None:
    cases = {
        "size": ({"size": 100}, "preset 'w': key 'size'"),
        "unknown": ({"hue": "red"}, "preset 'w': unknown key 'hue'"),
        "colour": ({"colour": "red"}, "preset 'w': key 'colour': Input should be 'auto'"),
        "missing": ({"checkpoint": str(tmp_path / "gone.safetensors")}, "does not exist"),
        "root": ({"root": "/"}, "preset 'w': unknown key 'root'"),
    }
    for values, fragment in cases.values():
        with pytest.raises(ValueError, match=fragment):
            settings(tmp_path, pixel_checkpoint, w=values)
    with pytest.raises(ValueError, match=re.escape("preset 'Bad/..'")):
        settings(tmp_path, pixel_checkpoint, **{"Bad/..": {}})


def test_presets_from_toml_tables(tmp_path: Path, pixel_checkpoint: Path, monkeypatch) -> None:
    for key in [k for k in os.environ if k.startswith("ARTD_")]:
        monkeypatch.delenv(key)
    config = tmp_path / "artd.toml"
    config.write_text(
        f'checkpoint = "{pixel_checkpoint}"\n[presets.sketch]\nsize = 32\nseed = 7\n'
        "[presets.bad]\nsteps = 0\n"
    )
    with pytest.raises(SettingsError, match="preset 'bad': key 'steps'"):
        load_settings(DaemonSettings, {}, config)
    config.write_text(f'checkpoint = "{pixel_checkpoint}"\n[presets.sketch]\nsize = 32\n')
    loaded = load_settings(DaemonSettings, {}, config)
    assert json.loads(json.dumps(loaded.presets)) == {"sketch": {"size": 32}}
