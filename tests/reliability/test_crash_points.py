"""The crash-point loop: SIGKILL at every filesystem step of the spool, restart, check.

Two levels. The exhaustive loop runs the real ``Spool`` in a small forking driver (no torch,
so a run costs milliseconds) and kills it at *every* step N of processing six files, then
again early in the restart (inside ``recover()`` itself), then lets a third start finish.
Every run of the loop starts from a root where a dead process left three files claimed
(one with an older artd's ``solo`` marker, which recovery drops without charging it). The
daemon-level chain kills the real daemon (``python -m daemon``) at chosen steps counted from
its start, recovery included, several times over one root. After both, every input has
exactly one output or quarantine entry and nothing is left half-done.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from conftest import textured_image
from daemon_harness import Daemon, files_under
from reliability_kit import (
    FULL,
    Ledger,
    assert_each_exactly_once,
    ledger_fixture,  # noqa: F401  (the ledger fixture)
    sidecar_reason,
    temp_files,
    tmpfs_or_disk,
    wait_until,
)

from daemon.spool import TEMP_MARK

DRIVER = Path(__file__).with_name("spool_crash_driver.py")
GOOD = ["a.jpg", "same.jpg", "same.png", "sub/c.jpg"]
BAD = ["bad1.jpg", "sub/deep/bad2.gif"]
SUSPECTS = 3  # claimed by a process that died before the loop: a.jpg, bad1.jpg, same.jpg
# Job sidecars (docs/operations.md): one on a suspect, one on a fresh file, one on a bad file (which
# must end beside it in the quarantine, never as an image).
SIDECARS = {"a.jpg": b'{"size": 32}', "sub/c.jpg": b'{"seed": 1}', "bad1.jpg": b'{"size": 48}'}
JOB_SUFFIX = ".artd.json"


def make_template(folder: Path) -> dict[str, bytes]:
    """A root whose inbox holds the six files, three of them claimed by a dead process."""
    contents = {}
    for i, rel in enumerate(GOOD + BAD):
        data = (b"BAD" if rel in BAD else b"IMG") + hashlib.sha256(rel.encode()).digest() * (i + 1)
        (folder / "inbox" / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / "inbox" / rel).write_bytes(data)
        contents[rel] = data
        if rel in SIDECARS:
            (folder / "inbox" / f"{rel}{JOB_SUFFIX}").write_bytes(SIDECARS[rel])
    assert run_driver(folder.parent, folder, [], prepare=SUSPECTS) == {"prepare": -9}
    records = (folder / ".artd" / "work" / "crash").glob("*.json")
    assert len([p for p in records if not p.name.endswith(JOB_SUFFIX)]) == SUSPECTS
    return contents


def run_driver(
    base: Path, template: Path, points: list[int], prepare: int = 0
) -> dict[str, list[list]]:
    tag = points[0] if points else "prepare"
    plan = base / f"plan-{tag}.json"
    report = base / f"report-{tag}.json"
    spec = {"template": str(template), "base": str(base), "points": points, "report": str(report)}
    plan.write_text(json.dumps(spec | {"prepare": prepare}))
    subprocess.run([sys.executable, str(DRIVER), str(plan)], check=True, timeout=600)
    return json.loads(report.read_text())


def check_spool_root(root: Path, contents: dict[str, bytes]) -> list[str]:
    """The invariants after the last start; returns the problems found (empty: all good)."""
    problems = []
    outbox, quarantine, archive = root / "outbox", root / "quarantine", root / "archive"
    expected_out = {f"{rel}.png" for rel in GOOD}
    out = {p.relative_to(outbox).as_posix() for p in files_under(outbox)}
    if out != expected_out:
        problems.append(f"outputs {sorted(out)}")
    for rel in GOOD:
        digest = hashlib.sha256(contents[rel]).hexdigest().encode()
        settings = json.loads(SIDECARS.get(rel, b"{}"))
        expected = b"OUT:" + digest + b"|" + json.dumps(settings, sort_keys=True).encode()
        output = outbox / f"{rel}.png"
        if output.exists() and output.read_bytes() != expected:
            problems.append(f"wrong output for {rel}")
        kept = archive / rel
        if not kept.exists() or kept.read_bytes() != contents[rel]:
            problems.append(f"archive lacks {rel}")
        if rel in SIDECARS and (archive / f"{rel}{JOB_SUFFIX}").read_bytes() != SIDECARS[rel]:
            problems.append(f"archive lacks the sidecar of {rel}")
    held = {p.relative_to(quarantine).as_posix() for p in files_under(quarantine)}
    bad_sidecars = {f"{rel}{JOB_SUFFIX}" for rel in BAD if rel in SIDECARS}
    if held != set(BAD) | {f"{rel}.error.json" for rel in BAD} | bad_sidecars:
        problems.append(f"quarantine {sorted(held)}")
    elif any(sidecar_reason(root, rel) != "not_an_image" for rel in BAD):
        problems.append("wrong quarantine reason")
    good_sidecars = [rel for rel in GOOD if rel in SIDECARS]
    if len(files_under(archive)) != len(GOOD) + len(good_sidecars):
        problems.append(f"archive {sorted(p.name for p in files_under(archive))}")
    leftovers = files_under(root / "inbox") + files_under(root / ".artd" / "work")
    leftovers += files_under(root / ".artd" / "reserved")
    if leftovers or any(TEMP_MARK in p.name for p in files_under(root)):
        problems.append(f"left over: {leftovers} {temp_files(root)}")
    return problems


def test_spool_survives_a_kill_at_every_step_and_inside_recovery(
    tmp_path: Path, ledger: Ledger
) -> None:
    started = time.monotonic()
    with tmpfs_or_disk(tmp_path / "fast", "256m") as base:
        template = base / "template"
        contents = make_template(template)
        count_base = base / "count"
        count_base.mkdir()
        run_driver(count_base, template, [0])
        assert not check_spool_root(count_base / "n0000", contents)
        steps = [
            line.split(" ", 1)[1]
            for line in (count_base / "n0000-crash.trace").read_text().splitlines()
            if line[0].isdigit()
        ]
        assert len(steps) > 100, steps  # six files take well over a hundred steps
        assert not {"record-solo:rename", "record-unsolo:rename"} & set(steps)  # retired
        sidecar_steps = {"claim:sidecar-rename", "claim:sidecar-read", "claim:resolve"}
        sidecar_steps |= {"archive-sidecar:rename", "quarantine-sidecar:rename"}
        assert sidecar_steps <= set(steps), sidecar_steps - set(steps)

        loop_base = base / "loop"
        loop_base.mkdir()
        points = list(range(1, len(steps) + 1))
        results = run_driver(loop_base, template, points)
        failures, killed_at, in_recovery = {}, Counter(), 0
        for n in points:
            (_, code, last), (_, rcode, _), (_, fcode, flast) = results[str(n)]
            assert code == -9, f"N={n}: the crash run did not die at its crash point ({last})"
            killed_at[last.split(" ", 1)[1]] += 1
            recovery_trace = (loop_base / f"n{n:04d}-recovery.trace").read_text()
            in_recovery += rcode == -9 and "-- recovered" not in recovery_trace
            if fcode != 0:
                failures[n] = f"final start failed: {flast}"
            elif problems := check_spool_root(loop_base / f"n{n:04d}", contents):
                failures[n] = f"killed at {last}: {problems}"
        assert not failures, failures
    assert set(killed_at) == set(steps), set(steps) - set(killed_at)
    assert in_recovery >= len(points) // 4, in_recovery
    ledger.add(faults=2 * len(points), files_in=len(points) * len(contents))
    ledger.add(outputs=len(points) * len(GOOD), quarantined=len(points) * len(BAD))
    ledger.note(
        f"spool crash loop: {len(points)} crash points x 2 kills ({in_recovery} inside "
        f"recover()), {len(set(steps))} kinds of step, {time.monotonic() - started:.0f}s"
    )


def test_daemon_killed_at_chosen_steps_and_during_recovery(
    pixel_checkpoint: Path, tmp_path: Path, ledger: Ledger
) -> None:
    root = tmp_path / "root"
    inbox = root / "inbox"
    names = []
    for i, rel in enumerate(GOOD):
        (inbox / rel).parent.mkdir(parents=True, exist_ok=True)
        fmt = "PNG" if rel.endswith(".png") else "JPEG"
        textured_image(48, 32, seed=i).save(inbox / rel, fmt)
        names.append(rel)
    for rel in BAD:
        (inbox / rel).parent.mkdir(parents=True, exist_ok=True)
        (inbox / rel).write_bytes(b"not an image at all" * 10)
        names.append(rel)
    # Steps counted from each start: small ones land inside recover(), larger ones in work.
    chain = [60, 3, 90, 2] if not FULL else [60, 3, 45, 2, 90, 5, 30, 1, 120, 4, 75]
    daemon = Daemon(root, pixel_checkpoint, settle_seconds=0.2, max_attempts=100)
    killed = []
    for n in chain:
        trace = tmp_path / f"trace-{len(killed)}.txt"
        daemon.env.update(_ARTD_CRASHPOINT=str(n), _ARTD_CRASHPOINT_TRACE=str(trace))
        daemon.start(wait=False)
        assert daemon.proc is not None
        try:
            code = daemon.proc.wait(90)
        except subprocess.TimeoutExpired:
            code = None  # finished everything before step n: nothing left to kill
            daemon.kill()
        lines = trace.read_text().splitlines() if trace.exists() else []
        killed.append((n, code, lines[-1] if lines else "-"))
    for key in ("_ARTD_CRASHPOINT", "_ARTD_CRASHPOINT_TRACE"):
        daemon.env.pop(key)
    daemon.start()
    wait_until(
        lambda: len(files_under(root / "outbox")) + len(files_under(root / "quarantine")) >= 8,
        90,
        "all settled",
        daemon,
    )
    time.sleep(1.0)
    assert daemon.stop() == 0
    report = assert_each_exactly_once(root, names, ledger)
    assert sorted(report["out"]) == sorted(GOOD), killed
    assert all(sidecar_reason(root, rel) == "not_an_image" for rel in BAD)
    assert len(files_under(root / "archive")) == len(GOOD)
    real_kills = [k for k in killed if k[1] == -9]
    assert len(real_kills) >= len(chain) - 1, killed
    ledger.add(faults=len(real_kills))
    hits = ", ".join(f"{n}->{step}" for n, _, step in killed)
    ledger.note(f"daemon kills (step n -> step hit): {hits}")
