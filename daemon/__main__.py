"""``python -m daemon``: the same as ``artd run`` (daemon.cli parses it)."""

from __future__ import annotations

import sys

from daemon.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
