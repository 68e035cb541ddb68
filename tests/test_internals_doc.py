"""docs/internals.md cannot drift: its layout tree is the tree on disk, and every module,
class and function it names exists where it says."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "internals.md"
# A tree line: indentation, a name (a folder ends in /), then two spaces and its role.
TREE_LINE = re.compile(r"^(?P<indent> *)(?P<name>[\w.]+/?)(?: {2,}(?P<role>.*))?$")
# A dotted name in backticks: `core.x`, `daemon.x.Y`, `bench.x.y()`, with or without call.
DOTTED = re.compile(r"`((?:core|daemon|bench)(?:\.\w+)+)(?:\(\))?`")
INDENT = 2


def layout_block(text: str) -> list[str]:
    """The lines of the first code block after the heading "Where things live"."""
    after = text.split("## Where things live", 1)[1]
    return after.split("```", 2)[1].splitlines()[1:]


def tree_paths(lines: list[str]) -> list[tuple[str, bool]]:
    """(path, is_folder) for each entry of the tree, paths built from the indentation."""
    stack: list[str] = []
    paths = []
    for line in lines:
        match = TREE_LINE.match(line)
        if match is None:
            continue  # a role's continuation line
        depth = len(match["indent"]) // INDENT
        name = match["name"]
        del stack[depth:]
        if len(stack) != depth:
            raise AssertionError(f"tree line indented past its folder: {line!r}")
        path = "/".join([*stack, name.rstrip("/")])
        paths.append((path, name.endswith("/")))
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
    return paths


def resolve(dotted: str) -> object:
    """Import the longest module prefix of ``dotted`` and look the rest up as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            found = getattr(found, attr)
        return found
    raise ModuleNotFoundError(dotted)


def test_the_tree_is_the_tree_on_disk() -> None:
    listed = tree_paths(layout_block(DOC.read_text()))
    missing = [path for path, folder in listed if not (ROOT / path).exists()]
    assert missing == [], f"internals.md lists what is not there: {missing}"
    named = {path for path, _ in listed}
    unlisted = sorted(
        str(path.relative_to(ROOT))
        for package in ("core", "daemon")
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__init__.py" and str(path.relative_to(ROOT)) not in named
    )
    assert unlisted == [], f"modules internals.md does not place: {unlisted}"


def test_every_named_module_class_and_function_exists() -> None:
    names = sorted(set(DOTTED.findall(DOC.read_text())))
    assert len(names) > 30, "the contracts section names the public API"
    broken = []
    for name in names:
        try:
            resolve(name)
        except (ImportError, AttributeError) as exc:
            broken.append(f"{name}: {exc}")
    assert broken == []


def test_the_tree_parser_follows_folders() -> None:
    lines = ["core/        the core", "  a.py       one", "  sub/", "    b.py     two", "c.py  x"]
    assert tree_paths(lines) == [
        ("core", True),
        ("core/a.py", False),
        ("core/sub", True),
        ("core/sub/b.py", False),
        ("c.py", False),
    ]


# An issue number cited in a comment or docstring: a reader of the repository cannot follow it.
ISSUE_CITATION = re.compile(r"\b[Ii]ssues? #?\d+")


def test_no_python_file_cites_an_issue_number() -> None:
    """Comments and docstrings point at the doc that explains a thing (docs/*.md), never at an
    issue number."""
    this = Path(__file__).resolve()
    cited = []
    for package in ("core", "daemon", "bench", "tests"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if path.resolve() == this and "ISSUE_CITATION = re.compile" in line:
                    continue  # the pattern itself
                if ISSUE_CITATION.search(line):
                    cited.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert cited == [], "issue numbers cited (point at the doc instead):\n" + "\n".join(cited)
