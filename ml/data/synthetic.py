"""Synthetic labelled photos: RGB images of any size whose class a CNN can learn, made from NumPy alone.

Class ``k`` of ``n`` is a filled shape whose kind (disc, square, ring or bar), hue and stripe
frequency depend on ``k``, on a smooth random background, at a random place, scale and
brightness, with sensor noise. Nothing is downloaded; a seed fixes every pixel. The realistic
profile (``ml/profiles/resnet18_224.yaml``) trains on these in the tests (small) and in the
benchmarks (224 px from 256 px shards).
"""

from __future__ import annotations

import numpy as np

KINDS = 4


def images(count: int, size: int, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` uint8 (size, size, 3) images and their int64 labels, balanced over ``classes``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count, dtype=np.int64) % classes
    rng.shuffle(labels)
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    # Drawn at a quarter of the side and enlarged (cheap at 256 px), then noised at full resolution.
    scale = 4 if size >= 64 else 1
    low = -(-size // scale)
    yy, xx = np.mgrid[0:low, 0:low].astype(np.float32) / low
    for start in range(0, count, 256):  # a few hundred at a time: memory stays small at 256 px
        chunk = labels[start : start + 256]
        drawn = _draw(chunk, classes, yy, xx, rng)
        if scale > 1:
            drawn = drawn.repeat(scale, axis=1).repeat(scale, axis=2)[:, :size, :size]
        noise = rng.integers(-8, 9, drawn.shape, dtype=np.int16)
        out[start : start + len(chunk)] = np.clip(drawn.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return out, labels


def _draw(labels: np.ndarray, classes: int, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(labels)
    col = lambda v: v.reshape(n, 1, 1).astype(np.float32)  # noqa: E731 - per-image scalars over the grid
    # Background: a random linear gradient between two dull colours.
    a, b = rng.uniform(0.1, 0.5, (n, 3)), rng.uniform(0.1, 0.5, (n, 3))
    angle = rng.uniform(0, 2 * np.pi, n)
    t = np.clip(col(np.cos(angle)) * (xx - 0.5) + col(np.sin(angle)) * (yy - 0.5) + 0.5, 0, 1)[..., None]
    canvas = a[:, None, None, :] * (1 - t) + b[:, None, None, :] * t
    # The object: kind and hue from the class, place, scale and brightness at random.
    cy, cx = col(rng.uniform(0.3, 0.7, n)), col(rng.uniform(0.3, 0.7, n))
    radius = col(rng.uniform(0.15, 0.3, n))
    dy, dx = yy - cy, xx - cx
    kind = col(labels % KINDS)
    dist = np.sqrt(dy**2 + dx**2)
    shape = np.where(kind == 0, dist < radius, False)
    shape |= np.where(kind == 1, (np.abs(dy) < radius) & (np.abs(dx) < radius), False)
    shape |= np.where(kind == 2, (dist < radius) & (dist > radius * 0.55), False)
    shape |= np.where(kind == 3, (np.abs(dy) < radius * 0.35) & (np.abs(dx) < radius * 1.2), False)
    hue = labels / classes * 2 * np.pi
    colour = 0.55 + 0.45 * np.stack([np.cos(hue), np.cos(hue - 2.094), np.cos(hue + 2.094)], axis=1)
    colour *= rng.uniform(0.7, 1.0, (n, 1))
    stripes = 0.85 + 0.15 * np.sin((xx + yy) * col(6 + 4 * (labels // KINDS)) * np.pi)
    canvas = np.where(shape[..., None], colour[:, None, None, :] * stripes[..., None], canvas)
    return np.clip(canvas * 255, 0, 255).astype(np.uint8)
