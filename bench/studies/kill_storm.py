"""Study: ``kill -9`` storms on the daemon at its defaults: nothing lost, nothing duplicated,
nothing quarantined (docs/benchmarks.md, "Model workers").

    PYTHONPATH=. .venv/bin/python -m bench.studies.kill_storm [--files 200] [--kills 8]
        [--pattern service|worker|both] [--seed N] [--jitter S] [--out DIR]

The shipped model (``core.DEFAULT_CHECKPOINT``) at the daemon's own defaults (512 px, every
other setting as shipped, device "auto"), ``--files`` distinct JPEG photographs
(scikit-image's, cropped, mirrored and scaled to 1024x768 .. 2000x1500, quality 90) renamed at
once into the inbox of a fresh root. The kills are spread over the work whatever the
machine's speed: kill k comes once a random number of files in the k-th of ``--kills`` equal
slices of 5-85 % of ``--files`` have settled, plus a random 0 .. ``--jitter`` s (a random point
of the batch then in the model); a storm whose files all settled before its last kill fails.

- ``service``: the daemon (``python -m daemon``) is ``kill -9``ed and restarted at once on
  the same root; a kill found work in flight when the next start resumed claims ("resuming N
  claimed file(s)").
- ``worker``: the daemon runs once; its model worker (``/healthz`` ``workers[0]["pid"]``) is
  ``kill -9``ed at its next busy moment; a kill found work in flight when
  ``artd_worker_deaths_total{kind="signal"}`` counted it. The service must keep its pid.

Then, for each input: exactly one output in outbox/ (``<name>.jpg.png``, made from that input),
its original in archive/ (same bytes), nothing in quarantine/, inbox/ or ``.artd/work``, no
temporary file. Prints a markdown table, writes ``kill-storm-<pattern>.json`` and each
pattern's daemon log under ``--out``; exits 1 if any ledger check fails or a kill could not
land in work (everything settled before the kills were used up).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import core
from bench.shared.common import DEFAULT_OUT
from bench.shared.daemon_harness import Daemon, count_files, shipped_settings
from bench.shared.photos import PHOTOS, photo
from bench.studies.daemon_cpu import descendants
from core.outputs.encoding import read_metadata
from daemon.settings import DaemonSettings
from daemon.spool.names import TEMP_MARK

SIDECAR = ".error.json"
DEATHS = 'artd_worker_deaths_total{kind="signal"}'
WAIT_S = 300.0  # the longest wait for one step (a start, a claim, a busy worker, a restart)


class StormError(RuntimeError):
    """The storm could not be run as asked (a kill found nothing left to do, a timeout)."""


# --- the inputs ----------------------------------------------------------------------------


def make_photos(folder: Path, count: int, seed: int) -> dict[str, str]:
    """``count`` distinct JPEGs (quality 90) in ``folder``, made from scikit-image's photos:
    a random crop (60-100 % of each side), maybe mirrored, scaled to 4:3 or 3:4 between
    1024x768 and 2000x1500. Returns name -> sha256; reuses what a run with the same
    ``count`` and ``seed`` left there."""
    manifest = folder / "manifest.json"
    wanted = {"count": count, "seed": seed}
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved.get("made") == wanted and all((folder / n).exists() for n in saved["files"]):
            return saved["files"]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    sources = {name: photo(name) for name in PHOTOS}
    files: dict[str, str] = {}
    for i in range(count):
        base = PHOTOS[i % len(PHOTOS)]
        rgb = sources[base]
        while True:
            h, w = rgb.shape[:2]
            ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
            top, left = rng.randrange(h - ch + 1), rng.randrange(w - cw + 1)
            part = rgb[top : top + ch, left : left + cw]
            if rng.random() < 0.5:
                part = part[:, ::-1]
            long_side = rng.randrange(1024, 2001, 8)
            short_side = long_side * 3 // 4
            size = (long_side, short_side) if rng.random() < 0.7 else (short_side, long_side)
            image = Image.fromarray(np.ascontiguousarray(part)).resize(
                size, Image.Resampling.LANCZOS
            )
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=90)
            data = buffer.getvalue()
            digest = hashlib.sha256(data).hexdigest()
            if digest not in files.values():
                break
        name = f"{i:03d}-{base}.jpg"
        (folder / name).write_bytes(data)
        files[name] = digest
    manifest.write_text(json.dumps({"made": wanted, "files": files}, indent=1))
    return files


def drop(photos: Path, names: list[str], staging: Path, inbox: Path) -> float:
    """Copy into staging (same filesystem, untimed), rename all into the inbox; returns the
    time.perf_counter() of the first rename."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in names:
        shutil.copyfile(photos / name, staging / name)
    inbox.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for name in names:
        os.rename(staging / name, inbox / name)
    return started


