"""Accuracy without labels, and with them: the numbers live monitoring judges the champion by.

**The label-free estimate** follows confidence-based performance estimation (NannyML's CBPE): if a
model's confidence is calibrated, the share of its answers that are right is the mean of its
calibrated confidences. ct calibrates the champion's top-class probability on held-out rows of
its own training data, where the truth is known (:func:`fit`): quantile bins of confidence, each
bin's accuracy at its mean confidence, joined piecewise-linearly and anchored at (0, 0) and (1, 1),
so a confidence outside the reference's range is mapped near the identity rather than to the
nearest bin. It then averages the calibrated confidences of the served answers (:func:`estimate`).

It means something only when the calibration holds on rows it did not see, so :func:`fit` fits on
half of the held-out rows and measures the expected calibration error (ECE) on the other half:
above ``monitor.max_calibration_error`` the estimate is reported as unreliable and triggers
nothing. Its known limit: a shift that changes which answers are right without changing the
model's confidence (concept shift) is invisible to it; the realized accuracy of late labels is not.

**Realized accuracy** is counted from late labels, with Wilson score intervals (:func:`wilson`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Z95 = 1.959963984540054


def wilson(correct: int, rows: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (0, 1) without rows."""
    if rows == 0:
        return 0.0, 1.0
    p = correct / rows
    centre = (p + z * z / (2 * rows)) / (1 + z * z / rows)
    half = z * math.sqrt(p * (1 - p) / rows + z * z / (4 * rows * rows)) / (1 + z * z / rows)
    return max(0.0, centre - half), min(1.0, centre + half)


def _edges(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Quantile bin edges over [0, 1]: equal counts per bin, since confidences crowd near 1."""
    inner = np.unique(np.quantile(confidence, np.linspace(0, 1, bins + 1)[1:-1])) if len(confidence) else np.zeros(0)
    return np.concatenate([[0.0], inner, [1.0 + 1e-9]])


def _bin_of(confidence: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, len(edges) - 2)


def _table(confidence: np.ndarray, correct: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: its rows, their mean confidence and the share of them that are right."""
    which = _bin_of(confidence, edges)
    counts = np.bincount(which, minlength=len(edges) - 1)
    mean = np.bincount(which, weights=confidence, minlength=len(edges) - 1) / np.maximum(counts, 1)
    right = np.bincount(which, weights=correct.astype(np.float64), minlength=len(edges) - 1) / np.maximum(counts, 1)
    return counts, mean, right


def calibrated(confidence: np.ndarray, points: tuple[list[float], list[float]]) -> np.ndarray:
    """Confidences through a calibration map: ``points`` are (mean confidence, accuracy) of its bins."""
    xs, ys = points
    return np.interp(confidence, [0.0, *xs, 1.0], [0.0, *ys, 1.0])


def _points(confidence: np.ndarray, correct: np.ndarray, bins: int) -> tuple[list[float], list[float]]:
    counts, mean, right = _table(confidence, correct, _edges(confidence, bins))
    used = counts > 0
    return mean[used].tolist(), right[used].tolist()


def calibration_error(confidence: np.ndarray, correct: np.ndarray, predicted: np.ndarray, bins: int) -> float:
    """Expected calibration error of ``predicted`` (calibrated confidences) against ``correct``, in quantile bins."""
    which = _bin_of(confidence, _edges(confidence, bins))
    total = 0.0
    for b in np.unique(which):
        rows = which == b
        total += rows.sum() * abs(float(predicted[rows].mean()) - float(correct[rows].mean()))
    return total / max(len(confidence), 1)


def fit(confidence: np.ndarray, correct: np.ndarray, bins: int, max_error: float) -> dict[str, Any]:
    """A calibration map from held-out rows (top-class probability, right or not), and whether it holds.

    The map is fitted on the even rows and checked on the odd ones (ECE there); the map that is
    kept is then refitted on every row. ``reliable`` is the check against ``max_error``.
    """
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, bool)
    odd = confidence[1::2]
    half = _points(confidence[0::2], correct[0::2], bins)
    held_out_error = calibration_error(odd, correct[1::2], calibrated(odd, half), bins) if len(odd) else 1.0
    raw_error = calibration_error(confidence, correct, confidence, bins)
    xs, ys = _points(confidence, correct, bins)
    return {
        "rows": len(confidence),
        "accuracy": float(correct.mean()) if len(correct) else None,
        "mean_confidence": float(confidence.mean()) if len(confidence) else None,
        "bin_confidence": xs,
        "bin_accuracy": ys,
        "ece_uncalibrated": float(raw_error),
        "ece_held_out": float(held_out_error),
        "max_calibration_error": max_error,
        "reliable": bool(len(confidence) >= 2 * bins and held_out_error <= max_error),
    }


def estimate(confidence: np.ndarray, calibration: dict[str, Any]) -> dict[str, Any]:
    """Expected accuracy of answers with these confidences, through ``calibration``, with a 95% interval.

    The interval counts the answers' own randomness (each is right with its calibrated probability),
    not the calibration's: a Poisson-binomial variance, normal approximation.
    """
    confidence = np.asarray(confidence, np.float64)
    if not len(confidence):
        return {"rows": 0, "accuracy": None, "low": None, "high": None}
    p = calibrated(confidence, (calibration["bin_confidence"], calibration["bin_accuracy"]))
    mean = float(p.mean())
    half = Z95 * math.sqrt(float((p * (1 - p)).sum())) / len(p)
    return {"rows": len(p), "accuracy": mean, "low": max(0.0, mean - half), "high": min(1.0, mean + half),
            "mean_confidence": float(confidence.mean())}  # fmt: skip
