"""Inline SVG charts for the report pages: no script and no external asset, so a page is one file that can be
mailed or archived with the decision it supported."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

SIZE, PAD = 240, 34  # the plot square and the margin for the axis labels
COLOURS = ("#888888", "#1f77b4", "#d62728", "#2ca02c")


def _xy(x: float, y: float) -> tuple[float, float]:
    """A point of the unit square in SVG coordinates (y grows downwards there)."""
    inner = SIZE - 2 * PAD
    return PAD + x * inner, SIZE - PAD - y * inner


def _frame(x_label: str, y_label: str) -> list[str]:
    (x0, y0), (x1, y1) = _xy(0, 0), _xy(1, 1)
    parts = [f"<rect x='{x0:.1f}' y='{y1:.1f}' width='{x1 - x0:.1f}' height='{y0 - y1:.1f}' fill='none' "
             "stroke='#444'/>"]
    for t in (0.0, 0.5, 1.0):
        tx, ty = _xy(t, 0)
        parts.append(f"<text x='{tx:.1f}' y='{ty + 14:.1f}' font-size='10' text-anchor='middle'>{t:g}</text>")
        lx, ly = _xy(0, t)
        parts.append(f"<text x='{lx - 4:.1f}' y='{ly + 3:.1f}' font-size='10' text-anchor='end'>{t:g}</text>")
    parts.append(f"<text x='{SIZE / 2:.1f}' y='{SIZE - 4}' font-size='11' text-anchor='middle'>"
                 f"{html.escape(x_label)}</text>")
    parts.append(f"<text x='10' y='{SIZE / 2:.1f}' font-size='11' text-anchor='middle' "
                 f"transform='rotate(-90 10 {SIZE / 2:.1f})'>{html.escape(y_label)}</text>")
    return parts


def line_chart(title: str, x_label: str, y_label: str, series: Mapping[str, Sequence[tuple[float, float]]],
               diagonal: bool = False, dots: bool = False) -> str:
    """Series of (x, y) points in [0, 1]² as lines (or dots), with a legend; `diagonal` draws y = x."""
    parts = _frame(x_label, y_label)
    if diagonal:
        (ax, ay), (bx, by) = _xy(0, 0), _xy(1, 1)
        parts.append(f"<line x1='{ax:.1f}' y1='{ay:.1f}' x2='{bx:.1f}' y2='{by:.1f}' stroke='#bbb' "
                     "stroke-dasharray='4 3'/>")
    for i, (name, points) in enumerate(series.items()):
        colour = COLOURS[(i + 1) % len(COLOURS)]
        xy = [_xy(min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)) for x, y in points]
        if dots:
            parts += [f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3' fill='{colour}'/>" for x, y in xy]
        elif xy:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
            parts.append(f"<polyline points='{path}' fill='none' stroke='{colour}' stroke-width='2'/>")
        parts.append(f"<text x='{PAD + 6}' y='{PAD + 14 + 13 * i}' font-size='11' fill='{colour}'>"
                     f"{html.escape(name)}</text>")
    return (f"<figure><svg xmlns='http://www.w3.org/2000/svg' width='{SIZE}' height='{SIZE}' role='img' "
            f"aria-label='{html.escape(title)}'>{''.join(parts)}</svg><figcaption>{html.escape(title)}"
            "</figcaption></figure>")


def _shade(value: float) -> str:
    """White (0) to deep blue (1), for accuracies."""
    v = min(max(value, 0.0), 1.0)
    r, g = int(255 - 224 * v), int(255 - 136 * v)
    return f"rgb({r},{g},{255 - int(75 * v)})"


def heatmap(title: str, rows: Sequence[str], columns: Sequence[str],
            values: dict[tuple[str, str], float]) -> str:
    """A table-shaped heatmap: one cell per (row, column) with its value written in it; missing cells blank."""
    cell_w = max(64, 7 * max((len(c) for c in columns), default=0) + 8)  # the widest column name fits
    cell_h, left, top = 22, 70, 24
    width, height = left + cell_w * len(columns) + 4, top + cell_h * len(rows) + 4
    parts = [f"<text x='{left + i * cell_w + cell_w / 2:.0f}' y='16' font-size='11' text-anchor='middle'>"
             f"{html.escape(c)}</text>" for i, c in enumerate(columns)]
    for j, row in enumerate(rows):
        y = top + j * cell_h
        parts.append(f"<text x='{left - 6}' y='{y + 15}' font-size='11' text-anchor='end'>{html.escape(row)}</text>")
        for i, column in enumerate(columns):
            value = values.get((row, column))
            if value is None:
                continue
            x = left + i * cell_w
            ink = "#fff" if value > 0.6 else "#000"
            parts.append(f"<rect x='{x}' y='{y}' width='{cell_w - 2}' height='{cell_h - 2}' fill='{_shade(value)}'>"
                         f"<title>{html.escape(row)} at {html.escape(column)}: {value:.3f}</title></rect>"
                         f"<text x='{x + cell_w / 2 - 1:.0f}' y='{y + 15}' font-size='11' text-anchor='middle' "
                         f"fill='{ink}' class='cell'>{value:.3f}</text>")
    return (f"<figure><svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
            f"aria-label='{html.escape(title)}'>{''.join(parts)}</svg><figcaption>{html.escape(title)}"
            "</figcaption></figure>")
