"""The service's own death never charges a file: a published output finishes its claim
before anything else, and a restart only counts an interruption, even where an older artd
(which ran the model in the service) had marked the file alone in the model (``solo``).
A poison is found by the model workers instead (tests/test_worker_wiring.py).

The on-disk states are reached the way a real process reaches them: child processes run the
real ``Spool`` and die by SIGKILL, either on their own (a "batch" crash, or a "solo" crash
after writing an older artd's marker) or at a chosen filesystem step through the crash-point
hook (``_ARTD_CRASHPOINT``, docs/spool.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import Daemon, files_under, wait_for

from daemon.spool import SIDECAR_SUFFIX, TEMP_MARK, Spool

REPO = Path(__file__).resolve().parents[1]
INSTANCE = "test"  # the harness's instance name: the daemon resumes these claims
MAX_ATTEMPTS = 3  # the setting's default: what an older artd quarantined at

# A process of the daemon's shape, cut down to the spool: resume, claim, then die in a batch,
# die after marking the resumed claims alone in the model as an older artd did, or commit
# everything.
CHILD = """
import json, os, signal, sys
from pathlib import Path
from daemon.spool import Spool

root, mode = Path(sys.argv[1]), sys.argv[2]
spool = Spool(root, sys.argv[3])
spool.prepare()
claims = spool.recover() + [c for p in list(spool.scan_inbox()) if (c := spool.claim(p))]
print(json.dumps({str(c.rel_path): [c.interrupted, c.solo_crashes] for c in claims}), flush=True)
if mode == "batch-crash":
    os.kill(os.getpid(), signal.SIGKILL)
records = spool._machine.records
for claim in claims:
    if claim.suspect:  # the marker an older artd wrote around a suspect's solo run
        records.write(json.loads(records.path(claim.id).read_bytes()) | {"solo": True})
if mode == "solo-crash":
    os.kill(os.getpid(), signal.SIGKILL)
for claim in claims:
    with spool.open_claim(claim) as handle:
        spool.commit(claim, b"out:" + handle.read())
"""


def child(root: Path, mode: str, **env: str) -> tuple[int, dict[str, list[int]]]:
    """Run CHILD on ``root``; (exit status or -signal, rel path -> [interrupted, solo])."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("_ARTD_")}
    environ |= {"PYTHONPATH": str(REPO), **env}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), mode, INSTANCE],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = done.stdout.splitlines()
    return done.returncode, json.loads(lines[0]) if lines else {}


def step_number(root: Path, tmp: Path, mode: str, name: str) -> int:
    """N such that ``_ARTD_CRASHPOINT=N`` kills CHILD on ``root`` just before step ``name``:
    counted on a copy, since every start of the same state takes the same steps."""
    copy, trace = tmp / "count-copy", tmp / "count.trace"
    shutil.copytree(root, copy, symlinks=True)
    code, _ = child(copy, mode, _ARTD_CRASHPOINT_TRACE=str(trace))
    assert code == 0
    steps = [line.split(" ", 1) for line in trace.read_text().splitlines()]
    return next(int(n) for n, step in steps if step == name)


def at_last_attempt_output_renamed(root: Path, tmp: Path) -> None:
    """``root`` with one claim that an older artd would have held at its last allowed
    attempt (``MAX_ATTEMPTS - 1`` deaths while marked alone in the model, marked again),
    whose output was renamed into the outbox when the process died, its record still
    ``claimed``. None of those deaths charged it."""
    (root / "inbox").mkdir(parents=True)
    (root / "inbox" / "last.jpg").write_bytes(b"the last attempt")
    assert child(root, "batch-crash") == (-9, {"last.jpg": [0, 0]})
    for solo in range(MAX_ATTEMPTS - 1):
        assert child(root, "solo-crash") == (-9, {"last.jpg": [1 + solo, 0]})
    n = step_number(root, tmp, "commit", "output:dir-flush")  # right after output:rename
    assert child(root, "commit", _ARTD_CRASHPOINT=str(n)) == (-9, {"last.jpg": [MAX_ATTEMPTS, 0]})
    record = json.loads(next((root / ".artd" / "work" / INSTANCE).glob("*.json")).read_text())
    assert (record["state"], record["solo"], record["solo_crashes"]) == ("claimed", True, 0)
    assert (root / "outbox" / "last.jpg.png").read_bytes() == b"out:the last attempt"


