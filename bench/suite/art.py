"""Suite member ``art``: the art benchmark (``bench.art``) inside ``python -m bench``.

Quick: the tiny recipe, trained into the run's folder, 2 photos and 4 strengths. Full: the
bench recipe (cached in build/art-bench by its hash), results and gallery into docs/.
"""

from __future__ import annotations

from bench.art.evaluate import Config, evaluate, quick_config
from bench.art.recipe import BENCH, CACHE, TINY, build
from bench.art.report import DOCS, write
from bench.shared.common import Run


def bench(run: Run) -> None:
    recipe = TINY if run.quick else BENCH
    root = run.out / "art-models" if run.quick else CACHE
    models = build(recipe, root)
    out = run.out / "art" if run.quick else DOCS
    config = Config(models.model_a, models.model_b, recipe, root, out)
    results = evaluate(quick_config(config) if run.quick else config)
    text, verdicts = write(results, out)
    run.figures["art"] = {k: v for k, v in results.items() if not k.startswith("_")}
    run.figures["art"]["checks"] = verdicts
    run.report(text)
