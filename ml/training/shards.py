"""Training-ready shards: fixed-capacity ``.npy`` files of uint8 NHWC images, memory-mappable, immutable.

Ingest writes each curated batch as ``shards/shard-00000.npy``, ``shard-00001.npy``, ... of
``capacity`` rows each (the last one may be shorter) at ``image.store_size``. A shard is a plain
NumPy ``.npy`` file, so ``np.load(path, mmap_mode="r")`` maps it without reading it, and row ``i``
sits at a fixed offset. The manifest, written after every shard, names each row's ``shard`` and
``shard_row`` and the shard's SHA-256: a reader only ever opens shards a manifest names, and checks
the hash, so it never sees half a shard or a swapped one.

:class:`ShardWriter` takes images one at a time and holds at most one shard in memory.
Everything here imports only NumPy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHARD_PATTERN = "shard-{:05d}.npy"


def shard_name(index: int) -> str:
    return SHARD_PATTERN.format(index)


def capacity(store_size: int, channels: int, shard_mb: float) -> int:
    """Rows per shard: as many images of this size as fit in ``shard_mb`` megabytes (at least one)."""
    return max(1, int(shard_mb * 1e6) // (store_size * store_size * channels))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ShardInfo:
    name: str
    rows: int
    sha256: str


class ShardWriter:
    """Collect images into fixed-capacity shards; each full shard goes to ``publish(name, path)`` at once.

    ``publish`` must make the file visible atomically (the lake's ``write_file`` does). Memory holds
    one shard's rows, never the batch.
    """

    def __init__(
        self, folder: Path, shape: tuple[int, int, int], rows_per_shard: int, publish: Callable[[str, Path], None]
    ) -> None:
        self.folder, self.shape, self.capacity, self.publish = folder, shape, rows_per_shard, publish
        self.buffer = np.empty((rows_per_shard, *shape), dtype=np.uint8)
        self.filled = 0
        self.shards: list[ShardInfo] = []

    def add(self, image: np.ndarray) -> tuple[str, int]:
        """Append one HWC uint8 image; returns the (shard name, row in shard) it will live at."""
        if image.shape != self.shape or image.dtype != np.uint8:
            raise ValueError(f"shard rows are uint8 {self.shape}, got {image.dtype} {image.shape}")
        where = (shard_name(len(self.shards)), self.filled)
        self.buffer[self.filled] = image
        self.filled += 1
        if self.filled == self.capacity:
            self._flush()
        return where

    def close(self) -> list[ShardInfo]:
        if self.filled:
            self._flush()
        return self.shards

    def _flush(self) -> None:
        name = shard_name(len(self.shards))
        path = self.folder / name
        np.save(path, self.buffer[: self.filled])
        self.shards.append(ShardInfo(name, self.filled, sha256_file(path)))
        self.publish(name, path)
        path.unlink(missing_ok=True)  # publish may have moved it
        self.filled = 0


class ShardError(ValueError):
    """A shard is missing, is not the file its manifest names, or does not hold the rows it should."""


def open_shard(path: Path, expected_sha256: str | None, rows: int | None = None) -> np.ndarray:
    """Memory-map a shard after checking its hash (when one is given) and its shape."""
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise ShardError(f"{path} is not the shard its manifest names (SHA-256 differs)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path} is not a readable shard: {exc}") from exc
    if array.dtype != np.uint8 or array.ndim != 4 or (rows is not None and len(array) < rows):
        raise ShardError(f"{path} holds {array.dtype} {array.shape}, not uint8 NHWC with {rows} rows")
    return array