def assert_finished(root: Path) -> None:
    assert (root / "outbox" / "last.jpg.png").read_bytes() == b"out:the last attempt"
    assert (root / "archive" / "last.jpg").read_bytes() == b"the last attempt"
    assert files_under(root / "quarantine") == []
    assert files_under(root / ".artd" / "work") == []
    assert files_under(root / ".artd" / "reserved") == []
    assert not [p for p in files_under(root) if TEMP_MARK in p.name]


def test_a_published_output_at_the_last_attempt_is_finished_not_weighed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    at_last_attempt_output_renamed(root, tmp_path)
    with Spool(root, INSTANCE) as spool:
        assert spool.recover() == []  # nothing to resume, nothing to quarantine
    assert_finished(root)


def test_the_daemon_finishes_it_too(pixel_checkpoint: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    at_last_attempt_output_renamed(root, tmp_path)
    daemon = Daemon(root, pixel_checkpoint, max_attempts=MAX_ATTEMPTS)
    daemon.start()
    wait_for(lambda: (root / "archive" / "last.jpg").exists(), 30, "the commit finished")
    assert daemon.stop() == 0
    assert_finished(root)
    assert "finishing the commit" in daemon.log and "crashed_repeatedly" not in daemon.log


def test_no_death_of_the_process_charges_a_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "inbox").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (root / "inbox" / name).write_bytes(name.encode())
    for kill in range(5):  # killed while both were in one batch, five times
        code, seen = child(root, "batch-crash")
        assert code == -9 and seen == {"a.jpg": [kill, 0], "b.jpg": [kill, 0]}
    for solo in range(MAX_ATTEMPTS + 1):  # killed with both marked alone, as an older artd did
        code, seen = child(root, "solo-crash")
        assert code == -9 and seen == {"a.jpg": [5 + solo, 0], "b.jpg": [5 + solo, 0]}
    code, seen = child(root, "commit")
    assert code == 0 and seen == {"a.jpg": [9, 0], "b.jpg": [9, 0]}
    assert sorted(p.name for p in files_under(root / "outbox")) == ["a.jpg.png", "b.jpg.png"]
    assert files_under(root / "quarantine") == []


@pytest.mark.parametrize("step", ["output:dir-flush", "record-committed:temp-open"])
def test_an_adopted_claim_with_a_published_output_is_finished(tmp_path: Path, step: str) -> None:
    root = tmp_path / "root"
    (root / "inbox").mkdir(parents=True)
    (root / "inbox" / "last.jpg").write_bytes(b"the last attempt")
    assert child(root, "batch-crash")[0] == -9
    n = step_number(root, tmp_path, "commit", step)
    assert child(root, "commit", _ARTD_CRASHPOINT=str(n))[0] == -9
    with Spool(root, "peer") as peer:  # the dead instance's work, taken over by a peer
        assert peer.recover() == [] and peer.adopt_stale() == []
    assert_finished(root)


def test_the_sidecar_of_a_crashed_repeatedly_file_says_why(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "inbox").mkdir(parents=True)
    (root / "inbox" / "poison.jpg").write_bytes(b"poison")
    assert child(root, "batch-crash")[0] == -9
    for _ in range(MAX_ATTEMPTS):
        assert child(root, "solo-crash")[0] == -9
    with Spool(root, INSTANCE) as spool:
        (claim,) = spool.recover()
        assert claim.solo_crashes == 0  # the process's deaths charged nothing
        claim.solo_crashes = MAX_ATTEMPTS  # a model worker's, as the pipeline records them
        spool.quarantine(claim, "crashed_repeatedly", "the worker died alone 3 times")
    sidecar = json.loads((root / "quarantine" / f"poison.jpg{SIDECAR_SUFFIX}").read_text())
    assert (sidecar["interrupted"], sidecar["solo_crashes"]) == (MAX_ATTEMPTS + 1, MAX_ATTEMPTS)
    # Retrying it is moving it back to the inbox: a fresh claim, no count carried over.
    (root / "quarantine" / "poison.jpg").rename(root / "inbox" / "poison.jpg")
    code, seen = child(root, "commit")
    assert code == 0 and seen == {"poison.jpg": [0, 0]}
