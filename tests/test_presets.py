"""Presets per folder and settings per job on the real daemon (docs/operations.md): two
presets on two checkpoints plus the defaults, job sidecars, hostile sidecars, settings fixed
at claim."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
from conftest import seeded_model, textured_image
from daemon_harness import Daemon, files_under, wait_for
from PIL import Image

from core.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from core.outputs.encoding import read_metadata
from daemon.settings import DaemonSettings, Resolver
from daemon.spool import Spool

SUFFIX = ".artd.json"


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("second") / "watercolour.safetensors"
    save_checkpoint(path, seeded_model(5).state_dict(), CheckpointMeta(epoch=2))
    return path


def presets_for(second: Path) -> dict[str, dict[str, object]]:
    return {
        "watercolour": {"checkpoint": str(second), "size": 96, "output_format": "webp"},
        "sketch": {"size": 32, "resize": "stretch"},
    }


DEFAULTS = {"size": 64, "resize": "fit", "output_format": "png"}
EXT = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}


def expected_job(
    rel: str, sidecar: dict[str, object] | None, presets: dict, checkpoints: dict[str, Path]
) -> dict[str, object]:
    """What the output of ``inbox/<rel>`` must carry, worked out independently of the daemon."""
    top = rel.split("/")[0] if "/" in rel else None
    preset = top if top in presets else None
    values = dict(DEFAULTS)
    model = "default"
    if preset:
        values |= {k: v for k, v in presets[preset].items() if k != "checkpoint"}
        model = preset
    if sidecar:
        values |= {k: v for k, v in sidecar.items() if k != "model"}
        model = str(sidecar.get("model", model))
    return values | {"preset": preset, "checkpoint": checkpoints[model], "model": model}


def check_output(root: Path, rel: str, expected: dict[str, object], sidecar: bool) -> None:
    out = root / "outbox" / f"{rel}{EXT[str(expected['output_format'])]}"
    assert out.is_file(), f"{out} missing"
    data = out.read_bytes()
    meta = read_metadata(data)
    recorded = json.loads(meta["artd:settings"])
    assert meta["artd:model_sha256"] == load_checkpoint(expected["checkpoint"]).sha256, rel
    assert recorded["size"] == expected["size"] and recorded["format"] == expected["output_format"]
    assert recorded["resize"] == expected["resize"], rel
    assert recorded["preset"] == expected["preset"], rel
    assert recorded["model_name"] == expected["model"], rel
    assert recorded["sidecar"] == (f"{rel}{SUFFIX}" if sidecar else None), rel
    with Image.open(out) as image:
        width, height = image.size
    if expected["resize"] == "stretch":
        assert (width, height) == (expected["size"], expected["size"]), rel
    else:
        assert max(width, height) == expected["size"], (rel, image.size)
    assert (
        meta["artd:input_sha256"]
        == hashlib.sha256((root / "archive" / rel).read_bytes()).hexdigest()
    )


def drop(inbox: Path, rel: str, seed: int, sidecar: dict | None, *, temp_sidecar: bool) -> None:
    """The sidecar first (half of them written under a temporary name and renamed in), the
    image last, each written under a temporary name and renamed in as copy tools do."""
    path = inbox / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if sidecar is not None:
        text = json.dumps(sidecar)
        target = path.parent / f"{path.name}{SUFFIX}"
        if temp_sidecar:
            temp = path.parent / f"{path.name}{SUFFIX}.part"
            temp.write_text(text)
            temp.rename(target)
        else:
            target.write_text(text)
    temp = path.parent / f".{path.name}.tmp"
    textured_image(96 + 8 * (seed % 3), 64, seed=seed).save(temp, "JPEG")
    temp.rename(path)


def mixed_drops(count: int, seed: int = 14) -> list[tuple[str, dict | None]]:
    """``count`` files across the two presets, the defaults and a plain sub-folder (defaults
    too); every third one with a sidecar of its own."""
    rng = random.Random(seed)
    folders = ["", "watercolour/", "sketch/", "misc/", "watercolour/deep/"]
    overrides = [
        lambda i: {"size": 40 + 8 * (i % 4)},
        lambda i: {"model": "watercolour", "seed": i},
        lambda i: {"output_format": "jpeg", "size": 48},
        lambda i: {"model": "default", "resize": "stretch", "size": 56},
    ]
    drops = []
    for i in range(count):
        folder = folders[i % len(folders)]
        sidecar = overrides[rng.randrange(len(overrides))](i) if i % 3 == 0 else None
        drops.append((f"{folder}img{i:03d}.jpg", sidecar))
    return drops


def assert_settled(root: Path, drops: list[tuple[str, dict | None]]) -> None:
    """Every image once in the outbox, its sidecar beside its original; nothing left over."""
    assert not files_under(root / ".artd" / "work"), files_under(root / ".artd" / "work")
    assert not [p for p in files_under(root / "inbox")], files_under(root / "inbox")
    assert not files_under(root / "quarantine"), files_under(root / "quarantine")
    for rel, sidecar in drops:
        archived = root / "archive" / f"{rel}{SUFFIX}"
        assert archived.is_file() == (sidecar is not None), rel
        if sidecar is not None:
            assert json.loads(archived.read_text()) == sidecar
    assert not [p for p in files_under(root / "outbox") if p.name.endswith(SUFFIX)]


def test_presets_and_sidecars_sixty_files(
    tmp_path: Path, pixel_checkpoint: Path, second_checkpoint: Path
) -> None:
    root = tmp_path / "root"
    presets = presets_for(second_checkpoint)
    checkpoints = {
        "default": pixel_checkpoint,
        "watercolour": second_checkpoint,
        "sketch": pixel_checkpoint,
    }
    drops = mixed_drops(60)
    with Daemon(root, pixel_checkpoint, presets=json.dumps(presets)) as daemon:
        inbox = root / "inbox"
        assert (inbox / "watercolour").is_dir() and (inbox / "sketch").is_dir()  # made at start
        for i, (rel, sidecar) in enumerate(drops):
            drop(inbox, rel, i, sidecar, temp_sidecar=i % 2 == 0)
        wait_for(lambda: len(files_under(root / "archive")) == 60 + 20, 180, "60 files done")
        status, health = daemon.health()
        assert status == 200
        loaded = {m["checkpoint"] for m in health["models"]}
        assert loaded == {str(pixel_checkpoint), str(second_checkpoint)}
        metrics = daemon.metrics()
        assert "artd_models_loaded 2.0" in metrics
        assert metrics.count("artd_loaded_model{") == 2
        assert daemon.stop() == 0
    for rel, sidecar in drops:
        check_output(
            root, rel, expected_job(rel, sidecar, presets, checkpoints), sidecar is not None
        )
    assert_settled(root, drops)
    # The preset folders survive the empty-folder clean-up; plain sub-folders do not matter.
    assert (root / "inbox" / "watercolour").is_dir()


def test_hostile_sidecars_quarantine_the_image_with_a_reason(
    tmp_path: Path, pixel_checkpoint: Path
) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    decoy = outside / "decoy.json"
    decoy.write_text('{"size": 32}')
    before = decoy.read_bytes()
    hostile: dict[str, bytes | None] = {
        "malformed.jpg": b'{"size": 64,,}',
        "huge.jpg": None,  # 50 MB, written below
        "deep.jpg": b"[" * 10_000 + b"]" * 10_000,
        "root.jpg": json.dumps({"root": str(outside)}).encode(),
        "path.jpg": json.dumps({"checkpoint": str(decoy)}).encode(),
        "model.jpg": json.dumps({"model": "no-such-model"}).encode(),
        "name.jpg": json.dumps({"output_name": "../x"}).encode(),
        "type.jpg": json.dumps({"size": "huge"}).encode(),
        "range.jpg": json.dumps({"strength": 7}).encode(),
    }
    keys = {
        "malformed.jpg": "malformed JSON",
        "huge.jpg": "too large",
        "deep.jpg": "nested 10000 levels",
        "root.jpg": "unknown key 'root'",
        "path.jpg": "key 'checkpoint'",
        "model.jpg": "key 'model'",
        "name.jpg": "unknown key 'output_name'",
        "type.jpg": "key 'size'",
        "range.jpg": "key 'strength'",
    }
    with Daemon(root, pixel_checkpoint, sidecar_orphan_seconds=1) as daemon:
        inbox = root / "inbox"
        for i, (name, data) in enumerate(hostile.items()):
            side = inbox / f"{name}{SUFFIX}"
            if data is None:
                with open(side, "wb") as handle:
                    handle.write(b'{"size": ' + b" " * (50 << 20) + b"64}")
            else:
                side.write_bytes(data)
            textured_image(96, 64, seed=i).save(inbox / name, "JPEG")
        (inbox / "lonely.jpg.artd.json").write_text('{"size": 32}')  # its image never comes
        (inbox / "link.jpg.artd.json").symlink_to(decoy)
        textured_image(96, 64, seed=99).save(inbox / "link.jpg", "JPEG")
        total = len(hostile) + 1
        wait_for(
            lambda: len(list((root / "quarantine").glob("*.error.json"))) == total,
            120,
            "hostile sidecars quarantined",
        )
        wait_for(lambda: not (inbox / "lonely.jpg.artd.json").exists(), 30, "orphan removed")
        assert daemon.stop() == 0
    keys["link.jpg"] = "cannot be read"
    for name, fragment in keys.items():
        error = json.loads((root / "quarantine" / f"{name}.error.json").read_text())
        assert error["reason"] == "invalid_sidecar", (name, error)
        assert fragment in error["message"], (name, error["message"])
        assert (root / "quarantine" / name).is_file(), name
        assert os.path.lexists(root / "quarantine" / f"{name}{SUFFIX}"), name  # travels with it
    # No sidecar ever quarantined as an image: each one's image is beside it.
    for path in (root / "quarantine").glob(f"*{SUFFIX}"):
        assert (root / "quarantine" / path.name[: -len(SUFFIX)]).is_file()
    assert not files_under(root / "outbox")
    assert not files_under(root / ".artd" / "work")
    assert decoy.read_bytes() == before and sorted(os.listdir(outside)) == ["decoy.json"]


def test_settings_are_fixed_at_claim(
    tmp_path: Path, pixel_checkpoint: Path, second_checkpoint: Path
) -> None:
    """A file claimed under one configuration keeps its settings through a restart with
    another: the preset changed size, format and checkpoint in between."""
    root = tmp_path / "root"
    before = {"watercolour": {"size": 32, "output_format": "png"}}
    after = presets_for(second_checkpoint)
    settings = DaemonSettings(
        root=root, checkpoint=pixel_checkpoint, size=64, presets=before, instance="test"
    )
    spool = Spool(root, "test", resolve=Resolver(settings).resolve)
    with spool:
        (spool.inbox / "watercolour").mkdir()
        image = spool.inbox / "watercolour" / "a.jpg"
        textured_image(96, 64, seed=3).save(image, "JPEG")
        (image.parent / f"a.jpg{SUFFIX}").write_text('{"resize": "stretch"}')
        claim = spool.claim(image)
        assert claim is not None and claim.job is not None
        assert claim.job["settings"]["size"] == 32
    with Daemon(root, pixel_checkpoint, presets=json.dumps(after)) as daemon:
        out = root / "outbox" / "watercolour" / "a.jpg.png"
        wait_for(out.exists, 60, "the claimed file")
        assert daemon.stop() == 0
    meta = read_metadata(out.read_bytes())
    recorded = json.loads(meta["artd:settings"])
    assert (recorded["size"], recorded["resize"], recorded["sidecar"]) == (
        32,
        "stretch",
        "watercolour/a.jpg.artd.json",
    )
    assert meta["artd:model_sha256"] == load_checkpoint(pixel_checkpoint).sha256
    with Image.open(out) as img:
        assert img.size == (32, 32)
    assert (root / "archive" / "watercolour" / f"a.jpg{SUFFIX}").is_file()
    assert PurePosixPath("watercolour/a.jpg")  # the relative path kept


DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def docs_example() -> tuple[str, str, str, list[tuple[str, str]]]:
    """The worked example of docs/operations.md: the TOML, the sidecar's path and text, and
    the table's (dropped, written) pairs."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Presets and job sidecars", 1)[1].split("\n## ", 1)[0]
    toml = section.split("```toml\n", 1)[1].split("```", 1)[0]
    sidecar = section.split("```json\n", 1)[1].split("```", 1)[0]
    sidecar_path = re.search(r"`(/var/lib/artd/data/inbox/\S+\.artd\.json)`", section).group(1)
    rows = re.findall(r"^\| `inbox/(\S+?)`.*?\| `outbox/(\S+?)` \|", section, re.M)
    return toml, sidecar_path, sidecar, rows


