"""Suite member ``daemon``: the daemon end to end against the post's loop on the same files.

Files are dropped into the inbox until every output is committed, every durability step on
(the product's defaults).

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
            times = alternate(
                {
                    "post": lambda files=files: post_loop(
                        files[0].parent, work / "post-out", post_ckpt, log, run.device
                    )["loop_s"],
                    "daemon": lambda files=files, d=daemon: drop_and_wait(
                        d, files, work / "staging"
                    ),
                },
                run.pick(2, run.repeats),  # the post's loop dominates this family's time
            )
        n = len(files)
        r = {"images": n, "post_loop_ips": n / median(times["post"])}
        r["daemon_ips"] = n / median(times["daemon"])
        r["ratio"] = r["daemon_ips"] / r["post_loop_ips"]
        run.figures[f"daemon.{name}"] = r
        rows.append(
            [name, n, fmt(r["post_loop_ips"]), fmt(r["daemon_ips"]), f"**{r['ratio']:.2f}x**"]
        )
    headers = ["set", "files", "post loop img/s", "daemon img/s (drop -> all committed)", "ratio"]
    repeats = run.pick(2, run.repeats)
    run.report(
        f"### Daemon end to end vs the post's loop ({repeats} alternating repeats, medians; "
        "fsyncs on, originals archived)\n\n" + table(headers, rows) + "\n"
    )
