"""Training-ready shards: fixed-capacity ``.npy`` files of uint8 NHWC images, memory-mappable, immutable.

Ingest writes each curated batch as ``shards/shard-00000.npy``, ``shard-00001.npy``, ... of
``capacity`` rows each (the last one may be shorter) at ``image.store_size``. A shard is a plain
NumPy ``.npy`` file, so ``np.load(path, mmap_mode="r")`` maps it without reading it, and row ``i``
sits at a fixed offset. The manifest, written after every shard, names each row's ``shard`` and
``shard_row`` and the shard's SHA-256: a reader only ever opens shards a manifest names, and checks
the hash, so it never sees half a shard or a swapped one.

:class:`ShardWriter` takes images one at a time and holds at most two shards in memory.
Everything here imports only NumPy.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
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


def npy_header(shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header of a C-ordered uint8 array of ``shape``.

    NumPy pads it so that the first axis can grow to 21 digits without changing its length, which
    lets a buffer laid out for a full shard take a short last shard's header in place.
    """
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return out.getvalue()


#: Alignment of the fill buffers and of direct writes (the largest logical block size in common use).
ALIGN = 4096


def _aligned(size: int) -> np.ndarray:
    """``size`` bytes (rounded up to :data:`ALIGN`) of uint8 memory that starts on an :data:`ALIGN` boundary."""
    size = -(-size // ALIGN) * ALIGN
    raw = np.empty(size + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + size]


def write_direct(path: Path, data: memoryview) -> None:
    """Write ``data`` to a new file at ``path``, bypassing the page cache where the file system allows it.

    Through ``O_DIRECT`` when ``data`` starts on an :data:`ALIGN` boundary (as :func:`_aligned` memory
    does): the disk reads the memory itself, so no CPU copies it into the page cache. On the 2-core VM
    ct is measured on, that copy cost 2.9 s of CPU per GB, about a fifth of all ingest's CPU at 256 px.
    Elsewhere (tmpfs, macOS, memory that is not aligned), an ordinary write.
    """
    if not _written_direct(path, data):
        with path.open("wb") as fh:
            fh.write(data)


def _written_direct(path: Path, data: memoryview) -> bool:
    """Whole blocks through ``O_DIRECT``, the last partial block through the page cache; False where refused."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    except (AttributeError, OSError):
        return False
    try:
        written, blocks = 0, len(data) // ALIGN * ALIGN
        while written < blocks:
            written += os.write(fd, data[written:blocks])
            if written % ALIGN:
                return False  # stopped off a block boundary: the caller writes it again
        if written < len(data):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            while written < len(data):
                written += os.write(fd, data[written:])
        return True
    except OSError:
        return False  # EINVAL: memory or file system not fit for O_DIRECT
    finally:
        os.close(fd)


def into_folder(folder: Path) -> Callable[[str, memoryview], None]:
    """A :class:`ShardWriter` destination that writes each shard as a file in ``folder``."""
    return lambda name, data: write_direct(folder / name, data)


class ShardWriter:
    """Collect images into fixed-capacity shards, each handed to ``publish`` as soon as it is full.

    Rows are copied into one of two aligned buffers, which already hold the ``.npy`` header; a full
    buffer is hashed and given to ``publish(name, data)`` by a background thread while the other
    fills. ``data`` is a view of the buffer itself: nothing is copied or written to a local file on
    the way (the lake's ``write_view`` publishes it atomically; :func:`into_folder` writes files).
    Memory holds two shards, never the batch.
    """

    def __init__(
        self, shape: tuple[int, int, int], rows_per_shard: int, publish: Callable[[str, memoryview], None]
    ) -> None:
        self.shape, self.capacity, self.publish = tuple(shape), rows_per_shard, publish
        self.header = npy_header((rows_per_shard, *self.shape))
        self.row_bytes = int(np.prod(self.shape))
        start, stop = len(self.header), len(self.header) + rows_per_shard * self.row_bytes
        self.buffers = [_aligned(stop) for _ in range(2)]
        self.views = [b[start:stop].reshape(rows_per_shard, *self.shape) for b in self.buffers]
        self.current = 0  # which buffer fills
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
        self.views[self.current][self.filled] = image
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
            self.buffers, self.views = [], []  # their memory goes back now
        return self.shards

    def abort(self) -> None:
        """Stop without writing what is still in memory, because the caller failed.

        A shard in flight is waited for; its own error, if any, is dropped for the caller's.
        """
        try:
            if self._pending is not None:
                self._pending.exception()
        finally:
            self._writer.shutdown()
            self.buffers, self.views = [], []

    def _wait(self) -> None:
        if self._pending is not None:
            self.shards.append(self._pending.result())  # a failed write raises here
            self._pending = None

    def _flush(self) -> None:
        self._wait()  # at most one shard in flight: the other buffer is free again
        name, rows = shard_name(self._count), self.filled
        self._pending = self._writer.submit(self._write, name, self.buffers[self.current], rows)
        self.current, self.filled = 1 - self.current, 0
        self._count += 1

    def _write(self, name: str, buffer: np.ndarray, rows: int) -> ShardInfo:
        header = self.header if rows == self.capacity else npy_header((rows, *self.shape))
        if len(header) != len(self.header):
            raise ShardError(f"the .npy header of {rows} rows is not as long as that of {self.capacity} rows")
        buffer[: len(header)] = np.frombuffer(header, np.uint8)
        data = buffer.data[: len(header) + rows * self.row_bytes]  # a memoryview: slicing copies nothing
        info = ShardInfo(name, rows, hashlib.sha256(data).hexdigest())
        self.publish(name, data)
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
