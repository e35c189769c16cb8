"""The statistics of an image that the manifest keeps and drift compares: its size and its pixel values.

Ingest computes them for every landed image, and the prediction service for every served one, on
the image turned upright and into the model's colour mode, before it is resized.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The columns :func:`statistics` fills (the manifest's, and the prediction log's).
COLUMNS = ("width", "height", "mean", "std", "min", "max", "bright")


def statistics(image: Any) -> dict[str, float | int]:
    """Size, mean, spread, range and share of bright pixels (>= 128) of a decoded 8-bit PIL image."""
    # One pass over the pixels: their histogram gives every statistic exactly (uint8 has 256 values).
    # PIL's, per band and summed, is NumPy's bincount over every value, four times faster, and lets
    # other threads run meanwhile (bincount holds the GIL).
    counts = np.asarray(image.histogram(), dtype=np.int64).reshape(-1, 256).sum(axis=0)
    values = np.arange(256, dtype=np.float64)
    total = max(int(counts.sum()), 1)
    mean = float(counts @ values) / total
    present = np.flatnonzero(counts)
    return {
        "width": image.width,
        "height": image.height,
        "mean": mean,
        "std": float(np.sqrt(max(float(counts @ (values - mean) ** 2) / total, 0.0))),
        "min": float(present[0]) if len(present) else 0.0,
        "max": float(present[-1]) if len(present) else 0.0,
        "bright": float(counts[128:].sum()) / total,
    }