# --- the ledger ----------------------------------------------------------------------------


def files_in(folder: Path) -> list[str]:
    """Every file under ``folder`` (temporary names too), relative, never following links."""
    found = []
    for dirpath, _dirs, names in os.walk(folder):
        found += [Path(dirpath, n).relative_to(folder).as_posix() for n in names]
    return sorted(found)


def ledger(root: Path, inputs: dict[str, str]) -> dict[str, Any]:
    """Where each input ended, and every way that differs from "one output, one archived
    original, nothing else"."""
    ext = DaemonSettings.model_construct().output_extension
    outbox, archive = files_in(root / "outbox"), files_in(root / "archive")
    quarantine = files_in(root / "quarantine")
    held = [q for q in quarantine if not q.endswith(SIDECAR)]
    expected_out = {f"{name}{ext}": name for name in inputs}
    lost = [n for n in inputs if f"{n}{ext}" not in outbox and n not in held]
    duplicated = [o for o in outbox if o not in expected_out]  # numbered second copies
    duplicated += [a for a in archive if a not in inputs]
    duplicated += [n for n in inputs if f"{n}{ext}" in outbox and n in held]
    not_archived = [n for n in inputs if n not in archive]
    wrong_archive = [
        n
        for n in inputs
        if n in archive
        and hashlib.sha256((root / "archive" / n).read_bytes()).hexdigest() != inputs[n]
    ]
    wrong_output = []
    for out_name, name in expected_out.items():
        if out_name in outbox:
            meta = read_metadata((root / "outbox" / out_name).read_bytes())
            if meta.get("artd:input_sha256") != inputs[name]:
                wrong_output.append(out_name)
    temp = [
        f"{area}/{rel}"
        for area in ("outbox", "archive", "quarantine", "inbox")
        for rel in files_in(root / area)
        if TEMP_MARK in rel
    ]
    report = {
        "outputs": sum(1 for o in expected_out if o in outbox),
        "archived": sum(1 for n in inputs if n in archive),
        "lost": lost,
        "duplicated": duplicated,
        "quarantined": held,
        "not_archived": not_archived,
        "archive_differs": wrong_archive,
        "output_of_another_input": wrong_output,
        "left_in_inbox": files_in(root / "inbox"),
        "left_in_work": files_in(root / ".artd" / "work"),
        "temporary_files": temp,
    }
    report["ok"] = all(not v for k, v in report.items() if isinstance(v, list))
    return report


# --- the storms ----------------------------------------------------------------------------


