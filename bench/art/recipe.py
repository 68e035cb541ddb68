"""The art benchmark's two models: one documented recipe, trained once, cached by its hash.

A :class:`Recipe` names two procedural collections A and B (``core.synthetic.procedural``
styles), how they are drawn (count, size, seed, stroke period, supersampling, scene zoom) and
how a guided model is trained on each (the same ``python -m core.train`` arguments for both).
It is the shipped model's recipe (Makefile: ``default-model``), flag for flag, so that model A
*is* the default model and B its woodcut twin. :func:`build` draws the two training
collections and trains the two models side by side, one CPU thread each (as ``make
default-model`` trains), into ``CACHE/<recipe hash>/``; a second call with the same recipe
finds ``model-a.safetensors`` and ``model-b.safetensors`` there and trains nothing, so ``make
bench`` re-trains only when the recipe changes. (The hash covers the recipe, not the
trainer's code: after a change to ``core/train.py`` delete ``build/art-bench`` to re-train.)

Each collection has a *train* split (what the model sees, ``draw_size`` px crops of scenes
``scene_zoom`` times larger) and a *held-out* split, what the benchmark compares outputs
with (:func:`held_out`): drawn with another data-set seed (disjoint image seeds, see
``core.synthetic.procedural.write_dataset``), the same stroke period and supersampling, at a
model's working size and with the scene zoom that shows the training scenes' scale there
(:meth:`Recipe.held_out_zoom`: 1 for 64 px crops of 2.5x scenes seen at 160 px), so the
whole picture is a scene as a served output shows one. :func:`load_folder` reads a split
back; ``python -m bench.art.recipe`` builds and prints the paths.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.shared.common import ROOT as REPO
from bench.shared.common import child_env

CACHE = REPO / "build" / "art-bench"


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the two bench models (and so the cache key)."""

    style_a: str = "engraving"
    style_b: str = "woodcut"
    # The collections (Makefile: default-model): one data-set seed for both styles.
    count: int = 2000  # training images per collection (5% of them become the trainer's val)
    held_out: int = 48  # images per held-out split
    draw_size: int = 64
    stroke_period: float = 5.0  # in the written image's pixels
    supersample: int = 2
    scene_zoom: float = 2.5
    seed: int = 2026
    # The training (Makefile: default-model).
    objective: str = "guided"
    decoder: str = "upsample-full"
    image_size: int = 64
    epochs: int = 40
    batch_size: int = 16
    lr_step: int = 30
    guide_dropout: float = 0.1
    checkpoint_every: int = 5
    sample_every: int = 5
    strength: float = 0.5  # the checkpoint's recommended sampler settings
    steps: int = 12

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def data_seed(self, split: str) -> int:
        return self.seed if split == "train" else self.seed + 1

    def held_out_zoom(self, working: int) -> float:
        """The scene zoom that shows, at ``working`` px, the scale of the training scenes
        (``draw_size`` px crops of scenes ``scene_zoom`` times larger); at least 1."""
        return max(1.0, self.scene_zoom * self.draw_size / working)

    def draw_args(self, which: str, split: str, out: Path, working: int = 0) -> list[str]:
        """The ``python -m core.synthetic.procedural`` arguments of collection ``which``'s
        ``split``: the training one, or the held-out one at ``working`` px."""
        size, zoom, count = self.draw_size, self.scene_zoom, self.count
        if split != "train":
            size, zoom, count = working, self.held_out_zoom(working), self.held_out
        return [
            "--out", str(out), "--count", str(count), "--size", str(size),
            "--seed", str(self.data_seed(split)), "--style", style_of(self, which), "--flat",
            "--format", "png", "--stroke-period", f"{self.stroke_period:g}",
            "--supersample", str(self.supersample), "--scene-zoom", f"{zoom:g}",
        ]  # fmt: skip

    def train_args(self, data: Path, runs: Path) -> list[str]:
        """The ``python -m core.train`` arguments (the same for A and B)."""
        return [
            "-m", "core.train", "--data", str(data), "--out", str(runs),
            "--objective", self.objective, "--decoder", self.decoder,
            "--epochs", str(self.epochs), "--lr-step", str(self.lr_step),
            "--batch-size", str(self.batch_size), "--image-size", str(self.image_size),
            "--resize", "crop", "--perceptual-weight", "0", "--num-workers", "0",
            "--checkpoint-every", str(self.checkpoint_every),
            "--sample-every", str(self.sample_every), "--seed", str(self.seed),
            "--device", "cpu", "--guide-dropout", f"{self.guide_dropout:g}",
            "--sample-strength", f"{self.strength:g}", "--sample-steps", str(self.steps),
            "--no-tensorboard",
        ]  # fmt: skip


