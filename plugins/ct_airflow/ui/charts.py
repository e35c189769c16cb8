"""Small inline SVG charts: one per drift feature, with its threshold line and the runs that retrained.

No script, no external asset: the page stays readable offline and under a strict CSP.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

WIDTH, HEIGHT, PAD = 320, 96, 6


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def drift_chart(name: str, points: list[dict[str, Any]]) -> str:
    """An SVG line of ``score`` per run, a dashed threshold line, and a ring on each run that retrained.

    The y axis starts at 0 and ends a little above the larger of the highest score and threshold.
    """
    scores = [_finite(p.get("score")) for p in points]
    thresholds = [_finite(p.get("threshold")) for p in points]
    top = max([v for v in scores + thresholds if v is not None] or [1.0]) * 1.15 or 1.0
    step = (WIDTH - 2 * PAD) / max(len(points) - 1, 1)

    def x(i: int) -> float:
        return PAD + i * step

    def y(value: float) -> float:
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * value / top

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'data-feature="{escape(name)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(name)}: score per run (line), threshold (dashed), retrained runs (rings)</title>",
        f'<line class="axis" x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}"/>',
    ]

    def path(values: list[float | None]) -> str:
        """An SVG path through the known values; a gap (a run without one) starts a new segment."""
        return " ".join(
            f"{'M' if i == 0 or values[i - 1] is None else 'L'}{x(i):.1f},{y(v):.1f}"
            for i, v in enumerate(values)
            if v is not None
        )

    if threshold_path := path(thresholds):
        parts.append(f'<path class="threshold" d="{threshold_path}"><title>threshold</title></path>')
    if score_path := path(scores):
        parts.append(f'<path class="score" d="{score_path}"/>')
    for i, (point, score) in enumerate(zip(points, scores, strict=True)):
        if score is None:
            continue
        classes = [
            "point",
            *(["drifted"] if point.get("drifted") else []),
            *(["retrained"] if point.get("retrained") else []),
        ]
        label = f"{point.get('run_key')}: score {score:.4g}" + (" (drifted)" if point.get("drifted") else "")
        label += " - retrained" if point.get("retrained") else ""
        radius = 4.5 if point.get("retrained") else 2.5
        parts.append(
            f'<circle class="{" ".join(classes)}" cx="{x(i):.1f}" cy="{y(score):.1f}" r="{radius}">'
            f"<title>{escape(label)}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)
