"""Read curated batches: where each row's pixels are, and the rows themselves as uint8 NHWC arrays.

A curated manifest names, for every row, its ``shard`` and ``shard_row`` and the shard's SHA-256
(:mod:`ml.training.shards`). :class:`ShardReader` turns those into local, checked, memory-mapped
files: straight from a ``file://`` lake, downloaded once into a temporary folder from S3. Batches
curated before fixed-size shards (one ``shards/images.npy``, no ``shard`` column) read the same way.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd

from ml import layout
from ml.data.ingest import read_manifest
from ml.model.preprocess import center_crop
from ml.storage import Lake, LocalLake
from ml.training.loader import ShardSet
from ml.training.shards import ShardError, ShardFile, open_shard


@dataclass(frozen=True)
class Split:
    """Rows held in memory (drift experiments, tests); the pipeline streams :class:`Rows` instead."""

    images: np.ndarray  # uint8, N x H x W x C
    labels: np.ndarray  # int64 indices into the configured label list
    rows: pd.DataFrame  # batch_id, sha256, label: which rows these are, for paired evaluation

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, rows: int = 512) -> Iterator[np.ndarray]:
        return batched(self.images, rows)


def batched(images: np.ndarray, rows: int = 512) -> Iterator[np.ndarray]:
    """In-memory images, a batch at a time (what :meth:`Rows.batches` gives for streamed rows)."""
    for start in range(0, len(images), rows):
        yield images[start : start + rows]


def shard_columns(manifest: pd.DataFrame) -> pd.DataFrame:
    """``shard``, ``shard_row`` and ``shard_sha256`` for every row, also for a manifest from before shards."""
    if "shard" in manifest.columns:
        return manifest
    return manifest.assign(shard=layout.LEGACY_SHARD, shard_row=manifest["row"], shard_sha256=None)


class ShardReader:
    """Local, hash-checked shards of curated batches; a context manager (S3 downloads go away)."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._checked: dict[str, Path] = {}

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._checked.clear()

    def path(self, batch_id: str, name: str, sha256: str | None, root: str = layout.CURATED) -> Path:
        """The shard as a local file, its hash checked once per reader."""
        key = layout.shard(batch_id, name, root)
        if key in self._checked:
            return self._checked[key]
        if isinstance(self.lake, LocalLake):
            local = self.lake.path(key)
        else:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="ct-shards-")
            local = Path(self._tmp.name) / key
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(self.lake.read_bytes(key))
        if not local.is_file():
            raise ShardError(f"{self.lake.uri(key)} is missing, though the manifest of {batch_id} names it")
        open_shard(local, sha256)  # checks the hash and the shape once
        self._checked[key] = local
        return local

    def gather(self, manifest: pd.DataFrame, root: str = layout.CURATED, dataset: str | None = None) -> np.ndarray:
        """The rows of ``manifest``, in its order, as one array.

        A row's shard lives under its ``dataset`` folder: ``dataset`` when given, else the row's
        ``dataset`` column, else its ``batch_id`` (a golden set keeps its source batch's ids). Rows
        are read by offset (:class:`~ml.training.shards.ShardFile`), as the training loader reads them.
        """
        frame = shard_columns(manifest).reset_index(drop=True)
        if dataset is not None:
            frame = frame.assign(dataset=dataset)
        elif "dataset" not in frame:
            frame = frame.assign(dataset=frame["batch_id"])
        out: np.ndarray | None = None
        groups: Any = frame.groupby(["dataset", "shard"], sort=False)
        for (folder, name), rows in groups:
            shard = ShardFile(self.path(str(folder), str(name), rows["shard_sha256"].iloc[0], root))
            try:
                if out is None:
                    out = np.empty((len(frame), *shard.shape), dtype=np.uint8)
                pixels = np.empty((len(rows), *shard.shape), dtype=np.uint8)
                shard.read_rows(rows["shard_row"].to_numpy(), pixels)
            finally:
                shard.close()
            out[rows.index.to_numpy()] = pixels
        return out if out is not None else np.zeros((0, 1, 1, 1), np.uint8)


