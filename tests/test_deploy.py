"""Deployment files: the systemd units, the compose file and the image agree with the code.

What runs here: ``systemd-analyze verify`` and ``systemd-analyze security --offline=yes`` on
the units, ``docker-compose config -q`` on the compose file, and the real settings loaders
(``daemon.cli.resolve``, ``core.training.settings.parse_settings``) on every env var and
flag the files set. Nothing here starts a container or a unit.

Stand-ins, so that ``verify`` can check the ExecStart binaries: the units are rendered into a
tmp dir with ``/opt/artd/venv/bin/`` replaced by a tmp ``bin/`` holding executable ``artd`` and
``python`` scripts. The ``artd`` user is kept (verify does not look users up). Nothing else
changes. The template is checked as the instance ``artd@0.service``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest

from core.training.command import parse_settings
from core.training.gate import EXIT_NOT_PROMOTED
from core.training.settings import TrainSettings
from daemon.cli import resolve
from daemon.metrics import Metrics
from daemon.settings import DaemonSettings

REPO = Path(__file__).resolve().parents[1]
SYSTEMD = REPO / "systemd"
COMPOSE = REPO / "docker-compose.yml"
UNIT_FILES = ("artd.service", "artd@.service", "artd-train.service", "artd-train.timer")
DAEMON_UNITS = ("artd.service", "artd@.service")
VENV_BIN = "/opt/artd/venv/bin/"
MAX_EXPOSURE = 2.0
# Keys of systemd >= 254 (restart back-off); older versions warn that they are unknown and go on.
NEWER_KEYS = ("RestartSteps", "RestartMaxDelaySec")
# Specifier values used to read artd@.service as the instance artd@0 on host "testhost".
SPECIFIERS = {"i": "0", "I": "0", "l": "testhost", "H": "testhost.example", "%": "%"}

DAEMON_PREFIX = "ARTD_"
TRAIN_PREFIX = "ARTD_TRAIN_"
DAEMON_VARS = {DAEMON_PREFIX + name.upper() for name in DaemonSettings.model_fields}
TRAIN_VARS = {TRAIN_PREFIX + name.upper() for name in TrainSettings.model_fields}
# Not required by the settings class (it has dev defaults: ./var and the packaged model), but
# a deployment that leaves them out serves from the wrong place.
DEPLOY_REQUIRED_DAEMON = {"ARTD_ROOT", "ARTD_CHECKPOINT"}
DEPLOY_REQUIRED_TRAIN = {
    TRAIN_PREFIX + name.upper()
    for name, field in TrainSettings.model_fields.items()
    if field.is_required()
} | {"ARTD_TRAIN_OUT", "ARTD_TRAIN_PROMOTE"}
DRAIN_DEFAULT_S = DaemonSettings.model_fields["drain_seconds"].default
HTTP_PORT_DEFAULT = DaemonSettings.model_fields["http_port"].default


# --- helpers -------------------------------------------------------------------------------


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed here (CI installs it; see .ci/run)")
    return path


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as ordered (key, value) lists; keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"continuation lines are not parsed here: {raw!r}"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"key outside a section: {raw!r}"
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def unit(name: str) -> dict[str, list[tuple[str, str]]]:
    return parse_unit((SYSTEMD / name).read_text(encoding="utf-8"))


def values(sections: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in sections.get(section, []) if k == key]


def single(sections: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(sections, section, key)
    assert len(found) == 1, f"[{section}] {key}= should be set once, found {found}"
    return found[0]


def expand(value: str) -> str:
    def replace(match: re.Match[str]) -> str:
        assert match.group(1) in SPECIFIERS, f"no test value for specifier %{match.group(1)}"
        return SPECIFIERS[match.group(1)]

    return re.sub(r"%(.)", replace, value)


def unit_environment(sections: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    """What Environment= sets (systemd quoting is shell-like for these simple values)."""
    env: dict[str, str] = {}
    for line in values(sections, "Service", "Environment"):
        for word in shlex.split(expand(line)):
            key, sep, value = word.partition("=")
            assert sep, f"not an assignment: {word!r}"
            env[key] = value
    return env


def seconds(span: str) -> float:
    """A systemd or compose time span: '45', '45s', '1min 30s', '6h', '1m30s'."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span.strip())
    assert parts and "".join(n + u for n, u in parts) == span.replace(" ", ""), span
    return sum(float(number) * units[unit] for number, unit in parts)