def test_the_worked_example_in_the_docs(tmp_path: Path, pixel_checkpoint: Path) -> None:
    toml, sidecar_path, sidecar, rows = docs_example()
    base = tmp_path / "var-lib-artd"
    checkpoints = base / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "default.safetensors").write_bytes(pixel_checkpoint.read_bytes())
    (checkpoints / "current").symlink_to("default.safetensors")
    save_checkpoint(
        checkpoints / "watercolour.safetensors",
        seeded_model(5).state_dict(),
        CheckpointMeta(epoch=2),
    )
    config = tmp_path / "artd.toml"
    config.write_text(toml.replace("/var/lib/artd", str(base)))
    root = base / "data"
    daemon = Daemon(root, pixel_checkpoint)
    for key in ("ARTD_ROOT", "ARTD_CHECKPOINT", "ARTD_SIZE"):  # the file says these
        daemon.env.pop(key)
    check = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "check", "--config", str(config)],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stderr
    report = json.loads(check.stdout)
    assert report["presets"]["watercolour"]["settings"]["size"] == 512
    assert report["presets"]["sketch"]["settings"]["resize"] == "stretch"
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "--config", str(config)],
        cwd=Path(__file__).resolve().parent.parent,
        env=daemon.env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "daemon.log", "wb"),  # noqa: SIM115
    )
    daemon.proc = proc
    try:
        wait_for(daemon.ready, 60, "daemon ready")
        assert (root / "inbox" / "watercolour").is_dir() and (root / "inbox" / "sketch").is_dir()
        side = Path(sidecar_path.replace("/var/lib/artd", str(base)))
        side.write_text(sidecar)
        for i, (dropped, _written) in enumerate(rows):
            textured_image(160, 120, seed=i).save(root / "inbox" / dropped, "JPEG")
        for _dropped, written in rows:
            wait_for((root / "outbox" / written).exists, 120, written)
        assert daemon.stop() == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    sizes = {}
    for _dropped, written in rows:
        out = root / "outbox" / written
        with Image.open(out) as image:
            sizes[written] = image.size
    assert sizes == {
        "holiday.jpg.png": (256, 192),
        "watercolour/pond.jpg.webp": (512, 384),
        "sketch/portrait.jpg.png": (192, 192),
    }
    portrait = read_metadata((root / "outbox" / "sketch/portrait.jpg.png").read_bytes())
    water = load_checkpoint(checkpoints / "watercolour.safetensors").sha256
    assert portrait["artd:model_sha256"] == water
    assert json.loads(portrait["artd:settings"])["job"]["seed"] == 7
    assert (root / "archive" / "sketch" / "portrait.jpg.artd.json").read_text() == sidecar


