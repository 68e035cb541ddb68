"""The daemon end to end: a real subprocess on real folders."""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, seeded_model, textured_image, write_images
from daemon_harness import Daemon, files_under, outputs, quarantined, settled_count, wait_for
from PIL import Image
from test_oneshot import artd
from test_sampling_commands import pixels, sampler_of, save_denoise_checkpoint

from core.checkpoint import CheckpointMeta, promote, save_checkpoint
from core.outputs.encoding import read_metadata


def jpeg_bytes(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    import io

    buffer = io.BytesIO()
    textured_image(*size, seed=seed).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def input_hash_of(output: Path) -> str:
    with Image.open(output) as image:
        return image.text["artd:input_sha256"]


def assert_exactly_once(root: Path, names: list[str]) -> None:
    """Every input has exactly one output or quarantine entry and nothing is left over."""
    done = outputs(root)
    held = quarantined(root)
    expected = sorted(name + ".png" for name in names)
    assert sorted(done + [q + ".png" for q in held]) == expected
    assert not [p for p in files_under(root / "inbox")], "inputs left in the inbox"
    assert not [p for p in files_under(root / ".artd" / "work")], "claims left over"
    assert not [p for p in files_under(root / "outbox") if p.name.startswith(".")], "temp files"


def test_every_way_of_dropping_files(pixel_checkpoint: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    source = tmp_path / "src"
    copies = write_images(source, 30)
    with Daemon(root, pixel_checkpoint) as daemon:
        inbox = root / "inbox"
        for path in copies:  # cp
            shutil.copy(path, inbox / path.name)
        (inbox / "rsync").mkdir()
        for i in range(15):  # rsync: a hidden temp name, then a rename
            temp = inbox / "rsync" / f".r{i}.jpg.Xa81Qz"
            temp.write_bytes(jpeg_bytes(100 + i))
            temp.rename(inbox / "rsync" / f"r{i}.jpg")
        slow_hashes = {}

        def slow_writer(i: int) -> None:  # one open file, written over 3 seconds
            data = jpeg_bytes(200 + i, (320, 240))
            slow_hashes[f"slow{i}.jpg"] = hashlib.sha256(data).hexdigest()
            chunk = len(data) // 10 + 1
            with open(inbox / f"slow{i}.jpg", "wb") as handle:
                for start in range(0, len(data), chunk):
                    handle.write(data[start : start + chunk])
                    handle.flush()
                    time.sleep(0.3)

        writers = [threading.Thread(target=slow_writer, args=(i,)) for i in range(5)]
        for writer in writers:
            writer.start()
        (inbox / "empty.jpg").write_bytes(b"")
        (inbox / "letter.jpg").write_text("Dear artd, this is not a picture.")
        (inbox / "cut.jpg").write_bytes(jpeg_bytes(7)[:1500])
        (inbox / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
        (inbox / "noise.webp").write_bytes(os.urandom(3000))
        for writer in writers:
            writer.join()
        wait_for(lambda: settled_count(root) >= 55, 120, f"55 settled files\n{daemon.log}")
        time.sleep(1.5)  # nothing more may appear
        names = (
            [p.name for p in copies]
            + [f"rsync/r{i}.jpg" for i in range(15)]
            + [f"slow{i}.jpg" for i in range(5)]
            + ["empty.jpg", "letter.jpg", "cut.jpg", "fake.png", "noise.webp"]
        )
        assert_exactly_once(root, names)
        assert quarantined(root) == ["cut.jpg", "empty.jpg", "fake.png", "letter.jpg", "noise.webp"]
        for name, digest in slow_hashes.items():  # taken only once complete
            assert input_hash_of(root / "outbox" / f"{name}.png") == digest
        reasons = {
            p.name: __import__("json").loads(p.read_text())["reason"]
            for p in (root / "quarantine").glob("*.error.json")
        }
        assert reasons["empty.jpg.error.json"] == "empty_file"
        assert reasons["letter.jpg.error.json"] == "not_an_image"
        assert reasons["cut.jpg.error.json"] == "truncated"
        assert len(files_under(root / "archive")) == 50
        wait_for(lambda: not (root / "inbox" / "rsync").exists(), 20, "empty sub-folder removed")
        metrics = daemon.metrics()
        assert "artd_files_processed_total 50.0" in metrics
        assert 'artd_files_quarantined_total{reason="empty_file"} 1.0' in metrics
        # The per-stage profile: every committed file encoded and committed once, every
        # claimed file (the quarantined ones too) claimed and decoded.
        counts = dict(
            re.findall(r'^artd_stage_seconds_count\{stage="(\w+)"\} (\S+)$', metrics, re.M)
        )
        assert float(counts["encode"]) == float(counts["commit"]) == 50, counts
        assert float(counts["claim"]) >= 55 and float(counts["decode"]) >= 55, counts
        assert daemon.stop() == 0


def test_kill_dash_nine_loses_and_duplicates_nothing(
    pixel_checkpoint: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    # Enough files that the kills land mid-work however fast the model runs.
    count = 400
    names = [p.name for p in write_images(root / "inbox", count)]
    rng = random.Random(4)
    daemon = Daemon(root, pixel_checkpoint, max_in_flight=16, settle_seconds=0.2)
    kills = 0
    for _ in range(6):
        daemon.start()
        time.sleep(rng.uniform(0.2, 1.2))
        daemon.kill()  # always: a second start() beside a live daemon would test nothing
        kills += 1
        if settled_count(root) >= count:
            break
    assert 0 < settled_count(root) < count, "the kills did not land mid-work"
    daemon.start()
    wait_for(lambda: settled_count(root) >= count, 120, f"{count} settled\n{daemon.log}")
    time.sleep(1)
    assert daemon.stop() == 0
    assert kills == 6
    assert_exactly_once(root, names)
    assert quarantined(root) == []


def test_three_instances_share_one_root(pixel_checkpoint: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    daemons = [Daemon(root, pixel_checkpoint, instance=f"gpu{i}") for i in range(3)]
    for daemon in daemons:
        daemon.start()
    try:
        names = [p.name for p in write_images(root / "inbox", 300, size=(48, 40))]
        wait_for(lambda: settled_count(root) >= 300, 180, "300 settled")
        time.sleep(1)
        processed = []
        for daemon in daemons:
            match = re.search(r"^artd_files_processed_total (\S+)", daemon.metrics(), re.M)
            processed.append(float(match.group(1)))
        assert sum(processed) == 300, processed
        assert_exactly_once(root, names)
        assert len(files_under(root / "archive")) == 300
    finally:
        for daemon in daemons:
            daemon.stop()


def test_same_instance_name_is_refused_while_alive(pixel_checkpoint: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    with Daemon(root, pixel_checkpoint, instance="one"):
        second = Daemon(root, pixel_checkpoint, instance="one").start(wait=False)
        assert second.proc is not None
        assert second.proc.wait(60) == 1
        assert "in use" in second.log


def test_symlinks_are_never_read(pixel_checkpoint: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(jpeg_bytes(999))
    secret_hash = hashlib.sha256(secret.read_bytes()).hexdigest()
    with Daemon(root, pixel_checkpoint) as daemon:
        inbox = root / "inbox"
        (inbox / "link.jpg").symlink_to(secret)
        (inbox / "dirlink").symlink_to(tmp_path, target_is_directory=True)
        # A name that flips between a real file and a symlink while the daemon works.
        stop = threading.Event()

        def swapper() -> None:
            n = 0
            while not stop.is_set():
                target = inbox / f"swap{n}.jpg"
                target.write_bytes(jpeg_bytes(n))
                time.sleep(0.45)
                try:
                    tmp_link = inbox / f".swap{n}.tmp"
                    tmp_link.symlink_to(secret)
                    os.replace(tmp_link, target)  # swapped in at about the settle time
                except OSError:
                    pass
                n += 1

        thread = threading.Thread(target=swapper)
        thread.start()
        time.sleep(6)
        stop.set()
        thread.join()
        time.sleep(2)
        for output in files_under(root / "outbox"):
            assert input_hash_of(output) != secret_hash
        for path in files_under(root):
            if not path.is_symlink():
                assert path.read_bytes() != secret.read_bytes(), path
        assert secret.read_bytes() and secret.exists()
        assert daemon.stop() == 0


def test_hot_reload_switches_to_good_and_refuses_corrupt(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    first, second = models / "a.safetensors", models / "b.safetensors"
    save_checkpoint(first, seeded_model(0).state_dict(), CheckpointMeta(epoch=1))
    save_checkpoint(second, seeded_model(5).state_dict(), CheckpointMeta(epoch=2))
    current = models / "current"
    promote(current, first)
    root = tmp_path / "root"
    with Daemon(root, current) as daemon:
        assert "a.safetensors" in daemon.health()[1]["model"]
        promote(current, second)
        wait_for(lambda: "b.safetensors" in daemon.health()[1]["model"], 30, "switch to b")
        broken = models / "broken.safetensors"
        broken.write_bytes(second.read_bytes()[:-1000])  # a half-copied file
        # As an operator would with `ln -sfn`: promote() itself refuses broken targets.
        (models / "tmp-link").symlink_to("broken.safetensors")
        os.replace(models / "tmp-link", current)
        wait_for(lambda: daemon.health()[1]["model_reload_error"], 30, "reload error")
        status, report = daemon.health()
        assert status == 200  # still serving the good model: degraded, not down
        assert "b.safetensors" in report["model"]
        assert "broken.safetensors" in report["model_reload_error"]
        (root / "inbox" / "x.jpg").write_bytes(jpeg_bytes(3))
        wait_for(lambda: outputs(root) == ["x.jpg.png"], 30, "still serving")
        assert 'result="failed"' in daemon.metrics()
        assert daemon.stop() == 0


def test_sampler_settings_reach_a_hot_reloaded_denoise_model(tmp_path: Path) -> None:
    """ARTD_STRENGTH/ARTD_STEPS: ignored, with one log line, by a reconstruct model; served
    by the denoise model promoted next; the same bytes dropped twice give the same pixels."""
    models = tmp_path / "models"
    models.mkdir()
    plain = models / "plain.safetensors"
    save_checkpoint(plain, seeded_model(0).state_dict(), CheckpointMeta(epoch=1))
    denoise = save_denoise_checkpoint(models / "denoise.safetensors")
    current = models / "current"
    promote(current, plain)
    root = tmp_path / "root"
    with Daemon(root, current, strength=0.3, steps=4) as daemon:
        inbox = root / "inbox"
        (inbox / "x.jpg").write_bytes(jpeg_bytes(1))
        wait_for(lambda: outputs(root) == ["x.jpg.png"], 30, "the reconstruct output")
        first = read_metadata((root / "outbox" / "x.jpg.png").read_bytes())
        assert first["artd:objective"] == "reconstruct" and "artd:sampler" not in first
        assert "ignoring the sampler settings" in daemon.log
        promote(current, denoise)
        wait_for(lambda: "denoise.safetensors" in daemon.health()[1]["model"], 30, "switch")
        same = jpeg_bytes(2)
        (inbox / "y.jpg").write_bytes(same)
        (inbox / "z.jpg").write_bytes(same)
        (inbox / "w.jpg").write_bytes(jpeg_bytes(3))
        names = ["w.jpg.png", "x.jpg.png", "y.jpg.png", "z.jpg.png"]
        wait_for(lambda: outputs(root) == names, 60, "the denoise outputs")
        assert not quarantined(root)
        assert daemon.stop() == 0
    outbox = root / "outbox"
    for name in names[:1] + names[2:]:
        meta = read_metadata((outbox / name).read_bytes())
        assert meta["artd:objective"] == "denoise", name
        assert sampler_of(outbox / name) == {"strength": 0.3, "steps": 4, "eta": 1.0, "seed": None}
    assert np.array_equal(pixels(outbox / "y.jpg.png"), pixels(outbox / "z.jpg.png"))
    assert pixels(outbox / "y.jpg.png").shape == (40, 64, 3)


def test_sigterm_under_load_exits_quickly_and_restart_finishes(
    pixel_checkpoint: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    names = [p.name for p in write_images(root / "inbox", 150, size=(256, 192))]
    daemon = Daemon(root, pixel_checkpoint, size=256).start()
    wait_for(lambda: len(outputs(root)) >= 5, 60, "first outputs")
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 10
    assert settled_count(root) < 150, "drained everything instead of stopping"
    daemon.start()
    wait_for(lambda: settled_count(root) >= 150, 180, "the rest")
    time.sleep(1)
    assert daemon.stop() == 0
    assert_exactly_once(root, names)


def test_check_prints_config_and_bad_settings_name_the_setting(
    pixel_checkpoint: Path, tmp_path: Path
) -> None:
    env = {"ARTD_ROOT": str(tmp_path / "root"), "ARTD_CHECKPOINT": str(pixel_checkpoint)}
    ok = artd("check", env=env)
    assert ok.returncode == 0, ok.stderr
    assert '"http_port": 9750' in ok.stdout
    assert (tmp_path / "root" / "inbox").is_dir()
    bad_port = artd("check", env=env | {"ARTD_HTTP_PORT": "lots"})
    assert bad_port.returncode == 1
    assert "ARTD_HTTP_PORT" in bad_port.stderr
    typo = artd("run", env=env | {"ARTD_SETLE_SECONDS": "3"})
    assert typo.returncode == 1
    assert "ARTD_SETLE_SECONDS" in typo.stderr
    config = tmp_path / "artd.toml"
    config.write_text('size = 100\nroot = "/somewhere"\n')
    bad_toml = artd("check", "--config", str(config), env=env)
    assert bad_toml.returncode == 1
    assert "size" in bad_toml.stderr and "multiple of 8" in bad_toml.stderr
    missing_model = artd("check", env=env | {"ARTD_CHECKPOINT": str(tmp_path / "no.pt")})
    assert missing_model.returncode == 1
    assert "no.pt" in missing_model.stdout


@pytest.mark.parametrize("flag", ["--http-port=0", "--keep-originals"])
def test_cli_flags_are_accepted(flag: str, pixel_checkpoint: Path, tmp_path: Path) -> None:
    env = {"ARTD_ROOT": str(tmp_path / "r"), "ARTD_CHECKPOINT": str(pixel_checkpoint)}
    assert artd("check", flag, env=env).returncode == 0


def test_artd_help_and_version_do_not_load_torch() -> None:
    # Each command's settings are imported once it is chosen: the top level stays instant.
    code = (
        "import contextlib, sys\n"
        "from daemon.cli import main\n"
        "for argv in (['--help'], ['--version']):\n"
        "    with contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
    assert "process" in done.stdout and "check" in done.stdout
    assert "generate" in done.stdout


def test_a_start_that_fails_stops_every_part_started_before_it(
    pixel_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HTTP port is taken (by a real socket held here): the start fails at the server's
    bind, after the spool's lock, the decoder processes, the pipeline and the page's
    thumbnail decoder were started in this very process. Every one of them is stopped."""
    import errno
    import multiprocessing
    import signal
    import socket

    from loguru import logger

    from daemon.service import Service
    from daemon.settings import DaemonSettings
    from daemon.spool import Spool

    root = tmp_path / "root"
    for key in list(os.environ):
        if key.startswith("ARTD_") or key == "NOTIFY_SOCKET":
            monkeypatch.delenv(key)
    env = {"ROOT": str(root), "CHECKPOINT": str(pixel_checkpoint), "INSTANCE": "taken"}
    env |= {"HTTP_HOST": "127.0.0.1", "SIZE": "64", "DEVICE": "cpu", "SETTLE_SECONDS": "0.5"}
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    threads_before = set(threading.enumerate())
    children_before = set(multiprocessing.active_children())
    logged: list[str] = []
    sink = logger.add(lambda message: logged.append(str(message)), level="INFO")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env["HTTP_PORT"] = str(taken.getsockname()[1])
        for key, value in env.items():
            monkeypatch.setenv(f"ARTD_{key}", value)
        service = Service(DaemonSettings())
        try:
            with pytest.raises(OSError) as caught:
                service.run()
        finally:
            signal.signal(signal.SIGTERM, handlers[0])
            signal.signal(signal.SIGINT, handlers[1])
            logger.remove(sink)
    assert caught.value.errno == errno.EADDRINUSE
    # The parts before the server did start: the page was built, the pipeline ran.
    assert service.page is not None and service.server is None
    assert any("stopped; unfinished files stay claimed" in line for line in logged), logged
    # And they are stopped: no decoder process, no thread of the daemon's, the lock free.
    wait_for(
        lambda: set(multiprocessing.active_children()) <= children_before,
        30,
        "the decoder processes (the pipeline's and the page's) to exit",
    )
    wait_for(
        lambda: not {t for t in threading.enumerate() if t.is_alive()} - threads_before,
        30,
        "the daemon's threads to end",
    )
    assert service.metrics.registry.get_sample_value("artd_up") == 0
    with Spool(root, "taken") as again:  # a second daemon takes the instance lock at once
        assert again.work_dir.is_dir()