def artd_names(text: str) -> set[str]:
    return set(re.findall(r"\bARTD_[A-Z0-9_]*[A-Z0-9]\b", text))


def daemon_settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> DaemonSettings:
    """The daemon's own loader (unknown ARTD_* vars are an error there) on exactly ``env``."""
    set_only(monkeypatch, env)
    return resolve([])


def train_settings(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], argv: list[str] | None = None
) -> TrainSettings:
    set_only(monkeypatch, env)
    return parse_settings(argv or [])


def set_only(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key in list(os.environ):
        if key.upper().startswith(DAEMON_PREFIX):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def load_yaml(path: Path) -> Any:
    """PyYAML from the venv when present, else the one docker-compose (v1, Python) runs on."""
    text = path.read_text(encoding="utf-8")
    try:
        import yaml  # not a project dependency; used when a developer has it
    except ImportError:
        pass
    else:
        return yaml.safe_load(text)
    compose = Path(tool("docker-compose"))
    first_line = compose.read_bytes()[:200].split(b"\n", 1)[0].decode(errors="replace")
    if not (first_line.startswith("#!") and "python" in first_line):
        pytest.fail(
            f"no YAML parser: PyYAML is not in this venv and {compose} is not the Python "
            "docker-compose; install PyYAML to check the compose file's contents"
        )
    interpreter = shlex.split(first_line[2:])
    code = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"
    done = subprocess.run(
        [*interpreter, "-c", code], input=text, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def rendered_units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units with the venv's bin/ swapped for a tmp one with real executables."""
    folder = tmp_path_factory.mktemp("units")
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    for program in ("artd", "python"):
        script = bin_dir / program
        script.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
        script.chmod(0o755)
    for name in UNIT_FILES:
        text = (SYSTEMD / name).read_text(encoding="utf-8")
        (folder / name).write_text(text.replace(VENV_BIN, f"{bin_dir}/"), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


# --- systemd-analyze -----------------------------------------------------------------------


def test_every_command_runs_from_the_venv() -> None:
    # The stand-in substitution must cover every Exec line, or verify checks the wrong file.
    for name in UNIT_FILES:
        for key, value in unit(name).get("Service", []):
            if key.startswith("Exec"):
                assert value.lstrip("-+!@:").startswith(VENV_BIN), f"{name}: {key}={value}"


@pytest.mark.parametrize("name", [*UNIT_FILES, "artd@0.service"])
def test_systemd_analyze_verify(name: str, rendered_units: Path) -> None:
    analyze = tool("systemd-analyze")
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(rendered_units / name)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_COLORS": "0"},
    )
    # verify exits 0 on unknown keys and bad values ("..., ignoring"): read its warnings too.
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if (str(rendered_units) in line or "artd" in line)
        and not any(f"Unknown key '{key}'" in line for key in NEWER_KEYS)
    ]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr


@pytest.mark.parametrize("name", ["artd.service", "artd@0.service", "artd-train.service"])
def test_security_exposure(name: str, rendered_units: Path) -> None:
    analyze = tool("systemd-analyze")
    done = subprocess.run(
        [analyze, "security", "--offline=yes", str(rendered_units / name)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_COLORS": "0", "COLUMNS": "400"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", done.stdout)
    assert match, done.stdout + done.stderr
    score = float(match.group(1))
    print(f"{name}: exposure {score}")  # shown with -s; the report quotes these
    assert score <= MAX_EXPOSURE, done.stdout
    # The score must be earned with the GPU reachable, not by hiding it.
    devices = next(line for line in done.stdout.splitlines() if "DeviceAllow=" in line)
    for group in ("char-nvidiactl:rw", "char-nvidia-frontend:rw", "char-nvidia-uvm:rw"):
        assert group in devices, devices


@pytest.mark.parametrize("name", [*DAEMON_UNITS, "artd-train.service"])
def test_gpu_reachable_and_locked_down(name: str) -> None:
    sections = unit(name)
    assert values(sections, "Service", "PrivateDevices") in ([], ["no"])
    assert single(sections, "Service", "DevicePolicy") == "closed"
    allowed = {v.split()[0] for v in values(sections, "Service", "DeviceAllow")}
    assert {"char-nvidiactl", "char-nvidia-frontend", "char-nvidia-uvm"} <= allowed
    assert single(sections, "Service", "ProtectSystem") == "strict"
    assert single(sections, "Service", "NoNewPrivileges") == "yes"
    assert single(sections, "Service", "CapabilityBoundingSet") == ""
    assert single(sections, "Service", "User") not in ("root", "0")


def test_template_has_the_same_hardening_as_the_single_unit() -> None:
    instance_only = {"Environment", "EnvironmentFile", "Description"}
    plain, template = unit("artd.service"), unit("artd@.service")
    for section in ("Unit", "Service", "Install"):
        strip = [(k, v) for k, v in plain[section] if k not in instance_only]
        assert strip == [(k, v) for k, v in template[section] if k not in instance_only]


# --- the daemon units ----------------------------------------------------------------------


@pytest.mark.parametrize("name", DAEMON_UNITS)
def test_daemon_unit_lifecycle(name: str) -> None:
    sections = unit(name)
    assert single(sections, "Service", "Type") == "notify"
    assert seconds(single(sections, "Service", "WatchdogSec")) > 0
    assert single(sections, "Service", "ExecStartPre") == f"{VENV_BIN}artd check"
    assert single(sections, "Service", "ExecStart") == f"{VENV_BIN}artd run"
    assert single(sections, "Service", "Restart") == "on-failure"
    assert seconds(single(sections, "Service", "RestartSec")) > 0
    # The drain must finish before systemd's SIGKILL, with room for the exit itself.
    assert seconds(single(sections, "Service", "TimeoutStopSec")) >= DRAIN_DEFAULT_S + 10


@pytest.mark.parametrize("name", DAEMON_UNITS)
def test_daemon_unit_settings_are_read_by_the_daemon(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sections = unit(name)
    env = {k: v for k, v in unit_environment(sections).items() if k.startswith(DAEMON_PREFIX)}
    assert set(env) <= DAEMON_VARS, f"ignored by the daemon: {set(env) - DAEMON_VARS}"
    assert set(env) >= DEPLOY_REQUIRED_DAEMON
    assert not any(k.startswith(TRAIN_PREFIX) for k in env)
    settings = daemon_settings(monkeypatch, env)
    # One writable path, and it is the data root the spool renames within.
    assert [Path(p) for p in values(sections, "Service", "ReadWritePaths")] == [settings.root]
    assert settings.checkpoint.name == "current"
    assert settings.checkpoint.parent != settings.root
    assert f"{settings.root} " in single(sections, "Unit", "RequiresMountsFor") + " "


def test_template_instance_env(monkeypatch: pytest.MonkeyPatch) -> None:
    env = unit_environment(unit("artd@.service"))
    assert env["CUDA_VISIBLE_DEVICES"] == SPECIFIERS["i"]
    settings = daemon_settings(monkeypatch, {k: v for k, v in env.items() if "ARTD_" in k})
    assert settings.device == "cuda"
    assert settings.instance == f"testhost-gpu{SPECIFIERS['i']}"
    # Ports never collide with artd.service's default or between instances 0..9.
    assert settings.http_port == 9760
    assert settings.http_port != HTTP_PORT_DEFAULT


# --- the training units --------------------------------------------------------------------


def test_train_unit_settings_are_read_by_the_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    sections = unit("artd-train.service")
    env = {k: v for k, v in unit_environment(sections).items() if k.startswith(DAEMON_PREFIX)}
    assert set(env) <= TRAIN_VARS, f"ignored by the trainer: {set(env) - TRAIN_VARS}"
    assert set(env) >= DEPLOY_REQUIRED_TRAIN
    settings = train_settings(monkeypatch, env)
    daemon_env = unit_environment(unit("artd.service"))
    # The trainer moves the very pointer the daemon polls, inside the folder it writes runs to.
    assert settings.promote == Path(daemon_env["ARTD_CHECKPOINT"])
    assert settings.promote.parent == settings.out
    assert [Path(p) for p in values(sections, "Service", "ReadWritePaths")] == [settings.out]
    assert single(sections, "Service", "Type") == "oneshot"
    assert single(sections, "Service", "ExecStart") == f"{VENV_BIN}python -m core.train"
    assert str(EXIT_NOT_PROMOTED) in single(sections, "Service", "SuccessExitStatus").split()
    assert int(single(sections, "Service", "Nice")) > 0
    assert int(single(sections, "Service", "CPUWeight")) < 100  # the default weight


def test_train_timer() -> None:
    sections = unit("artd-train.timer")
    assert single(sections, "Timer", "Unit") == "artd-train.service"
    assert single(sections, "Timer", "Persistent") == "true"
    assert seconds(single(sections, "Timer", "RandomizedDelaySec")) > 0
    hour = int(re.search(r"(\d\d):\d\d", single(sections, "Timer", "OnCalendar")).group(1))
    assert 0 <= hour < 6, "the retrain runs at night"
    assert single(sections, "Install", "WantedBy") == "timers.target"


# --- the env file example ------------------------------------------------------------------


def env_example() -> list[tuple[str, str]]:
    """Every VAR=value line, commented out or not."""
    lines = (SYSTEMD / "artd.env.example").read_text(encoding="utf-8").splitlines()
    pairs = []
    for line in lines:
        match = re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            pairs.append((match.group(1), match.group(2)))
    return pairs


def test_env_example_names_and_values_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = env_example()
    names = {name for name, _ in pairs}
    assert {"ARTD_POLLING", "ARTD_SETTLE_SECONDS", "ARTD_LOG_JSON"} <= names
    assert names <= DAEMON_VARS | TRAIN_VARS, names - DAEMON_VARS - TRAIN_VARS
    for name, value in pairs:
        if name.startswith(TRAIN_PREFIX):
            train_settings(monkeypatch, {"ARTD_TRAIN_DATA": "/srv/train", name: value})
        else:
            daemon_settings(monkeypatch, {name: value})


# --- docker compose and the image ----------------------------------------------------------


@pytest.mark.parametrize("profile", [[], ["--profile", "train"]], ids=["default", "train"])
def test_compose_config_is_valid(profile: list[str]) -> None:
    compose_cli = tool("docker-compose")
    done = subprocess.run(
        [compose_cli, "-f", str(COMPOSE), *profile, "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def bind_mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["target"]: v for v in service["volumes"] if isinstance(v, dict)}


def test_compose_daemon_matches_the_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = compose["services"]["daemon"]
    env = {k: str(v) for k, v in daemon["environment"].items()}
    artd_env = {k: v for k, v in env.items() if k.startswith(DAEMON_PREFIX)}
    assert set(artd_env) <= DAEMON_VARS, set(artd_env) - DAEMON_VARS
    assert set(artd_env) >= DEPLOY_REQUIRED_DAEMON
    settings = daemon_settings(monkeypatch, artd_env)

    mounts = bind_mounts(daemon)
    root = mounts[str(settings.root)]
    assert root["type"] == "bind" and not root.get("read_only", False)
    # Nothing mounted inside the root: the spool's renames must stay on one filesystem.
    inside = [t for t in mounts if PurePosixPath(t).is_relative_to(settings.root)]
    assert inside == [root["target"]], inside
    checkpoints = mounts[str(settings.checkpoint.parent)]
    assert checkpoints["read_only"] is True

    # The healthcheck asks the daemon's own endpoint on the port it listens on.
    test = daemon["healthcheck"]["test"]
    url = urlsplit(re.search(r"https?://[^'\" ]+", " ".join(test)).group(0))
    assert url.path == "/healthz"
    assert url.port == settings.http_port == HTTP_PORT_DEFAULT
    assert url.hostname in ("127.0.0.1", "localhost")
    assert any(str(p).endswith(f":{settings.http_port}") for p in daemon["ports"])

    assert seconds(daemon["stop_grace_period"]) >= DRAIN_DEFAULT_S + 10
    assert daemon.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert daemon["restart"] in ("always", "unless-stopped", "on-failure")
    gpus = daemon["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in gpus)


def test_compose_train_matches_the_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    train = compose["services"]["train"]
    daemon_env = compose["services"]["daemon"]["environment"]
    assert train["profiles"] == ["train"]
    assert train["entrypoint"] == ["python", "-m", "core.train"]
    assert not [k for k in train.get("environment", {}) if k.startswith(DAEMON_PREFIX)]
    settings = train_settings(monkeypatch, {}, [str(a) for a in train["command"]])
    assert settings.promote == Path(daemon_env["ARTD_CHECKPOINT"])
    assert settings.promote.parent == settings.out
    mounts = bind_mounts(train)
    assert not mounts[str(settings.out)].get("read_only", False)
    assert mounts[str(settings.data)]["read_only"] is True
    assert compose["services"]["daemon"]["image"] == train["image"]


@pytest.mark.parametrize("service", ["daemon", "train"])
def test_compose_services_are_locked_down(compose: dict[str, Any], service: str) -> None:
    spec = compose["services"][service]
    assert spec["read_only"] is True
    assert spec["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in spec["security_opt"]
    assert not str(spec["user"]).startswith(("0:", "root")) and str(spec["user"]) != "0"
    assert any(str(t).startswith("/tmp") for t in spec["tmpfs"])


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def test_image_pins_users_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    instructions = dockerfile_instructions()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    pins = {
        dep.partition("==")[0].strip(): "==" + dep.partition("==")[2].strip()
        for dep in pyproject["project"]["dependencies"]
        if "==" in dep
    }
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    for name in ("torch", "torchvision"):
        assert f"{name}{pins[name]}" in runs.split(), f"{name} must be pinned as in pyproject"

    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert next(rest for word, rest in instructions if word == "FROM").endswith("AS build")

    env_words = shlex.split(" ".join(rest for word, rest in instructions if word == "ENV"))
    env = dict(w.split("=", 1) for w in env_words)
    artd_env = {k: v for k, v in env.items() if k.startswith(DAEMON_PREFIX)}
    assert set(artd_env) <= DAEMON_VARS
    assert set(artd_env) >= DEPLOY_REQUIRED_DAEMON
    daemon_settings(monkeypatch, artd_env)


def test_build_context_holds_what_the_image_copies() -> None:
    ignore = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore, ".dockerignore lists what goes in, after excluding everything"
    for word, rest in dockerfile_instructions():
        if word == "COPY" and "--from" not in rest:
            for source in rest.split()[:-1]:
                assert source in allowed, f"COPY {source} is excluded by .dockerignore"
                assert (REPO / source).exists(), source


# --- the operator's guide ------------------------------------------------------------------


def test_guide_names_only_real_settings_and_metrics() -> None:
    guide = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    names = artd_names(guide)
    assert names <= DAEMON_VARS | TRAIN_VARS, names - DAEMON_VARS - TRAIN_VARS

    exposition = _metric_names()
    mentioned = set(re.findall(r"\bartd_[a-z_]+[a-z]\b", guide))
    assert mentioned, "the guide lists the metrics"
    assert mentioned <= exposition, mentioned - exposition


def _metric_names() -> set[str]:
    """Every sample name the daemon can expose (labelled series primed so they appear)."""
    from prometheus_client import generate_latest

    metrics = Metrics()
    metrics.quarantined.labels(reason="x").inc()
    metrics.queue_depth.labels(stage="x").set(0)
    metrics.reloads.labels(result="ok").inc()
    metrics.model_info.info({"version": "x"})
    text = generate_latest(metrics.registry).decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names
