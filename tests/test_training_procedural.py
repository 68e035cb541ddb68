"""``python -m core.synthetic.procedural --style``: the art styles as training collections, one
style or a mix, next to the procedural ones (real files, small images)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.synthetic import art_styles, procedural

REPO = Path(__file__).resolve().parents[1]


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def test_the_cli_writes_an_engraving_collection(tmp_path):
    out = tmp_path / "engravings"
    result = subprocess.run(
        [sys.executable, "-m", "core.synthetic.procedural", "--out", str(out), "--count", "3",
         "--size", "24", "--seed", "2", "--style", "engraving", "--flat"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote 3 images (engraving)" in result.stdout
    files = images_in(out)
    assert [p.name for p in files] == [f"engraving-{i:05d}.jpg" for i in range(3)]
    for i, path in enumerate(files):
        with Image.open(path) as image:
            assert image.size == (24, 24) and image.mode == "RGB"
            drawn = np.asarray(art_styles.render("engraving", 2 * 1_000_003 + i, 24, 24))
            assert np.abs(np.asarray(image).astype(int) - drawn).mean() < 12  # JPEG's loss


def test_a_mix_cycles_through_its_styles_and_art_names_all_five(tmp_path):
    assert procedural.main(["--out", str(tmp_path / "mix"), "--count", "4", "--size", "16",
                            "--style", "engraving, woodcut", "--format", "png"]) == 0  # fmt: skip
    mix = images_in(tmp_path / "mix")
    assert [p.parent.name for p in mix] == ["engraving", "engraving", "woodcut", "woodcut"]

    assert procedural.main(["--out", str(tmp_path / "art"), "--count", "5", "--size", "16",
                            "--style", "art", "--vary-aspect"]) == 0  # fmt: skip
    assert {p.parent.name for p in images_in(tmp_path / "art")} == set(art_styles.STYLES)

    both = procedural.parse_styles("procedural,pointillism")
    assert both == (*procedural.STYLES, "pointillism")


def test_default_collection_is_the_procedural_styles_and_bad_names_are_refused(tmp_path, capsys):
    default = procedural.write_dataset(tmp_path / "a", 4, 16, seed=1, fmt="png")
    again = procedural.write_dataset(tmp_path / "b", 4, 16, seed=1, fmt="png",
                                     styles=procedural.STYLES)  # fmt: skip
    assert [p.read_bytes() for p in default] == [p.read_bytes() for p in again]
    assert {p.parent.name for p in default} == set(procedural.STYLES)

    with pytest.raises(SystemExit) as info:
        procedural.main(["--out", str(tmp_path / "c"), "--style", "engraving,etching"])
    assert info.value.code == 2
    assert "etching" in capsys.readouterr().err
    with pytest.raises(ValueError, match="choose from"):
        procedural.render("etching", 0, 16)
