"""Study: the shipped model's before/after picture (``docs/default-model.jpg``, in the README and
the model card): scikit-image's photos through real ``artd process`` at the defaults.

``python -m bench.studies.before_after [--out docs/default-model.jpg]``: each photo is written as a
PNG into a scratch inbox, processed by ``artd process`` with no settings (the shipped model,
its recommended strength and steps, the default 512 px), and set beside its output, one row
per photo, each side scaled to ``PANEL`` px wide. Prints the seconds ``artd process`` took.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image

from bench.shared.common import ROOT, run_child
from bench.shared.photos import SHEET_PHOTOS, photo

PANEL = 320  # px: each side of a row
GAP = 6
PICTURE = ROOT / "docs" / "default-model.jpg"
LOG = ROOT / "build" / "before-after.log"  # artd process's log, kept for a failed run


def rows(outputs: Path, inputs: Path) -> list[tuple[Image.Image, Image.Image]]:
    """(photo, output) pairs, both scaled to PANEL px wide."""

    def scaled(path: Path) -> Image.Image:
        with Image.open(path) as img:
            img = img.convert("RGB")
            return img.resize((PANEL, round(img.height * PANEL / img.width)), Image.LANCZOS)

    return [(scaled(inputs / f"{n}.png"), scaled(outputs / f"{n}.png.png")) for n in SHEET_PHOTOS]


def compose(pairs: list[tuple[Image.Image, Image.Image]]) -> Image.Image:
    height = sum(max(a.height, b.height) for a, b in pairs) + GAP * (len(pairs) - 1)
    sheet = Image.new("RGB", (2 * PANEL + GAP, height), "white")
    top = 0
    for before, after in pairs:
        sheet.paste(before, (0, top))
        sheet.paste(after, (PANEL + GAP, top))
        top += max(before.height, after.height) + GAP
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studies.before_after", description=__doc__
    )
    parser.add_argument("--out", type=Path, default=PICTURE, help="the JPEG to write")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        inputs, outputs = Path(scratch) / "in", Path(scratch) / "out"
        inputs.mkdir()
        for name in SHEET_PHOTOS:
            Image.fromarray(photo(name)).save(inputs / f"{name}.png")
        LOG.parent.mkdir(parents=True, exist_ok=True)
        seconds, _ = run_child(["-m", "daemon.cli", "process", str(inputs), "--out", str(outputs)],
                               LOG)  # fmt: skip
        compose(rows(outputs, inputs)).save(args.out, quality=88, optimize=True)
    print(f"wrote {args.out}; artd process took {seconds:.1f} s for {len(SHEET_PHOTOS)} photos")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