def artd_check(config: Path) -> subprocess.CompletedProcess[str]:
    """``artd check --config CONFIG`` as a real subprocess, with no ``ARTD_*`` from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTD_")}
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", "check", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_artd_check_refuses_a_bad_preset_naming_it_and_the_key(
    tmp_path: Path, pixel_checkpoint: Path
) -> None:
    config = tmp_path / "artd.toml"
    cases = {
        "[presets.sketch]\nsize = 100\n": "preset 'sketch': key 'size'",
        '[presets.oil]\ncheckpoint = "/no/oil.safetensors"\n': "preset 'oil': key 'checkpoint'",
        '[presets.ink]\nroot = "/"\n': "preset 'ink': unknown key 'root'",
    }
    for body, fragment in cases.items():
        config.write_text(
            f'root = "{tmp_path / "root"}"\ncheckpoint = "{pixel_checkpoint}"\n{body}'
        )
        result = artd_check(config)
        assert result.returncode == 1, result
        assert fragment in result.stderr, result.stderr


def test_artd_check_refuses_a_preset_model_of_an_objective_it_cannot_serve(
    tmp_path: Path, pixel_checkpoint: Path
) -> None:
    """The checkpoint loads, but its objective is none this version serves: the daemon would
    refuse it at its first job, so check says so now, naming the preset and the key."""
    served = load_checkpoint(pixel_checkpoint)
    painted = tmp_path / "paint.safetensors"
    save_checkpoint(painted, served.state_dict, dataclasses.replace(served.meta, objective="paint"))
    config = tmp_path / "artd.toml"
    config.write_text(
        f'root = "{tmp_path / "root"}"\ncheckpoint = "{pixel_checkpoint}"\n'
        f'[presets.paint]\ncheckpoint = "{painted}"\n'
    )
    result = artd_check(config)
    assert result.returncode == 1, result
    problems = json.loads(result.stdout)["problems"]
    assert problems == [
        "preset 'paint': key 'checkpoint': unknown objective 'paint': choose one of "
        "reconstruct, denoise, style, guided"
    ]
