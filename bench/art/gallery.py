"""The art benchmark's pictures: the gallery of every output, and the model card's portrait.

Both show the outputs as a person gets them (the daemon's default output size): the gallery
at half that size per tile (:data:`TILE`), large enough to judge strokes and faces, the model
card at full size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE = 256  # px: each gallery picture fits a square this size (half a 512 px output)
GAP, LABEL_W, HEAD = 4, 150, 24
GALLERY_LIMIT = 4_000_000  # bytes: the README shows it, the repository keeps it
FONT_SIZE = 15


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(FONT_SIZE)


def _fit(image: np.ndarray, box: int) -> Image.Image:
    """``image`` scaled (LANCZOS, aspect kept) so its longer side is ``box``."""
    img = Image.fromarray(image)
    ratio = box / max(img.size)
    if ratio == 1:
        return img
    size = (max(1, round(img.width * ratio)), max(1, round(img.height * ratio)))
    return img.resize(size, Image.Resampling.LANCZOS)


def fitted_height(image: np.ndarray, box: int) -> int:
    """The height of ``image`` once :func:`_fit` to ``box``."""
    h, w = image.shape[:2]
    return max(1, round(h * box / max(h, w)))


class Sheet:
    """A white canvas of labelled rows and headed columns, each picture fitted into its
    cell (``cell`` wide, its row's height high) and centred there."""

    def __init__(
        self, columns: Sequence[str], rows: Sequence[str], cell: int, heights: Sequence[int]
    ) -> None:
        self.cell, self.font = cell, _font()
        self.tops = [HEAD + sum(heights[:i]) + i * GAP for i in range(len(heights))]
        self.heights = list(heights)
        size = (LABEL_W + len(columns) * (cell + GAP), HEAD + sum(heights) + len(rows) * GAP)
        self.canvas = Image.new("RGB", size, (255, 255, 255))
        draw = ImageDraw.Draw(self.canvas)
        for j, text in enumerate(columns):
            draw.text((LABEL_W + j * (cell + GAP) + 4, 4), text, fill=(0, 0, 0), font=self.font)
        for i, text in enumerate(rows):
            y = self.tops[i] + heights[i] // 2 - FONT_SIZE
            draw.multiline_text((4, y), text, fill=(0, 0, 0), font=self.font)

    def put(self, image: np.ndarray, row: int, column: int) -> None:
        img = _fit(image, self.cell)
        x = LABEL_W + column * (self.cell + GAP) + (self.cell - img.width) // 2
        self.canvas.paste(img, (x, self.tops[row] + (self.heights[row] - img.height) // 2))


def gallery(results: dict[str, Any], path: Path) -> None:
    """Rows: each photo through A, then through B; columns: the photo, then the strengths.
    Last row: each photo through A at its recommended strength with ``colour = keep``."""
    pictures, styles = results["_pictures"], results["styles"]
    strengths, names = results["strengths"], results["photos"]
    rec = results["recommended"]["a"]["strength"]
    labels = [f"{name}\n-> {w.upper()} {styles[w]}" for name in names for w in "ab"]
    keep_label = f"colour keep\nA at {rec:g}\n(columns:\nthe photos)"
    heights = [fitted_height(image, TILE) for image in pictures["photos"] for _ in "ab"]
    sheet = Sheet(["photo", *(f"strength {s:g}" for s in strengths)], [*labels, keep_label],
                  TILE, [*heights, max(heights)])  # fmt: skip
    for i, image in enumerate(pictures["photos"]):
        for k, w in enumerate("ab"):
            sheet.put(image, 2 * i + k, 0)
            for j, s in enumerate(strengths, start=1):
                sheet.put(pictures["outputs"][w][s][i], 2 * i + k, j)
    for i, image in enumerate(pictures["keep"]["a"][rec][: 1 + len(strengths)]):
        sheet.put(image, len(labels), i)
    save_small(sheet.canvas, path)


def model_card(results: dict[str, Any], path: Path) -> bool:
    """Each portrait at full output size: the photo, A's output and A's with ``colour =
    keep``, at A's recommended strength. False (nothing written) without portraits."""
    pictures, names = results["_pictures"], results["photos"]
    rec = results["recommended"]["a"]["strength"]
    portraits = [names.index(n) for n in results["portraits"]]
    if not portraits:
        return False
    cell = max(max(pictures["photos"][i].shape[:2]) for i in portraits)
    columns = ["photo", f"A ({results['styles']['a']}), strength {rec:g}", "A, colour keep"]
    heights = [fitted_height(pictures["photos"][i], cell) for i in portraits]
    sheet = Sheet(columns, [names[i] for i in portraits], cell, heights)
    for row, i in enumerate(portraits):
        for column, image in enumerate((pictures["photos"][i], pictures["outputs"]["a"][rec][i],
                                        pictures["keep"]["a"][rec][i])):  # fmt: skip
            sheet.put(image, row, column)
    sheet.canvas.save(path, optimize=True)
    return True


def save_small(image: Image.Image, path: Path) -> None:
    """PNG in full colour if it fits :data:`GALLERY_LIMIT`, else with an adaptive palette of
    as many colours as fit (textured cells compress poorly)."""
    image.save(path, optimize=True)
    for colours in (256, 128, 64):
        if path.stat().st_size <= GALLERY_LIMIT:
            return
        image.quantize(colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