# The recipe the real benchmark runs: the shipped model's (about 25 minutes per model).
BENCH = Recipe()
# Seconds, for tests and --quick smoke runs: tiny collections, 32 px, a few epochs.
TINY = Recipe(count=24, held_out=8, draw_size=32, image_size=32, epochs=3, batch_size=8,
              lr_step=2)  # fmt: skip


@dataclass(frozen=True)
class Models:
    """What :func:`build` leaves: the two checkpoints and the cache folder."""

    recipe: Recipe
    folder: Path
    model_a: Path
    model_b: Path
    train_seconds: dict[str, float]


def style_of(recipe: Recipe, which: str) -> str:
    return {"a": recipe.style_a, "b": recipe.style_b}[which]


def _draw(args: list[str], folder: Path) -> Path:
    """Run ``python -m core.synthetic.procedural ARGS`` into ``folder`` (once: a ``.done``
    stamp holds the arguments)."""
    from core.synthetic import procedural

    done = folder / ".done"
    if not (done.exists() and done.read_text() == " ".join(args)):
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.redirect_stdout(io.StringIO()):  # its one "wrote N images" line
            procedural.main(args)
        done.write_text(" ".join(args))
    return folder


def training_split(recipe: Recipe, which: str, root: Path = CACHE) -> Path:
    """Collection ``which`` (a or b)'s training split, drawn if missing."""
    folder = root / recipe.digest() / "data" / which / "train"
    return _draw(recipe.draw_args(which, "train", folder), folder)


def held_out(recipe: Recipe, which: str, working: int, root: Path = CACHE) -> Path:
    """Collection ``which``'s held-out split at ``working`` px (module docstring), drawn if
    missing."""
    folder = root / recipe.digest() / "data" / which / f"held-out-{working}"
    return _draw(recipe.draw_args(which, "held-out", folder, working), folder)


def load_folder(folder: Path) -> list[np.ndarray]:
    """A collection's PNGs as HWC uint8 arrays, in name order."""
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]


def start_training(recipe: Recipe, data: Path, runs: Path, log: Path) -> subprocess.Popen:
    """Start training one model on ``data`` on one CPU thread (the shipped model's thread
    count, so the weights do not depend on the machine's cores)."""
    shutil.rmtree(runs, ignore_errors=True)
    with open(log, "ab") as err:
        return subprocess.Popen(
            [sys.executable, *recipe.train_args(data, runs)], cwd=REPO,
            env=child_env(OMP_NUM_THREADS="1"), stdout=err, stderr=err,
        )  # fmt: skip


def finish_training(started: subprocess.Popen, runs: Path, log: Path) -> Path:
    """Wait for a :func:`start_training` run; its best checkpoint."""
    if (code := started.wait()) != 0:
        raise RuntimeError(f"python -m core.train exited {code}; see {log}")
    (best,) = runs.glob("run-*/checkpoints/best.safetensors")
    return best


def build(recipe: Recipe = BENCH, root: Path = CACHE) -> Models:
    """The two models of ``recipe``, trained side by side (one thread each) unless cached."""
    folder = root / recipe.digest()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
    timing_file = folder / "train-seconds.json"
    seconds = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    missing = [w for w in ("a", "b") if not (folder / f"model-{w}.safetensors").exists()]
    data = {w: training_split(recipe, w, root) for w in missing}
    started = time.perf_counter()
    running = {
        w: start_training(recipe, data[w], folder / f"runs-{w}", folder / f"train-{w}.log")
        for w in missing
    }
    try:
        for which, process in running.items():
            model = folder / f"model-{which}.safetensors"
            runs, log = folder / f"runs-{which}", folder / f"train-{which}.log"
            shutil.copyfile(finish_training(process, runs, log), model.with_suffix(".tmp"))
            model.with_suffix(".tmp").replace(model)
            seconds[which] = time.perf_counter() - started
            timing_file.write_text(json.dumps(seconds))
    finally:
        for process in running.values():  # one failed: do not leave the other running
            if process.poll() is None:
                process.kill()
                process.wait()
    return Models(
        recipe, folder, folder / "model-a.safetensors", folder / "model-b.safetensors", seconds
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.art.recipe", description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="the seconds-long test recipe")
    parser.add_argument("--root", type=Path, default=CACHE, help="cache folder")
    args = parser.parse_args(argv)
    models = build(TINY if args.tiny else BENCH, args.root)
    print(json.dumps({"a": str(models.model_a), "b": str(models.model_b),
                      "train_seconds": models.train_seconds}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
