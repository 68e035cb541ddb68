"""Data: scan, reject, split, decode-once cache, manifest; and the procedural generator."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.synthetic import procedural
from core.training.data import CachedImages, assign_splits, prepare, scan


def make_collection(root: Path, count: int = 12, size: int = 40) -> list[Path]:
    """Procedural images in class sub-folders plus one flat file and a few bad ones."""
    paths = procedural.write_dataset(root, count, size, seed=3, vary_aspect=True)
    procedural.generate(99, 24, 40).save(root / "flat.png")
    (root / "junk.jpg").write_bytes(b"this is not a jpeg")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("hello")
    (root / "cut.jpg").write_bytes(paths[0].read_bytes()[:300])
    (root / ".hidden.jpg").write_bytes(paths[1].read_bytes())
    (root / ".cache").mkdir()
    (root / ".cache" / "x.jpg").write_bytes(paths[1].read_bytes())
    return paths


def test_procedural_is_deterministic_and_varied(tmp_path):
    a = np.asarray(procedural.generate(5, 48, 32))
    assert a.shape == (32, 48, 3)
    assert np.array_equal(a, np.asarray(procedural.generate(5, 48, 32)))
    assert not np.array_equal(a, np.asarray(procedural.generate(6, 48, 32)))
    assert a.std() > 10  # textured, not flat

    out = tmp_path / "set"
    result = subprocess.run(
        [sys.executable, "-m", "core.synthetic.procedural", "--out", str(out), "--count", "5",
         "--size", "32", "--seed", "7", "--format", "png"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "wrote 5 images" in result.stdout
    files = sorted(out.rglob("*.png"))
    assert len(files) == 5 and {p.parent.name for p in files} == set(procedural.STYLES)
    again = procedural.write_dataset(tmp_path / "again", 5, 32, seed=7, fmt="png")
    assert [p.read_bytes() for p in sorted(again)] == [p.read_bytes() for p in files]


def test_scan_is_recursive_and_skips_hidden(tmp_path):
    make_collection(tmp_path, count=4)
    found = scan(tmp_path)
    assert "flat.png" in found and "notes.txt" in found
    assert any(p.startswith("cells/") for p in found)
    assert not any(part.startswith(".") for p in found for part in p.split("/"))
    assert found == sorted(found)


def test_split_is_stable_and_never_empty():
    paths = [f"class/{i:04d}.jpg" for i in range(400)]
    splits = assign_splits(paths, 0.05)
    val = [p for p in paths if splits[p] == "val"]
    assert 5 <= len(val) <= 40
    # Adding files never moves an existing one across the split.
    more = assign_splits([*paths, *(f"new/{i}.jpg" for i in range(100))], 0.05)
    assert all(more[p] == splits[p] for p in paths)
    for n in (2, 3, 5):
        small = assign_splits([f"{i}.jpg" for i in range(n)], 0.05)
        assert "val" in small.values() and "train" in small.values()
    assert assign_splits(["only.jpg"], 0.05) == {"only.jpg": "train"}


def test_prepare_rejects_caches_and_describes(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_collection(data)
    first = prepare(data, cache, 16, "stretch", 0.2, workers=2)
    rejected = {r.path: r.reason for r in first.rejected}
    assert rejected == {
        "junk.jpg": "not_an_image",
        "empty.png": "empty_file",
        "notes.txt": "not_an_image",
        "cut.jpg": "truncated",
    }
    assert len(first.entries) == 13 and first.decoded == 17
    assert {e.split for e in first.entries} == {"train", "val"}
    manifest = [json.loads(line) for line in first.manifest_bytes().decode().splitlines()]
    flat = next(m for m in manifest if m["path"] == "flat.png")
    raw = (data / "flat.png").read_bytes()
    assert flat["size"] == len(raw) and flat["sha256"] == hashlib.sha256(raw).hexdigest()
    assert first.dataset_hash() == hashlib.sha256(first.manifest_bytes()).hexdigest()

    # The cached pixels are the stretched image, as uint8 NHWC batches.
    images = CachedImages(first.cache_file, 16, [e.slot for e in first.entries])
    batch = images.__getitems__([0, 2, 1])
    assert batch.shape == (3, 16, 16, 3) and batch.dtype.is_floating_point is False
    index = next(i for i, e in enumerate(first.entries) if e.path == "flat.png")
    expected = np.asarray(Image.open(data / "flat.png").convert("RGB").resize((16, 16), 2))
    assert np.abs(images[index].numpy().astype(int) - expected).max() <= 1

    # A second run decodes nothing, not even the broken files, and agrees on everything.
    second = prepare(data, cache, 16, "stretch", 0.2, workers=2)
    assert second.decoded == 0
    assert second.entries == first.entries and second.rejected == first.rejected

    # A changed file (new mtime/size) is decoded again; a new one is added; the rest is reused.
    target = data / "flat.png"
    procedural.generate(100, 40, 24).save(target)
    os.utime(target, ns=(1, 1))
    procedural.generate(101, 32, 32).save(data / "added.png")
    third = prepare(data, cache, 16, "stretch", 0.2, workers=2)
    assert third.decoded == 2
    changed = next(e for e in third.entries if e.path == "flat.png")
    assert changed.slot != next(e.slot for e in first.entries if e.path == "flat.png")
    kept = {e.path: e.split for e in first.entries}
    assert all(kept[e.path] == e.split for e in third.entries if e.path in kept)


def test_interrupted_cache_write_is_dropped(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    procedural.write_dataset(data, 3, 24, seed=1)
    first = prepare(data, cache, 8, "stretch", 0.3)
    cache_file = Path(first.cache_file)
    with open(cache_file, "ab") as f:
        f.write(b"\x01" * 50)  # half a slot from a run that died mid-append
    second = prepare(data, cache, 8, "stretch", 0.3)
    assert second.decoded == 0
    assert cache_file.stat().st_size == 3 * 8 * 8 * 3


def test_crop_policy_keeps_aspect(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    # Left half red, right half blue, 2:1: a centre crop keeps both colours undistorted.
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32, 0] = 255
    pixels[:, 32:, 2] = 255
    Image.fromarray(pixels).save(data / "wide.png")
    Image.fromarray(pixels).save(data / "wide2.png")
    prepared = prepare(data, tmp_path / "cache", 16, "crop", 0.5)
    img = CachedImages(prepared.cache_file, 16, [prepared.entries[0].slot])[0].numpy()
    assert img.shape == (16, 16, 3)
    assert img[:, :6, 0].min() > 200 and img[:, -6:, 2].min() > 200


def test_missing_data_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        prepare(tmp_path / "nope", tmp_path / "cache", 16)
