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
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
    """Collect images into fixed-capacity shards in ``folder``. Memory holds one shard's rows, never the batch.

    With ``publish``, each full shard goes to ``publish(name, path)`` at once and leaves ``folder``
    (``publish`` must make it visible atomically, as the lake's ``write_file`` does); without, the
    shards stay in ``folder`` until their caller publishes them.
    """

    def __init__(
        self,
        folder: Path,
        shape: tuple[int, int, int],
        rows_per_shard: int,
        publish: Callable[[str, Path], None] | None = None,
    ) -> None:
        self.folder, self.shape, self.capacity, self.publish = folder, shape, rows_per_shard, publish
        # Two buffers: one fills while the other is written out by a background thread.
        self.buffers = [np.empty((rows_per_shard, *shape), dtype=np.uint8) for _ in range(2)]
        self.buffer = self.buffers[0]
        self.filled = 0
        self.shards: list[ShardInfo] = []
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ct-shard-writer")
        self._pending: Future[ShardInfo] | None = None
        self._count = 0

    def add(self, image: np.ndarray) -> tuple[str, int]:
        """Append one HWC uint8 image; returns the (shard name, row in shard) it will live at."""
        if image.shape != self.shape or image.dtype != np.uint8:
            raise ValueError(f"shard rows are uint8 {self.shape}, got {image.dtype} {image.shape}")
        where = (shard_name(self._count), self.filled)
        self.buffer[self.filled] = image
        self.filled += 1
        if self.filled == self.capacity:
            self._flush()
        return where

    def close(self) -> list[ShardInfo]:
        try:
            if self.filled:
                self._flush()
            self._wait()
        finally:
            self._writer.shutdown()
            self.buffers, self.buffer = [], np.empty((0, *self.shape), np.uint8)  # their memory goes back now
        return self.shards

    def _wait(self) -> None:
        if self._pending is not None:
            self.shards.append(self._pending.result())  # a failed write raises here
            self._pending = None

    def _flush(self) -> None:
        self._wait()  # at most one shard in flight: the other buffer is free again
        full, rows, name = self.buffer, self.filled, shard_name(self._count)
        self._pending = self._writer.submit(self._write, name, full, rows)
        self.buffer = self.buffers[1] if full is self.buffers[0] else self.buffers[0]
        self.filled = 0
        self._count += 1

    def _write(self, name: str, buffer: np.ndarray, rows: int) -> ShardInfo:
        path = self.folder / name
        np.save(path, buffer[:rows])
        info = ShardInfo(name, rows, sha256_file(path))
        if self.publish is not None:
            self.publish(name, path)
            path.unlink(missing_ok=True)  # publish may have moved it
        return info


class ShardError(ValueError):
    """A shard is missing, is not the file its manifest names, or does not hold the rows it should."""


class ShardFile:
    """A shard read by offset (``os.preadv`` straight into the caller's buffer): no mapping, no page in RSS.

    Row ``i`` of a shard is ``row_bytes`` bytes at ``offset + i * row_bytes``; reading rows this way
    keeps the process's resident memory to the buffers it fills, however much of the shard it reads.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(fh)
            self.offset = fh.tell()
        if dtype != np.uint8 or fortran or len(shape) != 4:
            raise ShardError(f"{path} holds {dtype} {shape}, not C-ordered uint8 NHWC")
        self.rows, self.shape = int(shape[0]), tuple(int(x) for x in shape[1:])
        self.row_bytes = int(np.prod(self.shape))
        self.fd = os.open(path, os.O_RDONLY)

    def read_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Rows ``rows`` of the shard into ``out[0 : len(rows)]`` (contiguous uint8)."""
        flat = out.reshape(len(out), -1)
        for i, row in enumerate(rows.tolist()):
            got = os.preadv(self.fd, [flat[i]], self.offset + row * self.row_bytes)
            if got != self.row_bytes:
                raise ShardError(f"{self.path} ends before row {row}")

    def close(self) -> None:
        os.close(self.fd)


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