def shard_set(reader: ShardReader, batch_ids: list[str], split: str, labels: tuple[str, ...]) -> ShardSet:
    """The ``split`` rows of ``batch_ids`` as a :class:`~ml.training.loader.ShardSet`: local shard files, no pixels read."""
    index = {name: i for i, name in enumerate(labels)}
    paths: dict[Path, int] = {}
    shard, row, targets = [], [], []
    shape: tuple[int, ...] = ()
    for batch_id in batch_ids:
        manifest = shard_columns(read_manifest(reader.lake, batch_id))
        chosen = manifest[manifest["split"] == split]
        for (name, sha256), rows in chosen.groupby(["shard", "shard_sha256"], sort=True, dropna=False):
            path = reader.path(batch_id, str(name), None if pd.isna(sha256) else str(sha256))
            shape = shape or open_shard(path, None).shape[1:]
            shard.append(np.full(len(rows), paths.setdefault(path, len(paths)), np.int64))
            row.append(rows["shard_row"].to_numpy(np.int64))
            targets.append(rows["label"].map(index).to_numpy(np.int64))
    if not paths:
        return ShardSet((), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), (1, 1, 1))
    h, w, c = (int(x) for x in shape)
    return ShardSet(tuple(paths), np.concatenate(shard), np.concatenate(row), np.concatenate(targets), (h, w, c))


@dataclass(frozen=True)
class Rows:
    """Rows to score, streamed: their identities and labels in memory, their pixels read batch by batch.

    ``frame`` holds ``batch_id``, ``sha256``, ``label`` (and ``source`` for evaluation rows) plus where
    each row's pixels are (``root``, ``shard``, ``shard_row``, ``shard_sha256``). Every pass of
    :meth:`batches` reads the shards again (from the page cache, usually), so scoring a million rows
    holds one batch of pixels at a time.
    """

    reader: ShardReader  # open for as long as the rows are used (S3 shards are downloaded once per reader)
    frame: pd.DataFrame
    labels: np.ndarray
    size: int | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def rows(self) -> pd.DataFrame:
        """Which rows these are (for the evaluation record): the identity columns only."""
        return self.frame.drop(columns=[c for c in PLACE_COLUMNS if c in self.frame.columns]).reset_index(drop=True)

    def take(self, positions: np.ndarray) -> Rows:
        return Rows(self.reader, self.frame.iloc[positions].reset_index(drop=True), self.labels[positions], self.size)

    def batches(self, rows: int = 512) -> Iterator[np.ndarray]:
        for start in range(0, len(self.frame), rows):
            chunk = self.frame.iloc[start : start + rows].reset_index(drop=True)
            out: np.ndarray | None = None
            for root, part in chunk.groupby("root", sort=False):  # curated rows, golden rows
                pixels = self.reader.gather(part, str(root))
                if out is None:
                    out = np.empty((len(chunk), *pixels.shape[1:]), np.uint8)
                out[part.index.to_numpy()] = pixels
            if out is not None:
                yield center_crop(out, self.size) if self.size else out

    def images(self) -> np.ndarray:
        """All the pixels at once: for small row sets (tests, a handful of rows for a latency probe)."""
        chunks = list(self.batches())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.size or 1, self.size or 1, 1), np.uint8)


PLACE_COLUMNS = ("root", "dataset", "shard", "shard_row", "shard_sha256")


def rows_of(
    reader: ShardReader,
    batch_ids: list[str],
    split: str | None,
    labels: tuple[str, ...],
    root: str = layout.CURATED,
    size: int | None = None,
    source: str | None = None,
) -> Rows:
    """The ``split`` rows (None: all) of ``batch_ids``, in batch then manifest order, to be streamed."""
    index = {name: i for i, name in enumerate(labels)}
    frames = []
    for batch_id in batch_ids:
        manifest = shard_columns(read_manifest(reader.lake, batch_id, root))
        chosen = manifest if split is None else manifest[manifest["split"] == split]
        if not chosen.empty:
            place = chosen[["batch_id", "sha256", "label", "shard", "shard_row", "shard_sha256"]]
            frames.append(place.assign(root=root, dataset=batch_id))
    columns = ["batch_id", "sha256", "label", *PLACE_COLUMNS]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    if source is not None:
        frame = frame.assign(source=source)
    return Rows(reader, frame, frame["label"].map(index).to_numpy(dtype=np.int64), size)


def join_rows(first: Rows, second: Rows) -> Rows:
    frame = pd.concat([first.frame, second.frame], ignore_index=True)
    return Rows(first.reader, frame, np.concatenate([first.labels, second.labels]), first.size)