@dataclass
class Storm:
    pattern: str
    files: int
    kills: list[dict[str, Any]] = field(default_factory=list)
    found_work: int = 0
    in_flight: int = 0  # resumed claims (service) or worker deaths by signal (worker)
    solo_crashes: int = 0
    wall_s: float = 0.0
    stop_code: int | None = None
    service_pid_kept: bool | None = None
    final_worker: dict[str, Any] = field(default_factory=dict)
    worker_lines: list[str] = field(default_factory=list)
    worker_metrics: list[str] = field(default_factory=list)
    ledger: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def wait(
    condition: Callable[[], bool], what: str, daemon: Daemon | None, timeout: float = WAIT_S
) -> float:
    """Poll ``condition`` until true; the seconds it took. Raises if ``daemon`` died."""
    started = time.monotonic()
    while not condition():
        if daemon is not None and daemon.proc is not None and daemon.proc.poll() is not None:
            raise StormError(f"the daemon exited {daemon.proc.returncode} waiting for {what}")
        if time.monotonic() - started > timeout:
            raise StormError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def kill_targets(files: int, kills: int, rng: random.Random) -> list[int]:
    """When each kill comes, as files settled: one random count in each of ``kills`` equal
    slices of 5-85 % of ``files``, so the kills spread over the work and the last still finds
    some (whatever the machine's speed)."""
    low, width = 0.05 * files, 0.8 * files / kills
    return [int(low + width * (k + rng.random())) for k in range(kills)]


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def claims(root: Path) -> int:
    """Claimed files in ``.artd/work`` (each is ``<id><suffix>`` beside its ``<id>.json``)."""
    return sum(1 for rel in files_in(root / ".artd" / "work") if not rel.endswith(".json"))


def start(root: Path, log: Path) -> Daemon:
    """``python -m daemon`` on ``root`` (kept as it is) at its defaults, healthy (the device
    too: "auto"), its output in ``log``."""
    daemon = Daemon(root, core.DEFAULT_CHECKPOINT, "auto", fresh=False, **shipped_settings())
    daemon.log = log
    try:
        return daemon.__enter__()
    except RuntimeError as exc:
        daemon.__exit__(None, None, None)
        raise StormError(str(exc)) from None


def worker_of(daemon: Daemon) -> dict[str, Any]:
    (only,) = daemon.health()["workers"]
    return only


def service_storm(
    storm: Storm,
    photos: Path,
    inputs: dict[str, str],
    targets: list[int],
    jitter: float,
    rng: random.Random,
    work: Path,
) -> None:
    """Kill the service once ``targets[k]`` files have settled (plus up to ``jitter`` s), and
    restart it at once; fills ``storm`` (partly, if it raises)."""
    root, n = work / "root", len(inputs)
    logs = [work / "daemon-00.log"]

    def settled() -> int:
        return count_files(root / "outbox") + count_files(root / "quarantine") // 2

    daemon = start(root, logs[0])
    up = time.monotonic()
    try:
        dropped = drop(photos, list(inputs), work / "staging", root / "inbox")
        for k, target in enumerate(targets):
            wait(lambda t=target: settled() >= t, f"{target} settled", daemon)
            time.sleep(rng.uniform(0.0, jitter))
            if settled() >= n:
                raise StormError(
                    f"all {n} settled before kill {k + 1} of {len(targets)}: nothing to kill"
                )
            assert daemon.proc is not None
            before = set(descendants(daemon.proc.pid))
            state = {
                "kill": k + 1,
                "target": target,
                "up_s": round(time.monotonic() - up, 2),
                "settled": settled(),
                "claimed": claims(root),
                "worker_busy": worker_of(daemon)["busy"],
            }
            daemon.kill()
            killed = time.monotonic()
            storm.kills.append(state)
            logs.append(work / f"daemon-{k + 1:02d}.log")
            daemon = start(root, logs[-1])  # at once: its old workers may still be exiting
            up = time.monotonic()
            state["restart_s"] = round(up - killed, 2)
            state["old_children_at_restart"] = sum(map(running, before))
            wait(
                lambda b=before: not any(map(running, b)),
                "the killed service's children to exit",
                None,
                60,
            )
            state["old_children_gone_s"] = round(time.monotonic() - killed, 2)
            print(f"  service kill {k + 1}: {state}", flush=True)
        wait(lambda: settled() >= n, f"all {n} settled", daemon, max(WAIT_S, 10.0 * n))
        storm.wall_s = time.perf_counter() - dropped
        time.sleep(1.0)  # the last commits archive their originals
    finally:
        daemon.__exit__(None, None, None)
        storm.stop_code = daemon.proc.returncode if daemon.proc else None
        text = join_logs(logs, work / "daemon.log")
        resumed = [
            sum(
                int(m)
                for m in re.findall(r"resuming (\d+) claimed", log.read_text(errors="replace"))
            )
            for log in logs[1:]
            if log.exists()
        ]
        for state, count in zip(storm.kills, resumed, strict=False):
            state["resumed_next_start"] = count
        storm.found_work = sum(1 for count in resumed if count)
        storm.in_flight = sum(resumed)
        storm.solo_crashes = text.count("solo crash")


