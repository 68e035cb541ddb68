"""A running daemon's ``/metrics``, parsed: every sample as ``name{labels}`` -> value."""

from __future__ import annotations

import re
import urllib.request

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) ([0-9.eE+-]+|NaN|[+-]Inf)$", re.M)


def scrape(port: int) -> dict[str, float]:
    """Every sample of ``http://127.0.0.1:PORT/metrics`` (comments skipped)."""
    url = f"http://127.0.0.1:{port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {name: float(value) for name, value in SAMPLE.findall(text)}


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    """How much one sample grew between two scrapes (0 for one that did not exist)."""
    return after.get(name, 0.0) - before.get(name, 0.0)
