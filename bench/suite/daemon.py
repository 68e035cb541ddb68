"""Suite member ``daemon``: the daemon end to end against the post's loop on the same files.

Files are dropped into the inbox until every output is committed, every durability step on
(the product's defaults), twice: as fresh copies, whose images wait the default
``sidecar_wait_seconds`` for a sidecar, and with their modification times kept, which the
daemon takes at once.

A drop is a rename from a staging folder on the same filesystem (instant and complete, as a
well-behaved uploader does), so the clock measures the daemon, not our copying.
"""

from __future__ import annotations

from bench.post.run import post_loop
from bench.shared.common import Run, alternate, bench_checkpoints, fmt, median, table
from bench.shared.daemon_harness import Daemon, drop_and_wait
from bench.shared.datasets import photo_mix, small_set


def bench(run: Run) -> None:
    ours_ckpt, post_ckpt = bench_checkpoints(run.out)
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
            runners = {
                "post": lambda files=files: post_loop(
                    files[0].parent, work / "post-out", post_ckpt, log, run.device
                )["loop_s"],
                # Fresh copies: each image waits the default 1 s for a sidecar.
                "daemon": lambda files=files, d=daemon: drop_and_wait(d, files, work / "staging"),
                # The same files with their modification times kept: taken at once.
                "daemon_kept": lambda files=files, d=daemon: drop_and_wait(
                    d, files, work / "staging", keep_mtimes=True
                ),
            }
            # The post's loop dominates this family's time.
            times = alternate(runners, run.pick(2, run.repeats))
        n = len(files)
        r = {"images": n, "post_loop_ips": n / median(times["post"])}
        r["daemon_ips"] = n / median(times["daemon"])
        r["ratio"] = r["daemon_ips"] / r["post_loop_ips"]
        r["daemon_kept_ips"] = n / median(times["daemon_kept"])
        r["ratio_kept"] = r["daemon_kept_ips"] / r["post_loop_ips"]
        run.figures[f"daemon.{name}"] = r
        rows.append(
            [name, n, fmt(r["post_loop_ips"]), fmt(r["daemon_ips"]), f"**{r['ratio']:.2f}x**",
             fmt(r["daemon_kept_ips"]), f"**{r['ratio_kept']:.2f}x**"]
        )  # fmt: skip
    headers = ["set", "files", "post loop img/s", "daemon img/s, fresh copies", "ratio",
               "daemon img/s, mtimes kept", "ratio"]  # fmt: skip
    repeats = run.pick(2, run.repeats)
    run.report(
        f"### Daemon end to end vs the post's loop ({repeats} alternating repeats, medians; "
        "fsyncs on, originals archived; drop -> all committed)\n\n"
        "Fresh copies (`cp`, a scanner) wait `sidecar_wait_seconds` (1 s) for a sidecar; "
        "copies that keep their modification times (`rsync -a`, `cp -p`, Finder) do not.\n\n"
        + table(headers, rows)
        + "\n"
    )
