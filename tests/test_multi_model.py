"""Several models at once (docs/operations.md): presets on more checkpoints than the memory budget
holds, least recently used out first, RSS bounded; each preset's checkpoint hot-reloaded and
validated as the default model is."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from conftest import seeded_model, textured_image
from daemon_harness import Daemon, files_under, wait_for

from core.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from core.outputs.encoding import read_metadata

STYLES = ["ink", "oil", "pastel", "chalk"]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def outputs_done(root: Path) -> int:
    return len([p for p in files_under(root / "outbox") if not p.name.startswith(".")])


def test_more_presets_than_the_budget_holds(tmp_path: Path, pixel_checkpoint: Path) -> None:
    checkpoints = {}
    for i, style in enumerate(STYLES):
        checkpoints[style] = tmp_path / f"{style}.safetensors"
        save_checkpoint(checkpoints[style], seeded_model(10 + i).state_dict(), CheckpointMeta())
    presets = {style: {"checkpoint": str(path)} for style, path in checkpoints.items()}
    root = tmp_path / "root"
    # One model's weights (and its folded copy) fit 8 MiB; two do not.
    with Daemon(root, pixel_checkpoint, presets=json.dumps(presets), model_memory_mb=8) as d:
        assert d.proc is not None
        rss, most_loaded, done = [], 0, 0
        for round_ in range(4):
            for style in STYLES:  # each round needs every model once: 4 loads per round
                for j in range(2):
                    name = f"r{round_}-{j}.jpg"
                    textured_image(64, 48, seed=round_ * 10 + j).save(root / "inbox" / style / name)
                done += 2
                wait_for(lambda n=done: outputs_done(root) >= n, 120, f"{done} outputs")
                most_loaded = max(most_loaded, len(d.health()[1]["models"]))
            rss.append(rss_mib(d.proc.pid))
        assert d.stop() == 0
    assert most_loaded == 1, most_loaded
    assert d.log.count("unloaded (memory budget)") >= 4 * len(STYLES) - 2
    # Loading and dropping a model 16 times leaves memory where the first round had it.
    assert rss[-1] - rss[0] < 60, rss
    print(f"RSS per round (MiB), budget 1 model of {len(STYLES)}: {[round(r) for r in rss]}")
    for style, path in checkpoints.items():
        for out in (root / "outbox" / style).iterdir():
            meta = read_metadata(out.read_bytes())
            assert meta["artd:model_sha256"] == load_checkpoint(path).sha256, out


def test_a_preset_checkpoint_is_hot_reloaded_and_validated(
    tmp_path: Path, pixel_checkpoint: Path
) -> None:
    path = tmp_path / "ink.safetensors"
    save_checkpoint(path, seeded_model(20).state_dict(), CheckpointMeta(epoch=1))
    first = load_checkpoint(path).sha256
    root = tmp_path / "root"
    presets = {"ink": {"checkpoint": str(path)}}
    with Daemon(root, pixel_checkpoint, presets=json.dumps(presets)) as d:
        inbox = root / "inbox" / "ink"

        def process(name: str) -> str:
            textured_image(64, 48, seed=len(name)).save(inbox / name)
            out = root / "outbox" / "ink" / f"{name}.png"
            wait_for(out.exists, 60, name)
            return read_metadata(out.read_bytes())["artd:model_sha256"]

        assert process("a.jpg") == first
        broken = tmp_path / "broken.tmp"
        broken.write_bytes(b"not a checkpoint at all" * 100)
        os.replace(broken, path)  # a bad model: the old one keeps serving
        wait_for(lambda: os.stat(path).st_mtime < time.time() - 0.6, 5, "age")
        assert process("b.jpg") == first
        errors = d.health()[1]["model_errors"]
        assert str(path) in errors and "refused" in errors[str(path)], errors
        save_checkpoint(path, seeded_model(21).state_dict(), CheckpointMeta(epoch=2))
        second = load_checkpoint(path).sha256
        wait_for(lambda: time.sleep(0.7) or True, 5, "reload interval")
        assert process("c.jpg") == second
        assert d.health()[1]["model_errors"] == {}
        assert d.stop() == 0
