"""``python -m bench.art``: the art benchmark's entry point (``bench.art.cli``)."""

from bench.art.cli import main

raise SystemExit(main())