def worker_storm(
    storm: Storm,
    photos: Path,
    inputs: dict[str, str],
    targets: list[int],
    jitter: float,
    rng: random.Random,
    work: Path,
) -> None:
    """Kill the model worker once ``targets[k]`` files have settled (plus up to ``jitter`` s,
    then at its next busy moment), under one service; fills ``storm`` (partly, if it raises)."""
    root, n = work / "root", len(inputs)

    def settled() -> int:
        return count_files(root / "outbox") + count_files(root / "quarantine") // 2

    daemon = start(root, work / "daemon.log")
    assert daemon.proc is not None
    service = daemon.proc.pid
    up = time.monotonic()
    try:
        dropped = drop(photos, list(inputs), work / "staging", root / "inbox")
        for k, target in enumerate(targets):
            wait(lambda t=target: settled() >= t, f"{target} settled", daemon)
            time.sleep(rng.uniform(0.0, jitter))
            wait(lambda: settled() >= n or bool(worker_of(daemon)["busy"]), "a busy worker", daemon)
            if settled() >= n:
                raise StormError(
                    f"all {n} settled before kill {k + 1} of {len(targets)}: nothing to kill"
                )
            now = worker_of(daemon)
            pid = now["pid"]
            if pid is None:
                raise StormError(f"kill {k + 1}: the worker has no pid ({now})")
            state = {
                "kill": k + 1,
                "target": target,
                "up_s": round(time.monotonic() - up, 2),
                "settled": settled(),
                "worker_busy": now["busy"],
                "pid": pid,
            }
            os.kill(pid, signal.SIGKILL)
            restart = wait(
                lambda p=pid: settled() >= n or worker_of(daemon)["pid"] not in (None, p),
                "the worker's restart",
                daemon,
            )
            up = time.monotonic()
            state["restart_s"] = round(restart, 2)
            storm.kills.append(state)
            print(f"  worker kill {k + 1}: {state}", flush=True)
        wait(lambda: settled() >= n, f"all {n} settled", daemon, max(WAIT_S, 10.0 * n))
        storm.wall_s = time.perf_counter() - dropped
        time.sleep(1.0)
        storm.service_pid_kept = daemon.proc.poll() is None and daemon.proc.pid == service
        final = worker_of(daemon)
        metrics = daemon.metrics()
        storm.worker_metrics = [
            line for line in metrics.splitlines() if line.startswith("artd_worker_")
        ]
        storm.final_worker = final
        deaths = re.search(rf"^{re.escape(DEATHS)} (\S+)$", metrics, re.M)
        storm.in_flight = int(float(deaths.group(1))) if deaths else 0
        storm.found_work = storm.in_flight
    finally:
        daemon.__exit__(None, None, None)
        storm.stop_code = daemon.proc.returncode if daemon.proc else None
        text = daemon.log.read_text(errors="replace")
        storm.solo_crashes = text.count("solo crash")
        storm.worker_lines = representative(text)


def join_logs(logs: list[Path], into: Path) -> str:
    """The logs of every start, in order, in one file; their text."""
    parts = [
        f"==== start {i}: {log.name} ====\n{log.read_text(errors='replace')}"
        for i, log in enumerate(logs)
        if log.exists()
    ]
    text = "\n".join(parts)
    into.write_text(text)
    return text


def representative(text: str, each: int = 2) -> list[str]:
    """A few log lines of a worker loss, in log order: the first ``each`` of deaths,
    restarts and retries."""
    lines = text.splitlines()
    chosen: set[int] = set()
    for word in ("died", "restart", "retrying"):
        found = [i for i, line in enumerate(lines) if word in line and i not in chosen]
        chosen.update(found[:each])
    return [lines[i] for i in sorted(chosen)]


