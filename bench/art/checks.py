"""The art benchmark's must-hold thresholds, checked against a run's figures (PASS or SHORT).

The benchmark measures; it never gates: a missed threshold is reported as SHORT with the
measured figure, and the command still exits 0.
"""

from __future__ import annotations

from typing import Any

# The must-hold figures; never loosen them here to make a run pass.
MAX_MOVEMENT = 0.8  # at the recommended strength
SPECIFIC_FROM = 0.4  # specificity must hold at every strength from here up
SSIM_STRENGTH, MIN_SSIM = 0.5, 0.6
NEAR_ZERO = 0.05  # strengths up to here must give the photo back
MAX_LEVELS_NEAR_ZERO = 3.0  # mean abs difference, 0..255 levels
MAX_COST_RATIO = 1.15  # per-step cost against the model-alone floor


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The must-hold thresholds against the measured figures."""
    rows = {r["strength"]: r for r in results["rows"]}
    out = []

    def check(name: str, measured: str, limit: str, passed: bool) -> None:
        out.append({"check": name, "measured": measured, "limit": limit, "pass": passed})

    for w in "ab":
        rec = results["recommended"][w]["strength"]
        m = rows[rec][f"movement_{w}"]
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
        if SSIM_STRENGTH in rows:
            v = rows[SSIM_STRENGTH][f"ssim_{w}"]
            check(f"blurred-luminance SSIM {w.upper()} at strength {SSIM_STRENGTH}",
                  f"{v:.3f}", f">= {MIN_SSIM}", v >= MIN_SSIM)  # fmt: skip
    near_zero = [s for s in sorted(rows) if s <= NEAR_ZERO]
    for s in near_zero:
        floor = results["floor"].get(f"{s:g}")
        seen = "" if floor is None else f" (oracle NL-means floor {floor['nl_means']:.2f})"
        for w in "ab":
            v = rows[s][f"levels_{w}"]
            check(f"strength {s:g}: mean abs levels {w.upper()}", f"{v:.2f}{seen}",
                  f"<= {MAX_LEVELS_NEAR_ZERO}", v <= MAX_LEVELS_NEAR_ZERO)  # fmt: skip
    for w in "ab":
        c = results["cost"][w]
        check(f"per-step cost {w.upper()} vs model-alone floor", f"{c['ratio']:.3f}x",
              f"<= {MAX_COST_RATIO}x", c["ratio"] <= MAX_COST_RATIO)  # fmt: skip
    return out
