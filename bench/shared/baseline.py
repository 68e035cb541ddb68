"""An earlier revision of this repository, extracted once to run its daemon beside today's
(``Daemon(..., tree=...)``): the before of a before-and-after measured in one run."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.shared.common import ROOT

# The last revision whose daemon ran the model in the service process (before the model
# workers: docs/spool.md, "Model workers").
DEFAULT_REV = "f070842"


def baseline_tree(rev: str) -> tuple[Path, str]:
    """(``build/baseline-REV``, the commit): ``rev`` extracted with ``git archive``, once."""
    commit = git("rev-parse", f"{rev}^{{commit}}")
    tree = ROOT / "build" / f"baseline-{commit[:7]}"
    if not (tree / ".complete").exists():
        shutil.rmtree(tree, ignore_errors=True)
        tree.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{tree.name}-", dir=tree.parent))
        archive = subprocess.Popen(
            ["git", "-C", str(ROOT), "archive", commit], stdout=subprocess.PIPE
        )
        subprocess.run(["tar", "-x", "-C", str(partial)], stdin=archive.stdout, check=True)
        assert archive.stdout is not None
        archive.stdout.close()
        if archive.wait() != 0:
            raise RuntimeError(f"git archive {commit} failed")
        (partial / ".complete").write_text(commit + "\n")
        partial.rename(tree)
    return tree, commit


def git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def run_header() -> dict[str, Any]:
    """What a side-by-side study records of the tree and machine it ran on: HEAD, whether the
    tree had uncommitted changes, the cores, the load, and whether bytecode is written (with
    ``PYTHONDONTWRITEBYTECODE`` every start of either tree compiles its modules)."""
    dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--"])
    return {
        "head": git("rev-parse", "HEAD"),
        "head_dirty": dirty.returncode != 0,
        "cpu_count": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "bytecode_written": not os.environ.get("PYTHONDONTWRITEBYTECODE"),
    }
