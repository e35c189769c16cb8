"""The streaming loader: shards to the device without a DataLoader worker decoding anything.

Each epoch has a plan that is a pure function of ``(seed, epoch)``: shards are visited in a shuffled
order, ``ring`` at a time, and the rows of those shards are shuffled together. Step ``s`` of the
epoch is the ``s``-th slice of ``batch_size`` rows of that order; under DDP rank ``r`` of ``w`` takes
its ``r``-th part of that slice, so each rank reads only its own rows and the ranks together see
exactly the rows one process would. A resumed run regenerates the plan and starts at its step.

Two ways to feed the device:

* **Resident:** when the training set's uint8 bytes fit ``resident_bytes``, it is copied to the
  device once, shard by shard, and every batch is an index into it.
* **Streaming:** background threads read each batch's rows from the shards straight into a pool of
  host buffers (pinned on CUDA) with ``preadv``; the copy to the device runs on a side stream,
  overlapping the previous step. Nothing is memory-mapped, so the page cache does the caching and
  the process holds only its buffers: host memory does not grow with the dataset.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ml.training.shards import ShardFile


@dataclass(frozen=True)
class ShardSet:
    """Rows to train on: which local shard file holds each, at which row, and its label."""

    paths: tuple[Path, ...]
    shard: np.ndarray  # int64 index into paths, per row
    row: np.ndarray  # int64 row within that shard
    labels: np.ndarray  # int64 class index
    shape: tuple[int, int, int]  # H, W, C of a stored image

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return len(self) * int(np.prod(self.shape))


def epoch_order(data: ShardSet, seed: int, epoch: int, ring: int) -> np.ndarray:
    """Row ids in the order this epoch visits them: shards shuffled, then rows shuffled ``ring`` shards at a time."""
    rng = np.random.default_rng([seed, epoch])
    shards = rng.permutation(len(data.paths))
    by_shard = [np.flatnonzero(data.shard == s) for s in range(len(data.paths))]
    parts = []
    for start in range(0, len(shards), max(ring, 1)):
        window = np.concatenate([by_shard[s] for s in shards[start : start + ring]])
        parts.append(window[rng.permutation(len(window))])
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def steps_per_epoch(rows: int, batch_size: int) -> int:
    return (rows + batch_size - 1) // batch_size


def rank_batches(order: np.ndarray, batch_size: int, world: int = 1, rank: int = 0) -> list[np.ndarray]:
    """This rank's rows for every step: its part of each global batch (padded so that no rank gets none)."""
    out = []
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        if len(batch) < world:  # a last batch smaller than the world: borrow rows from the front
            batch = np.concatenate([batch, order[: world - len(batch)]])
        out.append(np.array_split(batch, world)[rank])
    return out


class _Shards:
    """Open shard files, least recently used closed first."""

    def __init__(self, paths: tuple[Path, ...], keep: int) -> None:
        self.paths, self.keep = paths, max(keep, 1)
        self.open: OrderedDict[int, ShardFile] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, index: int) -> ShardFile:
        with self.lock:
            if index in self.open:
                self.open.move_to_end(index)
                return self.open[index]
            shard = ShardFile(self.paths[index])
            self.open[index] = shard
            while len(self.open) > self.keep:
                self.open.popitem(last=False)[1].close()
            return shard

    def close(self) -> None:
        with self.lock:
            while self.open:
                self.open.popitem()[1].close()


def gather(data: ShardSet, rows: np.ndarray, shards: _Shards, out: np.ndarray) -> None:
    """Copy ``rows`` (row ids of ``data``) into ``out[: len(rows)]``, in order, reading each row once."""
    which = data.shard[rows]
    for s in np.unique(which):
        positions = np.flatnonzero(which == s)
        shard = shards.get(int(s))
        if np.array_equal(positions, np.arange(positions[0], positions[0] + len(positions))):
            shard.read_rows(data.row[rows[positions]], out[positions[0] : positions[0] + len(positions)])
        else:
            part = np.empty((len(positions), *data.shape), np.uint8)
            shard.read_rows(data.row[rows[positions]], part)
            out[positions] = part


