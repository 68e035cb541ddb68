"""Hostile inputs: a generated corpus of broken and odd files, a seeded fuzzer, and decoders
that segfault. Each file ends as a correct output or in quarantine with a reason; the daemon
never dies, never stalls, and its memory stays bounded.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import struct
import time
import zipfile
from pathlib import Path

import imaging_samples as samples
import numpy as np
import pytest
from conftest import textured_image
from daemon_harness import Daemon, files_under
from PIL import Image
from reliability_kit import (
    FULL,
    Ledger,
    assert_each_exactly_once,
    children_of,
    ledger_fixture,  # noqa: F401  (the ledger fixture)
    metric,
    output_rel,
    proc_status,
    quarantine_rel,
    sha,
    sidecar_reason,
    wait_until,
)

from core.reasons import DECODE_REASONS, Reason
from daemon.decoders import SEGFAULT_MARKER, DecoderPool, DecodeSettings

FUZZ_SECONDS = 240.0 if FULL else 30.0
RSS_GROWTH_LIMIT_KB = 300_000  # the daemon's own process, over the whole run


# --- the corpus -------------------------------------------------------------------------------


def _bytes(img: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def valid_sources() -> dict[str, bytes]:
    img = textured_image(48, 32, seed=3)
    return {
        "jpg": _bytes(img, "JPEG", quality=90),
        "png": _bytes(img, "PNG"),
        "gif": _bytes(img.convert("P"), "GIF"),
        "webp": _bytes(img, "WEBP", lossless=True),
        "tiff": _bytes(img, "TIFF"),
    }


def _patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def _flip(data: bytes, offset: int) -> bytes:
    return _patched(data, offset, bytes([data[offset] ^ 0xFF]))


def huge_headers(src: dict[str, bytes]) -> dict[str, bytes]:
    """Small files whose headers claim billions of pixels (decompression bombs)."""
    jpg = src["jpg"]
    sof = jpg.index(b"\xff\xc0")  # baseline SOF: length(2) precision(1) height(2) width(2)
    tiff = src["tiff"]
    ifd = struct.unpack_from("<I", tiff, 4)[0]
    for i in range(struct.unpack_from("<H", tiff, ifd)[0]):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack_from("<HH", tiff, entry)
        if tag in (256, 257):  # ImageWidth, ImageLength
            value = struct.pack("<H", 65535) + b"\0\0" if kind == 3 else struct.pack("<I", 10**6)
            tiff = _patched(tiff, entry + 8, value)
    webp = src["webp"]
    vp8l = webp.index(b"VP8L") + 9  # chunk tag, size (4), signature byte 0x2f
    bits = struct.unpack_from("<I", webp, vp8l)[0] | (1 << 28) - 1  # 16384 x 16384
    return {
        "bomb.jpg": _patched(jpg, sof + 5, b"\xff\xf0\xff\xf0"),
        "bomb.gif": _patched(src["gif"], 6, b"\xff\xff\xff\xff"),
        "bomb.tiff": tiff,
        "bomb.webp": _patched(webp, vp8l, struct.pack("<I", bits)),
    }


def build_corpus(folder: Path) -> dict[str, str]:
    """Writes the corpus under ``folder``; returns relative path -> "ok" | "bad" | "any"."""
    folder.mkdir(parents=True, exist_ok=True)
    src = valid_sources()
    expect: dict[str, str] = {}

    def put(rel: str, data: bytes, kind: str) -> None:
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expect[rel] = kind

    def sample(writer: object, kind: str, *args: object, **kw: object) -> None:
        path = writer(folder, *args, **kw)  # type: ignore[operator]
        expect[path.relative_to(folder).as_posix()] = kind

    # Odd but valid images: every one must become an output.
    sample(samples.write_jpeg, "ok")
    sample(samples.write_png, "ok")
    sample(samples.write_png16_gradient, "ok")
    sample(samples.write_cmyk_jpeg, "ok")
    sample(samples.write_palette_png_transparent, "ok")
    sample(samples.write_rgba_png, "ok")
    sample(samples.write_la_png, "ok")
    for orientation in range(1, 9):
        sample(samples.write_exif_rotated_jpeg, "ok", orientation, f"exif-{orientation}.jpg")
    sample(samples.write_animated_gif, "ok")
    sample(samples.write_bmp, "ok")
    sample(samples.write_tiff, "ok")
    sample(samples.write_webp, "ok")
    sample(samples.write_webp, "ok", "lossy.webp", lossless=False)
    sample(samples.write_float_tiff, "ok")
    sample(samples.write_int32_tiff, "ok")
    frames = [textured_image(24, 16, seed=s) for s in range(3)]
    put("anim.webp", _bytes(frames[0], "WEBP", save_all=True, append_images=frames[1:]), "ok")
    put("progressive.jpg", _bytes(frames[1], "JPEG", progressive=True), "ok")
    put("thin.png", _bytes(Image.new("RGB", (1, 600), (9, 99, 199)), "PNG"), "ok")
    put("dot.png", _bytes(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "ok")
    put("png-named.jpg", src["png"], "ok")  # wrong extensions: the content decides
    put("jpeg-named.gif", src["jpg"], "ok")
    put("webp-named.png", src["webp"], "ok")
    put("UPPER.JPG", src["jpg"], "ok")
    put("no_extension", src["png"], "ok")
    # Odd names, valid content.
    for rel in (
        "name with spaces.jpg",
        "new\nline.jpg",
        os.fsdecode(b"invalid-utf8-\xff\xfe.jpg"),
        "caf\u00e9 \u2615 \u6f22\u5b57.jpg",
        "x" * 251 + ".jpg",  # 255 bytes: the output name must be cut to fit
        "-leading-dash.jpg",
        "a..b.jpg",
        "trailing space .jpg",
        "/".join(f"d{i:02d}" for i in range(24)) + "/deep.jpg",
    ):
        put(rel, src["jpg"], "ok")
    # Polyglots: an image with something else appended or prepended.
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("payload.txt", "not for you")
    put("jpeg-plus-zip.jpg", src["jpg"] + zipped.getvalue(), "any")
    put("png-plus-html.png", src["png"] + b"<html><script>alert(1)</script></html>", "any")
    put("gif-js.gif", b"GIF89a/*" + b"\x00" * 20 + b"*/=alert(1);", "bad")
    put("zip-then-jpeg.jpg", zipped.getvalue() + src["jpg"], "bad")
    put("svg.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "bad")
    put("page.jpg", b"<!doctype html><title>hi</title>" * 10, "bad")

    # Broken files: every one must be quarantined with a reason.
    sample(samples.write_empty, "bad")
    sample(samples.write_text_as_jpeg, "bad")
    sample(samples.write_png_header_only, "bad", 64, 64)
    sample(samples.write_png_bomb, "bad")
    sample(samples.write_png_corrupt_idat, "bad")
    for fmt in ("PSD", "ICO", "PDF", "EPS", "PPM", "QOI"):
        sample(samples.write_unsupported, "bad", fmt)
    for name, data in huge_headers(src).items():
        put(name, data, "bad")
    for ext, data in src.items():
        # Truncated at many offsets; a cut in the last bytes may still hold every pixel.
        for offset in (1, 7, 16, 40, len(data) // 3, len(data) // 2, len(data) - 12):
            put(f"cut/{ext}-{offset:05d}.{ext}", data[:offset], "bad" if offset < 17 else "any")
        for offset in (0, 1, 3):  # the magic number broken: not an image any more
            put(f"flip/{ext}-magic-{offset}.{ext}", _flip(data, offset), "bad")
        for offset in (12, 20, 33, len(data) // 2):
            put(f"flip/{ext}-{offset:05d}.{ext}", _flip(data, offset), "any")
    put("noise.webp", random.Random(1).randbytes(3000), "bad")
    put("y" * 251 + ".jpg", b"too long a name for a sidecar beside it", "bad")
    return expect


# --- the fuzzer -------------------------------------------------------------------------------


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to four random edits: bit flips, interesting bytes, cuts, inserts, repeats."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        at = rng.randrange(len(out)) if out else 0
        if op == 0 and out:
            out[at] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[at] = rng.choice((0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE))
        elif op == 2:
            del out[at:]
        elif op == 3:
            out[at:at] = rng.randbytes(rng.randint(1, 64))
        elif op == 4 and out:
            size = rng.randint(1, 256)
            out[at:at] = out[at : at + size] * rng.randint(2, 20)
        elif op == 5 and len(out) > 8:
            end = rng.randrange(at, len(out))
            out[at:end] = b"\xff" * (end - at)
    return bytes(out)


# --- the tests --------------------------------------------------------------------------------


def test_decoder_pool_survives_segfaults_and_finds_the_culprit(tmp_path: Path) -> None:
    good = samples.write_jpeg(tmp_path)
    bad = samples.write_text_as_jpeg(tmp_path)
    crash = tmp_path / "crash.jpg"
    crash.write_bytes(SEGFAULT_MARKER + b"\0" * 64)
    pool = DecoderPool(2, DecodeSettings(size=64), test_segfault=True)
    pool.start()
    try:
        assert pool.wait_ready(120)
        pixels, _ = pool.decode(good)
        assert pixels.shape == (40, 64, 3) and pixels.dtype == np.uint8
        with pytest.raises(Exception, match="not_an_image"):
            pool.decode(bad)
        with pytest.raises(Exception, match="decoder_crashed") as raised:
            pool.decode(crash)
        assert raised.value.reason == "decoder_crashed"  # type: ignore[attr-defined]
        assert pool.crashes == 2  # the culprit crashed alone in a fresh worker, too
        assert pool.decode(good)[0].shape == (40, 64, 3)  # the pool goes on
        # Without the test switch the marker is just bytes: a file that is not an image.
        with pytest.raises(Exception, match="not_an_image"):
            DecoderPool(1, DecodeSettings(size=64)).decode(crash)
    finally:
        pool.close()


def test_hostile_corpus_fuzzing_and_segfaults_never_stop_the_daemon(
    pixel_checkpoint: Path, tmp_path: Path, ledger: Ledger
) -> None:
    staging = tmp_path / "staging"
    expect = build_corpus(staging)
    for i in range(2):
        (staging / f"segfault-{i}.jpg").write_bytes(SEGFAULT_MARKER + bytes(100 * i))
        expect[f"segfault-{i}.jpg"] = "crash"
    # Never taken: hidden and partial names stay where they are, unread.
    (staging / ".hidden.jpg").write_bytes(b"hidden")
    (staging / "upload.jpg.part").write_bytes(b"partial")
    assert len(expect) >= 60
    root = tmp_path / "root"
    daemon = Daemon(root, pixel_checkpoint, settle_seconds=0.2)
    daemon.env["_ARTD_TEST_SEGFAULT"] = "1"
    daemon.start()
    pid = daemon.proc.pid  # type: ignore[union-attr]
    base_rss = proc_status(pid)["VmRSS"]
    inputs = {rel: sha((staging / rel).read_bytes()) for rel in expect}
    shutil.copytree(staging, root / "inbox", dirs_exist_ok=True)

    def settled(names: list[str] | dict[str, str]) -> bool:
        out, quarantine = root / "outbox", root / "quarantine"
        done = {p.relative_to(out).as_posix() for p in files_under(out)}
        held = {p.relative_to(quarantine).as_posix() for p in files_under(quarantine)}
        return all(output_rel(r) in done or quarantine_rel(r) in held for r in names)

    wait_until(lambda: settled(expect), 120, "the corpus settled", daemon)
    corpus_rss = proc_status(pid)["VmRSS"]

    # The fuzzer: seeded mutations of valid files, as fast as the daemon takes them.
    rng = random.Random(20261127)
    sources = list(valid_sources().items())
    fuzzed: list[str] = []
    deadline = time.monotonic() + FUZZ_SECONDS
    while time.monotonic() < deadline:
        if len(fuzzed) - metric(daemon, "artd_files_processed_total") > 200:
            time.sleep(0.1)  # far ahead of the daemon: let it catch up
        ext, data = rng.choice(sources)
        rel = f"fuzz/{len(fuzzed):05d}.{ext}"
        payload = mutate(rng, data)
        inputs[rel] = sha(payload)
        temp = root / "inbox" / "fuzz" / f".{len(fuzzed)}.tmp"
        temp.parent.mkdir(exist_ok=True)
        temp.write_bytes(payload)
        temp.rename(root / "inbox" / rel)
        fuzzed.append(rel)
        if len(fuzzed) % 50 == 0:
            time.sleep(0.05)
    wait_until(lambda: settled(fuzzed), 120, "the fuzzed files settled (no stall)", daemon)
    final = proc_status(pid)
    status, health = daemon.health()
    assert status == 200, health
    descendants = children_of(pid)
    workers = sum(len(children_of(child)) for child in descendants)
    assert daemon.stop() == 0

    assert (root / "inbox" / ".hidden.jpg").read_bytes() == b"hidden"
    assert (root / "inbox" / "upload.jpg.part").read_bytes() == b"partial"
    (root / "inbox" / ".hidden.jpg").unlink()
    (root / "inbox" / "upload.jpg.part").unlink()
    names = list(expect) + fuzzed
    report = assert_each_exactly_once(root, names, ledger)
    done, held = set(report["out"]), set(report["quarantined"])
    wrong = {r: k for r, k in expect.items() if (k == "ok" and r not in done)}
    wrong |= {r: k for r, k in expect.items() if k in ("bad", "crash") and r not in held}
    reasons = {r: sidecar_reason(root, quarantine_rel(r)) for r in held}
    assert not wrong, {r: reasons.get(r) for r in wrong}
    assert all(reasons[f"segfault-{i}.jpg"] == "decoder_crashed" for i in range(2))
    assert set(reasons.values()) <= DECODE_REASONS | {Reason.DECODER_FAILED}, set(reasons.values())
    for rel in done:  # each output is a real image made from its own input
        with Image.open(root / "outbox" / output_rel(rel)) as image:
            assert image.text["artd:input_sha256"] == inputs[rel], rel
            image.load()
    assert final["VmRSS"] - base_rss < RSS_GROWTH_LIMIT_KB, (base_rss, corpus_rss, final)
    # No stray processes: the decoders' forkserver (its decoders below it), the shared memory
    # tracker and the model worker.
    assert len(descendants) <= 3 and workers <= 4, (descendants, workers)
    ledger.add(faults=len(expect) + len(fuzzed))
    ledger.note(
        f"hostile: {len(expect)} corpus files + {len(fuzzed)} fuzzed in {FUZZ_SECONDS:.0f}s, "
        f"{len(done)} outputs, {len(held)} quarantined; daemon RSS {base_rss // 1024} -> "
        f"{corpus_rss // 1024} -> {final['VmRSS'] // 1024} MiB (peak {final['VmHWM'] // 1024})"
    )
