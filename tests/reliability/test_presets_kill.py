"""kill -9 during a mixed run of presets and job sidecars (docs/operations.md).

Sixty files across two presets on two checkpoints, the defaults and a plain sub-folder, a
third of them with a sidecar, dropped in waves while the real daemon is SIGKILLed at random
moments: every image ends once in the outbox with the settings it should have (its claim
fixed them), every sidecar beside its archived original, none quarantined, work/ empty.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

from conftest import seeded_model
from daemon_harness import Daemon, files_under
from reliability_kit import (
    FULL,
    Ledger,
    ledger_fixture,  # noqa: F401  (the ledger fixture)
    wait_until,
)
from test_presets import (
    assert_settled,
    check_output,
    drop,
    expected_job,
    mixed_drops,
    presets_for,
)

from core.checkpoint import CheckpointMeta, save_checkpoint

FILES, KILLS = (120, 10) if FULL else (60, 6)


def test_kill_9_during_presets_and_sidecars(
    pixel_checkpoint: Path, tmp_path: Path, ledger: Ledger
) -> None:
    second = tmp_path / "watercolour.safetensors"
    save_checkpoint(second, seeded_model(5).state_dict(), CheckpointMeta(epoch=2))
    presets = presets_for(second)
    checkpoints = {"default": pixel_checkpoint, "watercolour": second, "sketch": pixel_checkpoint}
    drops = mixed_drops(FILES, seed=41)
    rng = random.Random(41)
    root = tmp_path / "root"
    daemon = Daemon(
        root, pixel_checkpoint, presets=json.dumps(presets), settle_seconds=0.2, max_batch=8
    )
    wave = -(-FILES // (KILLS + 1))

    def done() -> int:
        return len([p for p in files_under(root / "outbox") if not p.name.startswith(".")])

    hit = []
    for kill in range(KILLS):
        for i in range(kill * wave, min(FILES, (kill + 1) * wave)):
            rel, sidecar = drops[i]
            drop(root / "inbox", rel, i, sidecar, temp_sidecar=i % 2 == 0)
        daemon.start()
        before = done()
        time.sleep(rng.uniform(0.2, 2.0))
        daemon.kill()
        hit.append(done() - before)
    for i in range(KILLS * wave, FILES):
        rel, sidecar = drops[i]
        drop(root / "inbox", rel, i, sidecar, temp_sidecar=i % 2 == 0)
    daemon.start()
    wait_until(lambda: done() >= FILES, 240, "all settled", daemon)
    time.sleep(0.5)
    assert daemon.stop() == 0
    assert not files_under(root / "quarantine"), files_under(root / "quarantine")
    for rel, sidecar in drops:
        expected = expected_job(rel, sidecar, presets, checkpoints)
        check_output(root, rel, expected, sidecar is not None)
    assert_settled(root, drops)
    assert len(files_under(root / "outbox")) == FILES
    resumed = sum(int(n) for n in re.findall(r"resuming (\d+) claimed", daemon.log))
    ledger.add(faults=KILLS)
    ledger.note(
        f"presets kill -9: {FILES} files ({sum(s is not None for _, s in drops)} with sidecars), "
        f"{KILLS} kills (outputs between start and kill: {hit}), {resumed} claims resumed; "
        "each output with its own settings, 0 quarantined, work/ empty"
    )