class Loader:
    """Batches of (uint8 NHWC images, int64 labels) on ``device`` for one epoch at a time."""

    def __init__(
        self,
        data: ShardSet,
        batch_size: int,
        device: torch.device,
        seed: int,
        ring: int = 4,
        threads: int = 2,
        resident_bytes: int = 0,
        world: int = 1,
        rank: int = 0,
    ) -> None:
        self.data, self.batch_size, self.device, self.seed = data, batch_size, device, seed
        self.ring, self.threads, self.world, self.rank = ring, max(threads, 1), world, rank
        self.cuda = device.type == "cuda"
        self.labels = torch.from_numpy(data.labels).to(device)
        self.resident = data.nbytes <= resident_bytes
        self.images: torch.Tensor | None = self._load_resident() if self.resident else None

    def __len__(self) -> int:
        return steps_per_epoch(len(self.data), self.batch_size)

    def _load_resident(self) -> torch.Tensor:
        """The whole training set on the device as uint8, copied one shard at a time."""
        images = torch.empty((len(self.data), *self.data.shape), dtype=torch.uint8, device=self.device)
        shards = _Shards(self.data.paths, 1)
        try:
            for s in range(len(self.data.paths)):
                ids = np.flatnonzero(self.data.shard == s)
                if len(ids):
                    pixels = np.empty((len(ids), *self.data.shape), np.uint8)
                    shards.get(s).read_rows(self.data.row[ids], pixels)
                    images[torch.from_numpy(ids).to(self.device)] = torch.from_numpy(pixels).to(self.device)
        finally:
            shards.close()
        return images

    def plan(self, epoch: int) -> list[np.ndarray]:
        order = epoch_order(self.data, self.seed, epoch, self.ring)
        return rank_batches(order, self.batch_size, self.world, self.rank)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of ``epoch`` from step ``start`` on."""
        batches = self.plan(epoch)[start:]
        if self.images is not None:
            for rows in batches:
                idx = torch.from_numpy(rows).to(self.device)
                yield self.images[idx], self.labels[idx]
            return
        yield from self._stream(batches)

    def _stream(self, batches: list[np.ndarray]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        shape = (max((len(b) for b in batches), default=1), *self.data.shape)
        depth = 2 * self.threads + 1
        pool: queue.Queue[torch.Tensor] = queue.Queue()
        for _ in range(depth):
            buffer = torch.empty(shape, dtype=torch.uint8)
            pool.put(buffer.pin_memory() if self.cuda else buffer)
        ready: list[queue.Queue[tuple[torch.Tensor, int] | BaseException]] = [
            queue.Queue(maxsize=2) for _ in range(self.threads)
        ]
        stop = threading.Event()
        shards = _Shards(self.data.paths, self.ring + self.threads)

        def produce(worker: int) -> None:
            try:
                for b in range(worker, len(batches), self.threads):
                    buffer = pool.get()
                    if stop.is_set():
                        return
                    gather(self.data, batches[b], shards, buffer.numpy())
                    ready[worker].put((buffer, len(batches[b])))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
                ready[worker].put(exc)

        workers = [threading.Thread(target=produce, args=(w,), daemon=True) for w in range(self.threads)]
        for worker in workers:
            worker.start()
        side = torch.cuda.Stream(self.device) if self.cuda else None
        in_use: tuple[torch.Tensor, torch.cuda.Event | None] | None = None
        try:
            for b, rows in enumerate(batches):
                item = ready[b % self.threads].get()
                if isinstance(item, BaseException):
                    raise item
                buffer, n = item
                labels = self.labels[torch.from_numpy(rows).to(self.device)]
                if side is not None:
                    with torch.cuda.stream(side):
                        images = buffer[:n].to(self.device, non_blocking=True)
                        copied = torch.cuda.Event()
                        copied.record(side)
                    torch.cuda.current_stream(self.device).wait_event(copied)
                    images.record_stream(torch.cuda.current_stream(self.device))
                else:
                    images, copied = buffer[:n], None
                if in_use is not None:  # the previous batch's buffer is free once its copy is done
                    self._release(in_use, pool)
                in_use = (buffer, copied)
                yield images, labels
        finally:
            stop.set()
            shards.close()
            if in_use is not None:
                self._release(in_use, pool)
            for _ in workers:
                pool.put(torch.empty(0, dtype=torch.uint8))  # wake any worker waiting for a buffer
            for q in ready:
                while not q.empty():
                    q.get_nowait()

    @staticmethod
    def _release(used: tuple[torch.Tensor, torch.cuda.Event | None], pool: queue.Queue[torch.Tensor]) -> None:
        buffer, copied = used
        if copied is not None:
            copied.synchronize()
        pool.put(buffer)
