"""The art benchmark's command line, ``python -m bench.art``: parse, build or take the two
models, evaluate, write the table, figures and gallery."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import bench.art
from bench.art.evaluate import Config, evaluate, quick_config
from bench.art.recipe import BENCH, CACHE, TINY, build
from bench.art.report import DOCS, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.art",
        description=bench.art.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model-a", type=Path, help="guided checkpoint trained on A")
    parser.add_argument("--model-b", type=Path, help="guided checkpoint trained on B")
    parser.add_argument("--train", action="store_true", help="build both from the recipe")
    parser.add_argument("--quick", action="store_true", help="2 photos, 4 strengths, tiny recipe")
    parser.add_argument("--recipe", choices=("bench", "tiny"),
                        help="recipe for --train and the collections "
                        "(default: tiny with --quick, else bench)")  # fmt: skip
    parser.add_argument("--style-a", help="collection A's style (default: the recipe's)")
    parser.add_argument("--style-b", help="collection B's style (default: the recipe's)")
    parser.add_argument("--models-root", type=Path, default=CACHE,
                        help="where --train and the collections are cached")  # fmt: skip
    parser.add_argument("--out", type=Path, default=DOCS, help="results and gallery")
    parser.add_argument("--precision", default="auto",
                        help="the engine's precision (auto: what it would serve)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.train == bool(args.model_a or args.model_b) or (
        not args.train and not (args.model_a and args.model_b)
    ):
        parser.error("give --model-a and --model-b, or --train")
    recipe = TINY if (args.recipe or ("tiny" if args.quick else "bench")) == "tiny" \
        else BENCH  # fmt: skip
    styles = {k: v for k, v in (("style_a", args.style_a), ("style_b", args.style_b)) if v}
    recipe = dataclasses.replace(recipe, **styles)
    model_a, model_b = args.model_a, args.model_b
    if args.train:
        started = time.perf_counter()
        models = build(recipe, args.models_root)
        model_a, model_b = models.model_a, models.model_b
        print(f"models ready in {time.perf_counter() - started:.0f} s "
              f"(training seconds: {models.train_seconds})", flush=True)  # fmt: skip
    config = Config(model_a, model_b, recipe, args.models_root, args.out,
                    precision=args.precision)  # fmt: skip
    results = evaluate(quick_config(config) if args.quick else config)
    text, _ = write(results, args.out)
    print(text, flush=True)
    return 0
