"""The art benchmark's outputs: the markdown table, the JSON figures and the gallery picture."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from bench.art.checks import checks
from bench.shared.common import ROOT, fmt, table

DOCS = ROOT / "docs"
GALLERY_LIMIT = 1_400_000  # bytes: the README shows it, the repository keeps it


def markdown(results: dict[str, Any], verdicts: list[dict[str, Any]]) -> str:
    styles = results["styles"]
    headers = ["strength", f"movement A ({styles['a']})", f"movement B ({styles['b']})",
               "d(fA,A) vs d(fB,A)", "d(fB,B) vs d(fA,B)", "SSIM A", "SSIM B",
               "levels A", "levels B"]  # fmt: skip
    rows = []
    for r in results["rows"]:
        spec = {w: f"{r[f'd_{w}_own']:.3f} {'<' if r[f'specific_{w}'] else '>='} "
                   f"{r[f'd_{w}_other']:.3f}" for w in "ab"}  # fmt: skip
        rows.append([f"{r['strength']:g}", f"{r['movement_a']:.3f}", f"{r['movement_b']:.3f}",
                     spec["a"], spec["b"], f"{r['ssim_a']:.3f}", f"{r['ssim_b']:.3f}",
                     fmt(r["levels_a"], 2), fmt(r["levels_b"], 2)])  # fmt: skip
    cost_rows = [
        [w.upper(), f"{c['size']} px, batch {c['batch']}, {c['steps']} steps "
         f"(strength {c['strength']:g}), {c['threads']} thread(s), {c['precision']}",
         fmt(c["sampler_ms"], 2), fmt(c["floor_ms"], 2), f"{c['ratio']:.3f}x"]
        for w, c in results["cost"].items()
    ]  # fmt: skip
    sig = results["signature"]
    verdict_rows = [[v["check"], v["measured"], v["limit"], "PASS" if v["pass"] else "SHORT"]
                    for v in verdicts]  # fmt: skip
    return (
        f"### Art benchmark: A = {styles['a']}, B = {styles['b']}, {len(results['photos'])} "
        f"photos ({', '.join(results['photos'])}) at {results['size']} px\n\n"
        + table(headers, rows)
        + "\n\nd = bench.art.style_signature distance to the collection's held-out split; "
        "movement = d(output, collection) / d(photo, collection); SSIM of blurred luminance "
        "to the photo (mean); levels = mean abs difference to the photo (0..255).\n\n"
        f"Signature check: d(A held-out, A train) {sig['a_held_vs_a_train']:.3f}, "
        f"d(B held-out, B train) {sig['b_held_vs_b_train']:.3f}, d(A, B) "
        f"{sig['a_held_vs_b_held']:.3f}, d(photos, A) {sig['photos_vs_a']:.3f}, d(photos, B) "
        f"{sig['photos_vs_b']:.3f}; samples from noise: d(noise_A, A) "
        f"{sig['noise_a_vs_a']:.3f}, d(noise_B, B) {sig['noise_b_vs_b']:.3f}.\n\n"
        + table(["model", "setting", "ms/image/step", "model-alone floor", "ratio"], cost_rows)
        + f"\n\n({results['cost']['a']['repeats']} alternating repeats, medians.)\n\n"
        + table(["must hold", "measured", "limit", "verdict"], verdict_rows)
        + floor_text(results["floor"])
        + f"\n\nBench time {results['seconds']:.0f} s.\n"
    )


def floor_text(floor: dict[str, dict[str, float]]) -> str:
    """The near-zero floor (``bench.art.denoise_floor``) as a table, or nothing."""
    if not floor:
        return ""
    rows = [[s, fmt(f["noise_sd"], 1), fmt(f["none"], 2), fmt(f["tv"], 2), fmt(f["nl_means"], 2)]
            for s, f in floor.items()]  # fmt: skip
    return (
        "\n\nThe floor at low strength (bench.art.denoise_floor): the noise the sampler puts on "
        "the photo before the network sees it, and how close to the photo that comes back "
        "with no denoising and with two classical denoisers tuned per photo against the clean "
        "photo (an oracle), in the same mean abs levels:\n\n"
        + table(["strength", "noise sd", "no denoising", "TV, oracle", "NL-means, oracle"], rows)
    )


def gallery(results: dict[str, Any], path: Path) -> None:
    """Rows: each photo through A, then through B; columns: the photo, then the strengths.
    Last two rows: samples from noise of A and of B."""
    pictures = results["_pictures"]
    strengths = results["strengths"]
    size = results["size"]
    zoom = max(1, 128 // size)
    cell, gap, label_w, head = size * zoom, 2, 96, 16
    columns = 1 + len(strengths)
    n_rows = 2 * len(pictures["photos"]) + 2
    canvas = Image.new("RGB", (label_w + columns * (cell + gap), head + n_rows * (cell + gap)),
                       (255, 255, 255))  # fmt: skip
    draw = ImageDraw.Draw(canvas)

    def put(image: np.ndarray, row: int, column: int) -> None:
        img = Image.fromarray(image).resize((cell, cell), Image.Resampling.NEAREST)
        canvas.paste(img, (label_w + column * (cell + gap), head + row * (cell + gap)))

    draw.text((label_w + 4, 2), "photo", fill=(0, 0, 0))
    for j, s in enumerate(strengths, start=1):
        draw.text((label_w + j * (cell + gap) + 4, 2), f"strength {s:g}", fill=(0, 0, 0))
    styles = results["styles"]
    for i, (name, image) in enumerate(zip(results["photos"], pictures["photos"], strict=True)):
        for k, w in enumerate("ab"):
            row = 2 * i + k
            y = head + row * (cell + gap) + cell // 2 - 6
            draw.text((4, y), f"{name}\n-> {w.upper()} {styles[w]}", fill=(0, 0, 0))
            put(image, row, 0)
            for j, s in enumerate(strengths, start=1):
                put(pictures["outputs"][w][s][i], row, j)
    for k, w in enumerate("ab"):
        row = 2 * len(pictures["photos"]) + k
        y = head + row * (cell + gap) + cell // 2 - 6
        draw.text((4, y), f"from noise\n{w.upper()} {styles[w]}", fill=(0, 0, 0))
        for j, image in enumerate(pictures["noise"][w][:columns]):
            put(image, row, j)
    save_small(canvas, path)


def save_small(image: Image.Image, path: Path) -> None:
    """PNG in full colour if it fits :data:`GALLERY_LIMIT`, else with an adaptive palette of
    as many colours as fit (textured cells compress poorly)."""
    image.save(path, optimize=True)
    for colours in (256, 128, 64):
        if path.stat().st_size <= GALLERY_LIMIT:
            return
        image.quantize(colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def write(results: dict[str, Any], out: Path) -> tuple[str, list[dict[str, Any]]]:
    """art-bench.md, art-bench.json and art-gallery.png into ``out``; (markdown, verdicts)."""
    out.mkdir(parents=True, exist_ok=True)
    verdicts = checks(results)
    text = markdown(results, verdicts)
    (out / "art-bench.md").write_text(text)
    figures = {k: v for k, v in results.items() if not k.startswith("_")}
    (out / "art-bench.json").write_text(json.dumps({**figures, "checks": verdicts}, indent=2))
    gallery(results, out / "art-gallery.png")
    return text, verdicts
