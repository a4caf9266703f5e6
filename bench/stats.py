"""Medians, percentiles and the table the benchmarks print."""

from __future__ import annotations

import statistics


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary(runs: list[float]) -> tuple[float, float, float]:
    """(median, min, max) over per-run figures."""
    return statistics.median(runs), min(runs), max(runs)


def row(name: str, runs: list[float], unit: str, anchor: float | None = None, fmt: str = "{:.2f}") -> str:
    med, lo, hi = summary(runs)
    spread = f"(min {fmt.format(lo)}, max {fmt.format(hi)}, n={len(runs)})"
    text = f"  {name:<52} {fmt.format(med):>9} {unit:<5} {spread}"
    if anchor:
        text += f"  ratio {med / anchor:.2f}x"
    return text
