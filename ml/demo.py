"""Demo data: scikit-learn's bundled handwritten digits, written as landing batches.

The scenario is four days: a bootstrap batch, a clean batch, a corrupted batch (files that do not
decode and an unknown label) and a drifted batch (a new, noisier and brighter camera).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass

import numpy as np

from ml import layout
from ml.storage import Lake

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoBatch:
    batch_id: str
    kind: str  # bootstrap | clean | corrupted | drifted
    story: str


SCENARIO = (
    DemoBatch("2026-01-01", "bootstrap", "first labelled data: trains the first champion"),
    DemoBatch("2026-01-02", "clean", "more data from the same source: a gate decision"),
    DemoBatch("2026-01-03", "corrupted", "undecodable files and an unknown label: quarantined"),
    DemoBatch("2026-01-04", "drifted", "a new, noisier and brighter camera: drift, retrain, gate"),
)
SIZES = {"bootstrap": 700, "clean": 450, "corrupted": 120}


def digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 digits as uint8 images (0..240) and their labels, in a fixed shuffled order."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images * 15).astype(np.uint8)
    order = np.random.default_rng(7).permutation(len(images))
    return images[order], data.target[order]


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, mode="L" if image.ndim == 2 else "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def drift(images: np.ndarray, seed: int = 0, brightness: float = 60.0, noise: float = 35.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shifted = images.astype(np.float32) + brightness + rng.normal(0.0, noise, images.shape)
    return np.clip(shifted, 0, 255).astype(np.uint8)


def write_batch(lake: Lake, batch_id: str, images: np.ndarray, labels: list[str] | np.ndarray,
                extra_files: dict[str, bytes] | None = None, commit: bool = True,
                event_time: str | None = None) -> int:  # fmt: skip
    """Write a landing batch the way a producer should: every file first, the commit marker last.

    ``event_time`` (ISO 8601) is stated in the marker: when the data belongs, for a history landed at once.
    """
    root = layout.landing(batch_id)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        lake.write_bytes(layout.join(root, "images", str(label), f"{i:05d}.png"), png_bytes(image))
    for relpath, data in (extra_files or {}).items():
        lake.write_bytes(layout.join(root, relpath), data)
    if commit:
        marker = json.dumps({"event_time": event_time}).encode() if event_time else b""
        lake.write_bytes(layout.commit_marker(batch_id), marker)
    return len(images) + len(extra_files or {})


def write_demo_batch(lake: Lake, batch: DemoBatch) -> int:
    """Land a day of the scenario, dated that day (its event time), so a backfill replays the days as they were."""
    images, labels = digits()
    when = f"{batch.batch_id}T00:00:00Z"
    start = sum(SIZES[b.kind] for b in SCENARIO[: SCENARIO.index(batch)] if b.kind in SIZES)
    if batch.kind in ("bootstrap", "clean"):
        chunk = slice(start, start + SIZES[batch.kind])
        return write_batch(lake, batch.batch_id, images[chunk], labels[chunk], event_time=when)
    if batch.kind == "corrupted":
        chunk = slice(start, start + SIZES["corrupted"])
        extra = {
            "images/3/broken-0.png": b"\x89PNG\r\n\x1a\n this is not really a png",
            "images/5/empty.png": b"",
            "images/7/notes.png": b"a text file with an image extension",
            "images/x/00000.png": png_bytes(images[0]),
            "images/x/00001.png": png_bytes(images[1]),
        }
        return write_batch(lake, batch.batch_id, images[chunk], labels[chunk], extra, event_time=when)
    chunk = slice(start, None)
    return write_batch(lake, batch.batch_id, drift(images[chunk]), labels[chunk], event_time=when)
