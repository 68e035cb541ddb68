"""The art benchmark's outputs: the markdown tables, the JSON figures and the pictures
(``bench.art.gallery``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.art.checks import checks, recommended_rows
from bench.art.gallery import gallery, model_card
from bench.shared.common import ROOT, fmt, table

DOCS = ROOT / "docs"


def _pair(row: dict[str, Any], key: str, digits: int) -> list[str]:
    return [fmt(row[f"{key}_{w}"], digits) for w in "ab"]


def figures_tables(results: dict[str, Any]) -> str:
    """Per strength: the style and content figures, then colour keep and cost."""
    styles = results["styles"]
    style_rows, keep_rows = [], []
    for r in results["rows"]:
        spec = [f"{r[f'd_{w}_own']:.3f} {'<' if r[f'specific_{w}'] else '>='} "
                f"{r[f'd_{w}_other']:.3f}" for w in "ab"]  # fmt: skip
        ssim = [f"{r[f'ssim_{w}']:.3f} / {r[f'ssim_portraits_{w}']:.3f}" for w in "ab"]
        chroma = [f"{r[f'chroma_{w}']:.1f} / {r[f'chroma_keep_{w}']:.2f}" for w in "ab"]
        s = f"{r['strength']:g}"
        style_rows.append([s, *_pair(r, "movement", 3), *spec, *ssim, *_pair(r, "levels", 2)])
        keep_rows.append([s, *chroma, *_pair(r, "levels_keep", 2), *_pair(r, "seconds", 2),
                          *_pair(r, "passes", 1)])  # fmt: skip
    return (
        table([
            "strength", f"movement A ({styles['a']})", f"movement B ({styles['b']})",
            "d(fA,A) vs d(fB,A)", "d(fB,B) vs d(fA,B)", "SSIM A all / portraits",
            "SSIM B all / portraits", "levels A", "levels B",
        ], style_rows)
        + "\n\nd = bench.art.style_signature distance to the collection's held-out split, every "
        f"image viewed at {results['view_size']} px on its shorter side; movement = d(output, "
        "collection) / d(photo, collection); SSIM of blurred luminance to the photo (mean); "
        "levels = mean abs difference to the photo (0..255).\n\n"
        + table([
            "strength", "chroma A own / keep", "chroma B own / keep", "levels A keep",
            "levels B keep", "s/image A", "s/image B", "passes/image A", "passes/image B",
        ], keep_rows)
        + "\n\nchroma = mean CIE Lab chroma difference to the photo (sqrt(da*^2 + db*^2)), with "
        "the model's own colours and with colour = keep; s/image = wall seconds per image "
        "through Inference.run_all; passes/image = the network's real passes per image."
    )  # fmt: skip


def floor_text(floor: dict[str, dict[str, float]]) -> str:
    """The near-zero floor (``bench.art.denoise_floor``) as a table, or nothing."""
    if not floor:
        return ""
    rows = [[s, fmt(f["noise_sd"], 1), fmt(f["none"], 2), fmt(f["tv"], 2), fmt(f["nl_means"], 2)]
            for s, f in floor.items()]  # fmt: skip
    return (
        "\n\nThe floor at low strength (bench.art.denoise_floor): the noise the sampler puts on "
        "the photo at the working size before the network sees it, and how close to the photo "
        "that comes back, brought to the output size with the photo's colours kept, with no "
        "denoising and with two classical denoisers tuned per photo against the clean photo "
        "(an oracle), in the same mean abs levels:\n\n"
        + table(["strength", "noise sd", "no denoising", "TV, oracle", "NL-means, oracle"], rows)
    )


def markdown(results: dict[str, Any], verdicts: list[dict[str, Any]]) -> str:
    styles, sig, rec = results["styles"], results["signature"], results["recommended"]
    verdict_rows = [[v["check"], v["measured"], v["limit"], "PASS" if v["pass"] else "SHORT"]
                    for v in verdicts]  # fmt: skip
    settings = ", ".join(f"{k} {v}" for k, v in rec["a"].items())
    return (
        f"### Art benchmark: A = {styles['a']}, B = {styles['b']}, {len(results['photos'])} "
        f"photos ({', '.join(results['photos'])}; portraits: {', '.join(results['portraits'])})"
        f" at the daemon's default output size {results['output_size']} px (fit)\n\n"
        f"Models' recommended settings (A): {settings}; CPU engine, {results['threads']} "
        f"thread(s), {results['precision']}.\n\n"
        + figures_tables(results)
        + f"\n\nSignature check (at {results['view_size']} px; collections drawn at the working "
        f"size {results['working_size']} px): d between two halves of A {sig['a_within']:.3f}, "
        f"of B {sig['b_within']:.3f}; d(A, B) {sig['a_held_vs_b_held']:.3f}, d(photos, A) "
        f"{sig['photos_vs_a']:.3f}, d(photos, B) {sig['photos_vs_b']:.3f}.\n\n"
        + table(["must hold", "measured", "limit", "verdict"], verdict_rows)
        + "\n\nCost at the recommended strength (reported, no threshold: the daemon bench "
        "measures the speed target): "
        + "; ".join(f"{w.upper()} {r[f'seconds_{w}']:.2f} s and {r[f'passes_{w}']:g} network "
                    f"passes per image" for w, r in recommended_rows(results).items())
        + "."
        + floor_text(results["floor"])
        + f"\n\nBench time {results['seconds']:.0f} s.\n"
    )  # fmt: skip


def write(results: dict[str, Any], out: Path) -> tuple[str, list[dict[str, Any]]]:
    """art-bench.md, art-bench.json, art-gallery.png and (with portraits) model-card.png
    into ``out``; (markdown, verdicts)."""
    out.mkdir(parents=True, exist_ok=True)
    verdicts = checks(results)
    text = markdown(results, verdicts)
    (out / "art-bench.md").write_text(text)
    figures = {k: v for k, v in results.items() if not k.startswith("_")}
    (out / "art-bench.json").write_text(json.dumps({**figures, "checks": verdicts}, indent=2))
    gallery(results, out / "art-gallery.png")
    model_card(results, out / "model-card.png")
    return text, verdicts
