"""An earlier revision of this repository, extracted once to run its daemon beside today's
(``Daemon(..., tree=...)``): the before of a before-and-after measured in one run."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

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