# --- the report ----------------------------------------------------------------------------


def check(storm: Storm, kills: int) -> None:
    book = storm.ledger
    for key in (
        "lost",
        "duplicated",
        "quarantined",
        "not_archived",
        "archive_differs",
        "output_of_another_input",
        "left_in_inbox",
        "left_in_work",
        "temporary_files",
    ):
        if book[key]:
            storm.failures.append(f"{key}: {len(book[key])} ({book[key][:5]})")
    if len(storm.kills) < kills:
        storm.failures.append(f"only {len(storm.kills)} of {kills} kills")
    if storm.service_pid_kept is False:
        storm.failures.append("the service did not keep its pid")
    if storm.stop_code != 0:
        storm.failures.append(f"the daemon's SIGTERM stop exited {storm.stop_code}")


def table(storms: list[Storm]) -> str:
    rows = [
        "| pattern | files | kills | kills finding work | in flight | lost | duplicated | "
        "quarantined | solo crashes | drop to settled | ledger |",
        "|---|--:|--:|--:|---|--:|--:|--:|--:|--:|---|",
    ]
    for s in storms:
        what = "claims resumed" if s.pattern == "service" else "worker deaths (signal)"
        rows.append(
            f"| {s.pattern} | {s.files} | {len(s.kills)} | {s.found_work} | {s.in_flight} {what} | "
            f"{len(s.ledger.get('lost', []))} | {len(s.ledger.get('duplicated', []))} | "
            f"{len(s.ledger.get('quarantined', []))} | {s.solo_crashes} | {s.wall_s:.1f} s | "
            f"{'ok' if not s.failures else 'FAILED'} |"
        )
    return "\n".join(rows)


def details(storm: Storm) -> str:
    lines = [f"### {storm.pattern}", ""]
    for state in storm.kills:
        lines.append(f"- {json.dumps(state)}")
    if storm.pattern == "worker":
        lines += [
            "",
            f"service pid kept: {storm.service_pid_kept}; worker at the end: "
            f"{json.dumps(storm.final_worker)}",
            "",
            "worker loss, from the log:",
        ]
        lines += ["", "```", *storm.worker_lines, "```", "", "metrics at the end:", "", "```"]
        lines += [*storm.worker_metrics, "```"]
    lines += ["", f"failures: {storm.failures or 'none'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studies.kill_storm", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--pattern", choices=("service", "worker", "both"), default="both")
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument(
        "--jitter", type=float, default=1.0, help="seconds (at most) from a kill's target to it"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "kill-storm")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    made = time.perf_counter()
    inputs = make_photos(out / f"photos-{args.files}-{args.seed}", args.files, args.seed)
    print(f"{len(inputs)} photos ready in {time.perf_counter() - made:.1f}s", flush=True)
    patterns = ("service", "worker") if args.pattern == "both" else (args.pattern,)
    storms = []
    for offset, pattern in enumerate(patterns):
        work = out / pattern
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        rng = random.Random(args.seed * 10 + offset)
        targets = kill_targets(args.files, args.kills, rng)
        run = service_storm if pattern == "service" else worker_storm
        print(f"{pattern}: {args.files} files, {args.kills} kills", flush=True)
        storm = Storm(pattern, args.files)
        try:
            run(
                storm,
                out / f"photos-{args.files}-{args.seed}",
                inputs,
                targets,
                args.jitter,
                rng,
                work,
            )
        except StormError as exc:
            storm.failures.append(str(exc))
            print(f"  {pattern}: {exc}", file=sys.stderr, flush=True)
        storm.ledger = ledger(work / "root", inputs)
        check(storm, args.kills)
        storms.append(storm)
        (out / f"kill-storm-{pattern}.json").write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, **asdict(storm)}, indent=1
            )
        )
    print()
    print(table(storms))
    for storm in storms:
        print()
        print(details(storm))
    print(f"\nwritten under {out}")
    return 1 if any(s.failures for s in storms) else 0


if __name__ == "__main__":
    raise SystemExit(main())
