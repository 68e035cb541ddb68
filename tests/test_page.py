"""The page's JSON API and its parts on a real daemon, real folders and real photos:
status, recent results with before/after thumbnails, the quarantine with its reasons, retry
(with the token, refused without), the settings' start-time refusals, and the requeue,
index and thumbnail modules on real files."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path

import pytest
from daemon_harness import Daemon, outputs, quarantined, wait_for
from page_client import TOKEN, api, drop_photo, fetch, photo, post_retry
from PIL import Image
from pydantic import ValidationError

from core.reasons import DESCRIPTIONS, Reason
from daemon.settings import DaemonSettings
from daemon.web.index import FolderIndex, per_minute
from daemon.web.requeue import Requeue, RequeueError
from daemon.web.thumbs import Thumbnails

pytestmark = pytest.mark.usefixtures("one_thread")


# --- settings ---------------------------------------------------------------------------


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> DaemonSettings:
    for key in list(os.environ):
        if key.startswith("ARTD_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(f"ARTD_{key.upper()}", value)
    return DaemonSettings()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "artd.example.org", "::"])
def test_a_public_bind_without_a_token_is_refused(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(monkeypatch, http_host=host)
    text = str(caught.value)
    assert "http_host (ARTD_HTTP_HOST)" in text and "ARTD_PAGE_TOKEN" in text


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_needs_no_token(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    s = settings(monkeypatch, http_host=host)
    assert s.retry_token() is None  # read-only by default


def test_the_token_is_a_secret_and_may_come_from_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = settings(monkeypatch, http_host="0.0.0.0", page_token=TOKEN)
    assert TOKEN not in repr(s) and TOKEN not in str(s.model_dump())
    assert s.retry_token() == TOKEN
    with pytest.raises(ValidationError, match="at least 16"):
        settings(monkeypatch, page_token="short")
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    s = settings(monkeypatch, http_host="0.0.0.0", page_token_file=str(secret))
    assert s.retry_token() == TOKEN
    missing = settings(monkeypatch, page_token_file=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="page_token_file"):
        missing.retry_token()


def test_a_daemon_refuses_to_start_on_a_public_bind_without_a_token(
    pixel_checkpoint: Path, tmp_path: Path
) -> None:
    daemon = Daemon(tmp_path / "root", pixel_checkpoint, http_host="0.0.0.0")
    daemon.start(wait=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(60) != 0
    assert "http_host (ARTD_HTTP_HOST)" in daemon.log


# --- the API on a real daemon -----------------------------------------------------------


def write_quarantined(root: Path, name: str, reason: Reason, **counts: int) -> None:
    """A real photo in the quarantine with its sidecar, as the spool writes them."""
    folder = root / "quarantine"
    folder.mkdir(parents=True, exist_ok=True)
    photo("rocket").save(folder / name, "JPEG")
    sidecar = {
        "reason": str(reason),
        "message": "the process died 3 times while this file was alone in the model",
        "time": "2026-01-01T00:00:00+00:00",
        "details": {},
        "instance": "earlier",
        "claim": "00000000000000000001-deadbeef",
        "original_path": name,
        "size": 1,
        "sha256": "",
        "attempts": 4,
        **counts,
    }
    (folder / f"{name}.error.json").write_text(json.dumps(sidecar))


def test_status_recent_quarantine_and_retry(pixel_checkpoint: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_quarantined(root, "crashy.jpg", Reason.CRASHED_REPEATEDLY, interrupted=3, solo_crashes=3)
    with Daemon(root, pixel_checkpoint, page_token=TOKEN) as daemon:
        port = daemon.port
        drop_photo(root / "inbox", "astronaut")
        drop_photo(root / "inbox", "coffee")
        (root / "inbox" / "notes.jpg").write_bytes(b"a shopping list, not a photo")
        wait_for(lambda: len(outputs(root)) == 2 and len(quarantined(root)) == 2, 60, "files")

        status = api(port, "/api/status")
        assert status["retry_enabled"] is True
        assert status["health"]["status"] == "ok"
        assert status["models"] and status["models"][0]["version"]
        assert status["models"][0]["precision"] and status["reload"]["last"] == "none yet"
        assert len(status["throughput"]["per_minute"]) == 60
        wait_for(lambda: api(port, "/api/status")["throughput"]["last_hour"] == 2, 10, "throughput")

        recent = api(port, "/api/recent?size=1")
        assert recent["total"] == 2 and len(recent["items"]) == 1
        older = api(port, "/api/recent?size=1&page=1")["items"][0]
        newest = recent["items"][0]
        assert {newest["input"], older["input"]} == {"astronaut.jpg", "coffee.jpg"}
        for item in (newest, older):
            assert item["meta"]["model"] == status["models"][0]["version"]
            assert item["meta"]["settings"]["size"] == 64
            for side in ("before", "after"):
                code, data = fetch(port, item[side])
                assert code == 200
                with Image.open(io.BytesIO(data)) as thumb:
                    assert thumb.format == "JPEG" and max(thumb.size) <= 192
            code, data = fetch(port, item["url"])
            assert code == 200 and data == (root / "outbox" / item["output"]).read_bytes()
        # Thumbnails are made once: the cache folder holds one file per image.
        assert len(list((root / ".artd/page/thumbs").iterdir())) == 4

        held = {i["file"]: i for i in api(port, "/api/quarantine")["items"]}
        assert held["notes.jpg"]["reason"] == "not_an_image"
        assert held["notes.jpg"]["description"] == DESCRIPTIONS[Reason.NOT_AN_IMAGE]
        assert held["crashy.jpg"]["solo_crashes"] == 3

        # Refused without the token, with a wrong one, and cross-site with the right one.
        assert post_retry(port, "crashy.jpg", None)[0] == 403
        assert post_retry(port, "crashy.jpg", "x" * 30)[0] == 403
        cross = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
        assert post_retry(port, "crashy.jpg", TOKEN, cross)[0] == 403
        assert (root / "quarantine" / "crashy.jpg").exists()

        code, answer = post_retry(port, "crashy.jpg", TOKEN)
        assert code == 200, answer
        assert answer["inbox"] == "crashy.jpg"
        assert answer["crash_counts_reset"] == {"interrupted": 3, "solo_crashes": 3}
        assert not (root / "quarantine" / "crashy.jpg.error.json").exists()
        # Claimed afresh (counts at 0): it is processed, not quarantined again.
        wait_for(lambda: "crashy.jpg.png" in outputs(root), 60, "the retried file's output")
        assert post_retry(port, "crashy.jpg", TOKEN)[0] == 404  # gone from the quarantine
        wait_for(lambda: api(port, "/api/quarantine")["total"] == 1, 10, "quarantine list")


def test_read_only_without_a_token(pixel_checkpoint: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_quarantined(root, "held.jpg", Reason.MODEL_FAILED)
    with Daemon(root, pixel_checkpoint) as daemon:
        assert api(daemon.port, "/api/status")["retry_enabled"] is False
        code, answer = post_retry(daemon.port, "held.jpg", TOKEN)
        assert code == 403 and "retry is off" in answer["error"]
        assert (root / "quarantine" / "held.jpg").exists()
        # Existing endpoints keep answering as before.
        assert daemon.health()[0] == 200 and "artd_up 1.0" in daemon.metrics()


# --- retry on real folders ----------------------------------------------------------------


def spool_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for folder in ("inbox", "quarantine", ".artd"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    return root


def test_two_racing_retries_move_the_file_once(tmp_path: Path) -> None:
    root = spool_root(tmp_path)
    write_quarantined(root, "race.jpg", Reason.MODEL_FAILED)
    requeues = [Requeue(root), Requeue(root)]
    results: list[object] = []
    barrier = threading.Barrier(2)

    def go(requeue: Requeue) -> None:
        barrier.wait()
        try:
            results.append(requeue.requeue("race.jpg"))
        except RequeueError as exc:
            results.append(exc.status)

    threads = [threading.Thread(target=go, args=(r,)) for r in requeues]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(str, results))[0] in ("404", "409")
    assert sum(not isinstance(r, int) for r in results) == 1
    assert sorted(p.name for p in (root / "inbox").iterdir()) == ["race.jpg"]
    assert not list((root / "quarantine").iterdir())
    assert not list((root / ".artd/page/retry").iterdir())


def test_a_name_taken_in_the_inbox_gets_a_counter(tmp_path: Path) -> None:
    root = spool_root(tmp_path)
    write_quarantined(root, "taken.jpg", Reason.TRUNCATED)
    (root / "inbox" / "taken.jpg").write_bytes(b"a newer drop")
    done = Requeue(root).requeue("taken.jpg")
    assert done.inbox_rel == "taken (2).jpg"
    assert (root / "inbox" / "taken.jpg").read_bytes() == b"a newer drop"


def test_a_retried_file_takes_its_job_sidecar_unless_that_was_the_problem(
    tmp_path: Path,
) -> None:
    root = spool_root(tmp_path)
    write_quarantined(root, "crashed.jpg", Reason.MODEL_FAILED)
    (root / "quarantine" / "crashed.jpg.artd.json").write_text('{"strength": 0.3}')
    write_quarantined(root, "badjob.jpg", Reason.INVALID_SIDECAR)
    (root / "quarantine" / "badjob.jpg.artd.json").write_text('{"strength": "lots"}')
    (root / "inbox" / "crashed.jpg").write_bytes(b"a newer drop")
    assert Requeue(root).requeue("crashed.jpg").inbox_rel == "crashed (2).jpg"
    assert Requeue(root).requeue("badjob.jpg").inbox_rel == "badjob.jpg"
    inbox = sorted(p.name for p in (root / "inbox").iterdir())
    assert inbox == ["badjob.jpg", "crashed (2).jpg", "crashed (2).jpg.artd.json", "crashed.jpg"]
    assert (root / "inbox" / "crashed (2).jpg.artd.json").read_text() == '{"strength": 0.3}'
    # The invalid sidecar stays in the quarantine for its owner to fix.
    assert sorted(p.name for p in (root / "quarantine").iterdir()) == ["badjob.jpg.artd.json"]


def test_a_record_write_killed_before_its_rename_leaves_no_litter(tmp_path: Path) -> None:
    root = spool_root(tmp_path)
    requeue = Requeue(root)
    stale = requeue.records / ".00000000000000000005-cafecafe.json.1234.tmp"
    stale.write_bytes(b'{"id": ')
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fresh = requeue.records / ".00000000000000000006-cafecafe.json.1234.tmp"
    fresh.write_bytes(b'{"id": ')
    requeue.recover()
    assert [p.name for p in requeue.records.iterdir()] == [fresh.name]  # a live write is left


def test_a_retry_killed_midway_is_finished_by_the_next_start(tmp_path: Path) -> None:
    root = spool_root(tmp_path)
    write_quarantined(root, "halfway.jpg", Reason.MODEL_FAILED)
    requeue = Requeue(root)
    # Steps 1 and 2 done (record written, file renamed aside), then a kill.
    record = {"id": "00000000000000000002-cafecafe", "quarantine_rel": "halfway.jpg"}
    record["claim"] = "00000000000000000001-deadbeef"
    (requeue.records / f"{record['id']}.json").write_text(json.dumps(record))
    (root / "quarantine/halfway.jpg").rename(root / f"quarantine/.artd-retry-{record['id']}")
    # And one whose record was written but whose rename never happened.
    write_quarantined(root, "untouched.jpg", Reason.MODEL_FAILED)
    other = dict(record, id="00000000000000000003-cafecafe", quarantine_rel="untouched.jpg")
    (requeue.records / f"{other['id']}.json").write_text(json.dumps(other))
    # And one in progress right now (another daemon's): left alone.
    write_quarantined(root, "live.jpg", Reason.MODEL_FAILED)
    live = dict(record, id="00000000000000000004-cafecafe", quarantine_rel="live.jpg")
    live["time"] = time.time()
    (requeue.records / f"{live['id']}.json").write_text(json.dumps(live))
    (root / "quarantine/live.jpg").rename(root / f"quarantine/.artd-retry-{live['id']}")
    Requeue(root).recover()  # records without a time are from long ago: finished now
    assert [p.name for p in requeue.records.iterdir()] == [f"{live['id']}.json"]
    (requeue.records / f"{live['id']}.json").unlink()
    (root / f"quarantine/.artd-retry-{live['id']}").rename(root / "quarantine/live.jpg")
    (root / "quarantine/live.jpg").unlink()
    (root / "quarantine/live.jpg.error.json").unlink()
    assert sorted(p.name for p in (root / "inbox").iterdir()) == ["halfway.jpg"]
    assert sorted(p.name for p in (root / "quarantine").iterdir()) == [
        "untouched.jpg",
        "untouched.jpg.error.json",
    ]
    assert not list(requeue.records.iterdir())


@pytest.mark.parametrize("name", ["../inbox/x.jpg", "/etc/passwd", "a/../../b", "x.error.json"])
def test_retry_refuses_paths_that_are_not_quarantined_files(tmp_path: Path, name: str) -> None:
    root = spool_root(tmp_path)
    with pytest.raises(RequeueError) as caught:
        Requeue(root).requeue(name)
    assert caught.value.status == 400


def test_a_symlink_in_the_quarantine_is_not_retried(tmp_path: Path) -> None:
    root = spool_root(tmp_path)
    (tmp_path / "outside.jpg").write_bytes(b"outside")
    (root / "quarantine" / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    with pytest.raises(RequeueError) as caught:
        Requeue(root).requeue("link.jpg")
    assert caught.value.status == 409
    assert not list((root / "inbox").iterdir())


# --- the index and the thumbnail cache ----------------------------------------------------


def test_the_index_reads_only_changed_folders(tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    (folder / "sub").mkdir(parents=True)
    now = time.time()
    for i in range(2000):
        path = folder / ("sub" if i % 2 else "") / f"f{i:05d}.jpg.png"
        path.write_bytes(b"x")
        os.utime(path, (now - i, now - i))
    (folder / ".tmp.png.artd-tmp-x").write_bytes(b"x")
    index = FolderIndex(folder, keep=lambda n: n.endswith(".png"), min_interval_s=0)
    entries = index.entries()
    assert len(entries) == 2000 and entries[0].rel == "f00000.jpg.png"
    assert entries[1].rel == "sub/f00001.jpg.png"
    assert len(index.since(now - 9.5)) == 10
    start = time.perf_counter()
    for _ in range(50):
        index.refresh(force=True)
    assert time.perf_counter() - start < 2.0  # nothing changed: a stat per folder, no listing
    (folder / "sub" / "new.jpg.png").write_bytes(b"y")
    index.refresh(force=True)
    assert index.entries()[0].rel == "sub/new.jpg.png"
    assert sum(per_minute(index.entries(), time.time())) == 2001


def test_thumbnails_come_from_the_decoder_and_the_cache_stays_bounded(tmp_path: Path) -> None:
    cache = tmp_path / ".artd" / "page" / "thumbs"
    thumbs = Thumbnails(cache, size=64, max_bytes=20_000, max_pixels=10**8, background=(0,) * 3)
    try:
        for i, name in enumerate(["astronaut", "coffee", "chelsea", "rocket"] * 3):
            source = tmp_path / f"{i}-{name}.jpg"
            photo(name).save(source, "JPEG")
            fd = os.open(source, os.O_RDONLY)
            try:
                info = os.fstat(fd)
                data = thumbs.get(Thumbnails.key("archive", source.name, info, 64), fd)
            finally:
                os.close(fd)
            assert data is not None and data.startswith(b"\xff\xd8")
            total = sum(p.stat().st_size for p in cache.iterdir())
            assert total <= 20_000
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(b"\xff\xd8\xff not really")
        fd = os.open(bad, os.O_RDONLY)
        try:
            info = os.fstat(fd)
            assert thumbs.get(Thumbnails.key("archive", "bad.jpg", info, 64), fd) is None
        finally:
            os.close(fd)
    finally:
        thumbs.close()
