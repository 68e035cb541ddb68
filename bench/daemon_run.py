"""The daemon end to end: files dropped into the inbox until every output is committed, every
durability step on (the product's defaults), against the seed's loop on the same files.

A drop is a rename from a staging folder on the same filesystem (instant and complete, as a
well-behaved uploader does), so the clock measures the daemon, not our copying.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.common import ROOT, Run, alternate, bench_checkpoints, child_env, fmt, median, table
from bench.datasets import photo_mix, small_set
from bench.process import seed_loop


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Daemon:
    """``python -m daemon`` on ``root`` with the model the seed loop also uses (128 px stretch)."""

    def __init__(
        self, root: Path, checkpoint: Path, device: str = "cpu", *, fresh: bool = True,
        **settings: object,
    ) -> None:  # fmt: skip
        self.root = root
        self.fresh = fresh  # False: keep what is in root (a backlog placed before the start)
        self.port = free_port()
        env = {"ARTD_ROOT": str(root), "ARTD_CHECKPOINT": str(checkpoint), "ARTD_INSTANCE": "bench"}
        env |= {"ARTD_HTTP_PORT": str(self.port), "ARTD_SIZE": "128", "ARTD_RESIZE": "stretch"}
        env |= {"ARTD_DEVICE": device}
        env |= {f"ARTD_{k.upper()}": str(v) for k, v in settings.items()}
        self.env = child_env(**env)
        self.log = root.parent / f"{root.name}-daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Daemon:
        if self.fresh:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon"], cwd=ROOT, env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 120
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not start; see {self.log}")
            time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                return True
        except OSError:
            return False

    def status(self, key: str) -> int:
        """A line of /proc/PID/status in kB (VmHWM: peak resident memory, VmRSS: current)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def settled(self) -> int:
        """Outputs committed plus inputs quarantined (temporary names start with a dot)."""
        return count_files(self.root / "outbox") + count_files(self.root / "quarantine") // 2

    def reset(self) -> None:
        """Empty outbox and archive between repeats (not timed)."""
        for name in ("outbox", "archive"):
            for entry in os.scandir(self.root / name):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)


def count_files(folder: Path) -> int:
    total = 0
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            total += count_files(Path(entry.path))
        elif not entry.name.startswith("."):
            total += 1
    return total


def wait_settled(daemon: Daemon, n: int, timeout_s: float, poll_s: float = 0.02) -> float:
    """Block until ``n`` files are settled; returns the time.perf_counter() it was seen."""
    deadline = time.monotonic() + timeout_s
    while daemon.settled() < n:
        if time.monotonic() > deadline or (daemon.proc and daemon.proc.poll() is not None):
            raise RuntimeError(f"only {daemon.settled()}/{n} settled; see {daemon.log}")
        time.sleep(poll_s)
    return time.perf_counter()


def drop_and_wait(daemon: Daemon, files: list[Path], staging: Path) -> float:
    """Copy into staging (untimed), rename all into the inbox, wait for every output."""
    daemon.reset()
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in files:
        shutil.copyfile(path, staging / path.name)
    started = time.perf_counter()
    for path in files:
        os.rename(staging / path.name, daemon.root / "inbox" / path.name)
    done = wait_settled(daemon, len(files), timeout_s=600)
    quarantined = count_files(daemon.root / "quarantine")
    if quarantined:
        raise RuntimeError(f"{quarantined} files quarantined; see {daemon.log}")
    return done - started


def bench(run: Run) -> None:
    ours_ckpt, seed_ckpt = bench_checkpoints(run.out)
    work, log = run.out / "daemon", run.out / "daemon.log"
    rows = []
    sets = {
        "photos": photo_mix(run.out, run.pick(24, 200)),
        "small": small_set(run.out, run.pick(64, 300)),
    }
    for name, files in sets.items():
        # Staging must share the root's filesystem for the rename; it sits beside the root.
        root = work / f"root-{name}"
        with Daemon(root, ours_ckpt, run.device) as daemon:
            times = alternate(
                {
                    "seed": lambda files=files: seed_loop(
                        files[0].parent, work / "seed-out", seed_ckpt, log, run.device
                    )["loop_s"],
                    "daemon": lambda files=files, d=daemon: drop_and_wait(
                        d, files, work / "staging"
                    ),
                },
                run.pick(2, run.repeats),  # the seed's loop dominates this family's time
            )
        n = len(files)
        r = {"images": n, "seed_loop_ips": n / median(times["seed"])}
        r["daemon_ips"] = n / median(times["daemon"])
        r["ratio"] = r["daemon_ips"] / r["seed_loop_ips"]
        run.figures[f"daemon.{name}"] = r
        rows.append(
            [name, n, fmt(r["seed_loop_ips"]), fmt(r["daemon_ips"]), f"**{r['ratio']:.2f}x**"]
        )
    headers = ["set", "files", "seed loop img/s", "daemon img/s (drop -> all committed)", "ratio"]
    repeats = run.pick(2, run.repeats)
    run.report(
        f"### Daemon end to end vs the seed's loop ({repeats} alternating repeats, medians; "
        "fsyncs on, originals archived)\n\n" + table(headers, rows) + "\n"
    )
    bench_shipped(run)


def shipped_settings() -> dict[str, object]:
    """The daemon's own size and resize defaults, for :class:`Daemon` (which pins the seed
    loop's 128 px stretch): what a user running the shipped model gets."""
    from daemon.settings import DaemonSettings

    defaults = DaemonSettings.model_fields
    return {"size": defaults["size"].default, "resize": defaults["resize"].default}


def daemon_model(out: Path, which: str) -> tuple[Path, dict[str, object]]:
    """(checkpoint, :class:`Daemon` settings) for ``which``: "bench", the seeded one-pass
    model at the seed loop's 128 px, or "shipped", the default model at the daemon's own
    defaults."""
    if which == "bench":
        return bench_checkpoints(out)[0], {}
    import core

    return core.DEFAULT_CHECKPOINT, shipped_settings()


def bench_shipped(run: Run) -> None:
    """The model users actually run: the shipped checkpoint at the daemon's own defaults
    (output size, its recommended strength and steps), on the photo mix. Reported per image
    and per sampling step (network passes), since a denoise model's cost is the step count."""
    import core
    from core.checkpoint import load_checkpoint
    from core.diffusion.schedule import step_count

    meta = load_checkpoint(core.DEFAULT_CHECKPOINT).meta
    settings = shipped_settings()
    size = settings["size"]
    strength, steps = meta.sampler.get("strength", 0.5), int(meta.sampler.get("steps", 25))
    passes = max(1, step_count(strength, steps)) if meta.objective == "denoise" else 1
    files = photo_mix(run.out, run.pick(8, 48))
    work = run.out / "daemon-shipped"
    with Daemon(work / "root", core.DEFAULT_CHECKPOINT, run.device, **settings) as daemon:
        seconds = [drop_and_wait(daemon, files, work / "staging") for _ in range(run.pick(1, 2))]
    n, wall = len(files), median(seconds)
    r = {"images": n, "size": size, "passes": passes, "ips": n / wall}
    r["steps_per_s"] = r["ips"] * passes
    run.figures["daemon.shipped"] = r
    run.report(
        f"### The shipped model at the daemon's defaults ({meta.objective}, {size} px fit, "
        f"strength {strength}, {steps} steps = {passes} network passes per image)\n\n"
        + table(
            ["files", "images/s", "s per image", "sampling steps/s"],
            [[n, fmt(r["ips"], 2), fmt(1 / r["ips"], 2), fmt(r["steps_per_s"], 1)]],
        )
        + "\n"
    )
