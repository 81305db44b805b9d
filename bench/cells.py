"""Cells of the benchmark pages' tables: how a figure is written (bench/tables.py renders the pages)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

Json = dict[str, Any]



class NotMeasured(Exception):
    """A result exists but lacks what the table needs (it predates the measurement)."""


def num(x: float, digits: int = 3) -> str:
    """x with `digits` significant digits in plain notation (0.048, 2.41, 196; 1234 stays whole)."""
    return f"{x:.0f}" if abs(x) >= 10**digits else f"{x:.{digits}g}"


def lam(x: float) -> str:
    """An EWC lambda as the docs write it: 300, 3e3, 1e4."""
    return f"{x:.0f}" if x < 1000 else f"{x:.0e}".replace("e+0", "e").replace("e+", "e")


def pct(x: float) -> str:
    return f"{round(100 * x)}%"


def signed_points(x: float) -> str:
    return f"{100 * x:+.1f}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def seconds(x: float | None, digits: int = 2) -> str:
    """Seconds with `digits` significant digits; "-" for a figure not taken (None or NaN)."""
    return "-" if x is None or x != x else num(x, digits)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def at_least_floor(value: float, floor: float | None) -> str:
    """An estimate, or "<= floor" where it lies under what a perfectly calibrated model shows on as many samples
    (it cannot be told from perfect calibration: printing 0.000 would read as proven)."""
    return f"<= {floor:.3f}" if floor is not None and value <= floor else f"{value:.3f}"
