"""Read curated batches into arrays: uint8 NHWC images, int64 label indices, and row identities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml import layout
from ml.ingest import load_images, read_manifest
from ml.storage import Lake


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8, N x H x W x C
    labels: np.ndarray  # int64 indices into the configured label list
    rows: pd.DataFrame  # batch_id, sha256, label: which rows these are, for paired evaluation

    def __len__(self) -> int:
        return len(self.labels)


def load_split(
    lake: Lake, batch_ids: list[str], split: str | None, labels: tuple[str, ...], root: str = layout.CURATED
) -> Split:
    """The ``split`` rows (None: all rows) of the given batches under ``root``, in batch then manifest order."""
    index = {name: i for i, name in enumerate(labels)}
    images, targets, frames = [], [], []
    for batch_id in batch_ids:
        manifest = read_manifest(lake, batch_id, root)
        chosen = manifest if split is None else manifest[manifest["split"] == split]
        if chosen.empty:
            continue
        shard = load_images(lake, batch_id, root)
        images.append(np.asarray(shard[chosen["row"].to_numpy()]))
        targets.append(chosen["label"].map(index).to_numpy(dtype=np.int64))
        frames.append(chosen[["batch_id", "sha256", "label"]])
    if not images:
        return Split(
            np.zeros((0, 1, 1, 1), np.uint8),
            np.zeros(0, np.int64),
            pd.DataFrame(columns=["batch_id", "sha256", "label"]),
        )
    return Split(np.concatenate(images), np.concatenate(targets), pd.concat(frames, ignore_index=True))


def concat(first: Split, second: Split) -> Split:
    if len(second) == 0:
        return first
    if len(first) == 0:
        return second
    return Split(
        np.concatenate([first.images, second.images]),
        np.concatenate([first.labels, second.labels]),
        pd.concat([first.rows, second.rows], ignore_index=True),
    )
