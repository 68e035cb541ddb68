"""Study: two checkpoints side by side: seconds per image through the product's inference path.

``python -m bench.studies.model_ab OLD.safetensors NEW.safetensors [--precision P] [--repeats N]``
runs four scikit-image photos, resized to 512x344 (the daemon's default size for a 3:2
photo), as one batch through ``core.runtime.img2img.Inference`` at each checkpoint's recommended
sampler settings, alternating the two ``repeats`` times on this machine, and prints the
medians and their ratio. Without ``--precision`` each engine picks its own, as the daemon
does; ``--precision fp32`` compares the networks' work alone. Use it before shipping a new
default model (``git show HEAD:core/assets/default.safetensors > old.safetensors``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.shared.common import median
from bench.shared.photos import SHEET_PHOTOS, photo

SIZE = (512, 344)


def batch() -> list[np.ndarray]:
    """The photos as HWC RGB uint8 (what the decoders give for an opaque photo), at SIZE."""
    return [np.asarray(Image.fromarray(photo(n)).resize(SIZE, Image.LANCZOS)) for n in SHEET_PHOTOS]


def main(argv: list[str] | None = None) -> int:
    from core.checkpoint import load_checkpoint
    from core.diffusion.sampler_settings import SamplerRequest
    from core.runtime.engine import Engine
    from core.runtime.img2img import Inference, OutputSettings

    parser = argparse.ArgumentParser(prog="python -m bench.studies.model_ab", description=__doc__)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--precision", help="force one precision on both (default: each picks)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    forced = {"precision": args.precision} if args.precision else {}
    pixels, hashes = batch(), [f"{i:064x}" for i in range(len(SHEET_PHOTOS))]
    runs = {}
    for name, path in (("old", args.old), ("new", args.new)):
        engine = Engine(load_checkpoint(path), device="cpu", **forced)
        runs[name] = (
            engine.precision,
            Inference(engine, OutputSettings(SIZE[0]), SamplerRequest()),
        )
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, (_, inference) in runs.items():
            started = time.perf_counter()
            inference.run(pixels, hashes)
            seconds[name].append((time.perf_counter() - started) / len(pixels))
    for name, (precision, _) in runs.items():
        print(f"{name}: {median(seconds[name]):.3f} s per image ({precision})")
    print(f"new / old: {median(seconds['new']) / median(seconds['old']):.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
