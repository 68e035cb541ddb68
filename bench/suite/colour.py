"""Suite member ``colour``: the cost of colour management, profiles and labels on a photo mix.

One checkpoint, one process (CPU), ``daemon.oneshot.process`` on scikit-image's photos saved
as the mix artists drop (untagged sRGB JPEG, Adobe RGB PNG, Display P3 PNG, CMYK JPEG, RGBA
PNG), with everything on (the defaults: conversion by profile, sRGB profile, XMP/EXIF label)
against everything off (PIL's plain conversions, no profile, private keys only), alternating,
medians. Transparency is kept in both (it is a feature, not the cost measured). Both wall
clock and the process's CPU seconds are reported: on a shared machine the wall clock moves by
more than the cost, the CPU seconds do not. Target: under 5% of throughput.
``python -m bench.suite.colour [--quick]``, or ``python -m bench --only colour``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.shared.colour_kit import ADOBE_RGB, CMYK_PROFILE, convert, display_p3_profile
from bench.shared.common import DEFAULT_OUT, Run, alternate, bench_checkpoints, fmt, median, table
from bench.shared.photos import COLOUR_PHOTOS, photo

TARGET = 0.05


def photo_mix(folder: Path, count: int) -> list[Path]:
    """``count`` files cycling through the photos and the five kinds (module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    p3 = display_p3_profile()
    files = []
    for i in range(count):
        img = Image.fromarray(photo(COLOUR_PHOTOS[i % len(COLOUR_PHOTOS)])).convert("RGB")
        kind = i % 5
        path = folder / f"{i:04d}"
        if kind == 0:
            img.save(path := path.with_suffix(".jpg"), quality=90)
        elif kind in (1, 2):
            out = convert(img, ADOBE_RGB if kind == 1 else p3)
            out.save(path := path.with_suffix(".png"), icc_profile=out.info["icc_profile"])
        elif kind == 3:
            out = convert(img, CMYK_PROFILE, "CMYK")
            out.save(
                path := path.with_suffix(".jpg"), quality=90, icc_profile=out.info["icc_profile"]
            )
        else:
            alpha = np.tile(np.linspace(0, 255, img.width).astype(np.uint8), (img.height, 1))
            rgba = np.dstack([np.asarray(img), alpha])
            Image.fromarray(rgba, "RGBA").save(path := path.with_suffix(".png"))
        files.append(path)
    return files


def bench(run: Run) -> None:
    from core.images.colour import ColourPolicy
    from core.runtime.engine import Engine
    from core.runtime.img2img import OutputSettings
    from daemon.oneshot import process

    missing = [str(p) for p in (ADOBE_RGB, CMYK_PROFILE) if not p.exists()]
    if missing:  # the tests skip alike: the mix needs real profiles (colord-data, libgs-common)
        run.figures["colour"] = {"skipped": f"missing {', '.join(missing)}"}
        run.report(f"### Colour management + labels: not measured (missing {', '.join(missing)}; "
                   "install colord-data and libgs-common)\n")  # fmt: skip
        return
    checkpoint, _ = bench_checkpoints(run.out)
    files = photo_mix(run.out / "colour-mix", run.pick(20, 60))
    engine = Engine.from_path(checkpoint, device="cpu")
    settings = {
        "on": OutputSettings(256),
        "off": OutputSettings(256, colour=ColourPolicy(manage=False), label=False,
                              embed_profile=False),
    }  # fmt: skip

    cpu: dict[str, list[float]] = {name: [] for name in settings}

    def runner(name: str) -> float:
        out = run.out / f"colour-out-{name}"
        shutil.rmtree(out, ignore_errors=True)
        started, started_cpu = time.perf_counter(), time.process_time()
        report = process([files[0].parent], out, engine, size=256, resize="fit", fmt="png",
                         output=settings[name], progress=False)  # fmt: skip
        cpu[name].append(time.process_time() - started_cpu)
        assert not report.rejected, report.rejected
        return time.perf_counter() - started

    runner("on")  # warm-up: transforms, first-shape costs
    cpu["on"].clear()
    times = alternate({name: lambda n=name: runner(n) for name in settings}, run.repeats)
    n = len(files)
    on, off = median(times["on"]), median(times["off"])
    on_cpu, off_cpu = median(cpu["on"]), median(cpu["off"])
    cost, cpu_cost = on / off - 1, on_cpu / off_cpu - 1
    run.figures["colour"] = {
        "images": n, "on_ips": n / on, "off_ips": n / off, "cost": cost,
        "on_cpu_s": on_cpu, "off_cpu_s": off_cpu, "cpu_cost": cpu_cost,
    }  # fmt: skip
    rows = [[n, fmt(n / off), fmt(n / on), f"{cost:+.1%}", fmt(off_cpu, 2), fmt(on_cpu, 2),
             f"**{cpu_cost:+.1%}**", "yes" if cpu_cost < TARGET else "no"]]  # fmt: skip
    headers = ["photos", "off img/s", "on img/s", "wall cost", "off CPU s", "on CPU s",
               "CPU cost", f"under {TARGET:.0%}"]  # fmt: skip
    run.report(f"### Colour management + labels, CPU ({run.repeats} alternating repeats, "
               f"medians)\n\n{table(headers, rows)}\n")  # fmt: skip
    stages = stage_costs(files, settings, run.repeats)
    per_image = off_cpu * 1000 / n  # the whole pipeline's CPU ms per image, everything off
    extra = sum(stages["on"][k] - stages["off"][k] for k in ("decode", "encode"))
    run.figures["colour.stages"] = {**stages, "pipeline_ms": per_image, "extra_ms": extra}
    rows = [[k, fmt(stages["off"][k], 2), fmt(stages["on"][k], 2)] for k in ("decode", "encode")]
    rows.append(["extra, share of the pipeline's CPU", "", f"**{extra / per_image:+.1%}**"])
    run.report(f"CPU ms per image (one thread) against {fmt(per_image, 1)} ms per image for the "
               f"whole pipeline:\n\n{table(['stage', 'off', 'on'], rows)}\n")  # fmt: skip


def stage_costs(files: list[Path], settings: dict, repeats: int) -> dict[str, dict[str, float]]:
    """CPU ms per image of decode and of encode for each setting, one thread: the settings
    alternate file by file (a shared machine's drift hits both alike), medians of the sums."""
    from core.images import loading
    from core.outputs.result import encode_output

    meta = {"ai_generated": "true", "Software": "artd", "artd:model": "bench",
            "artd:input_sha256": "0" * 64, "artd:settings": "{}"}  # fmt: skip
    datas = [p.read_bytes() for p in files]
    costs: dict[str, dict[str, list[float]]] = {n: {"decode": [], "encode": []} for n in settings}
    for _ in range(repeats):
        sums = {n: {"decode": 0.0, "encode": 0.0} for n in settings}
        for data in datas:
            for name, out in settings.items():
                started = time.process_time()
                image, origin = loading.load_with_origin(
                    data, out.size, colour=out.colour, keep_alpha=out.keep_alpha
                )
                middle = time.process_time()
                encode_output(image, meta, out, origin)
                sums[name]["decode"] += middle - started
                sums[name]["encode"] += time.process_time() - middle
        for name, stage in sums.items():
            for key, total in stage.items():
                costs[name][key].append(total * 1000 / len(datas))
    return {n: {k: median(v) for k, v in c.items()} for n, c in costs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.suite.colour", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    bench(Run(out=args.out, quick=args.quick))


if __name__ == "__main__":
    main()
