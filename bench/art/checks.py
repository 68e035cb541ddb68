"""The art benchmark's must-hold thresholds, checked against a run's figures (PASS or SHORT).

They hold at the daemon's default output size and the models' recommended settings (the
issue's must-holds). The benchmark measures; it never gates: a missed threshold is reported
as SHORT with the measured figure, and the command still exits 0. Seconds and network passes
per image are reported beside them, without a threshold: the speed target is the daemon
bench's.
"""

from __future__ import annotations

from typing import Any

# The must-hold figures; never loosen them here to make a run pass.
MAX_MOVEMENT = 0.7  # at the recommended strength
SPECIFIC_FROM = 0.4  # specificity must hold at every strength from here up
MIN_SSIM = 0.6  # blurred-luminance SSIM at the recommended strength, all photos and portraits
MAX_CHROMA_KEEP = 6.0  # with colour = keep: mean CIE Lab chroma difference to the photo
NEAR_ZERO = 0.05  # at this strength, with colour = keep, the photo comes back
FLOOR_FACTOR = 2.0  # ... within this many times the oracle NL-means floor (mean abs levels)


def recommended_rows(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each model's (a, b) row of figures at its recommended strength."""
    rows = {r["strength"]: r for r in results["rows"]}
    return {w: rows[results["recommended"][w]["strength"]] for w in "ab"}


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The must-hold thresholds against the measured figures."""
    rows = {r["strength"]: r for r in results["rows"]}
    at = recommended_rows(results)
    out = []

    def check(name: str, measured: str, limit: str, passed: bool) -> None:
        out.append({"check": name, "measured": measured, "limit": limit, "pass": passed})

    for w in "ab":
        rec, m = at[w]["strength"], at[w][f"movement_{w}"]
        check(f"movement {w.upper()} at recommended strength {rec:g}", f"{m:.3f}",
              f"<= {MAX_MOVEMENT}", m <= MAX_MOVEMENT)  # fmt: skip
    for w in "ab":
        high = [s for s in rows if s >= SPECIFIC_FROM]
        failed = [s for s in high if not rows[s][f"specific_{w}"]]
        measured = "all" if not failed else "fails at " + ", ".join(f"{s:g}" for s in failed)
        check(f"specificity {w.upper()} at every strength >= {SPECIFIC_FROM}",
              f"{len(high) - len(failed)}/{len(high)} ({measured})", "all",
              bool(high) and not failed)  # fmt: skip
    for w in "ab":
        rec = at[w]["strength"]
        for key, which in (("ssim", "all photos"), ("ssim_portraits", "portraits")):
            v = at[w][f"{key}_{w}"]
            check(f"blurred-luminance SSIM {w.upper()}, {which}, at strength {rec:g}",
                  f"{v:.3f}", f">= {MIN_SSIM}", v >= MIN_SSIM)  # fmt: skip
    for w in "ab":
        rec, v = at[w]["strength"], at[w][f"chroma_keep_{w}"]
        check(f"colour keep: chroma difference {w.upper()} at strength {rec:g}",
              f"{v:.2f} Lab", f"<= {MAX_CHROMA_KEEP:g} Lab", v <= MAX_CHROMA_KEEP)  # fmt: skip
    floor = results["floor"].get(f"{NEAR_ZERO:g}")
    if NEAR_ZERO in rows and floor is not None:
        limit = FLOOR_FACTOR * floor["nl_means"]
        for w in "ab":
            v = rows[NEAR_ZERO][f"levels_keep_{w}"]
            check(f"strength {NEAR_ZERO:g}, colour keep: mean abs levels {w.upper()}",
                  f"{v:.2f} (oracle NL-means floor {floor['nl_means']:.2f})",
                  f"<= {FLOOR_FACTOR:g} x floor = {limit:.2f}", v <= limit)  # fmt: skip
    return out
