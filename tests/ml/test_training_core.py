"""The training core: shards, the loader's plan, on-device augmentation, and checkpoints that resume exactly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ml import layout
from ml.data.curated import ShardReader, rows_of, shard_set
from ml.data.ingest import ingest_batch, read_manifest
from ml.model.factory import build_model
from ml.training import shards
from ml.training.augment import augment
from ml.training.loader import Loader, ShardSet, epoch_order, rank_batches
from ml.training.loop import FitConfig, fit
from ml.training.shards import ShardError, ShardWriter


def _write(folder: Path, images: np.ndarray, capacity: int) -> list[shards.ShardInfo]:
    published = folder / "published"
    published.mkdir(exist_ok=True)
    writer = ShardWriter(images.shape[1:], capacity, shards.into_folder(published))
    for image in images:
        writer.add(image)
    return writer.close()


def test_shards_have_a_fixed_capacity_and_a_hash_and_map_back_to_the_rows(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 1), dtype=np.uint8)
    written = _write(tmp_path, images, capacity=4)
    assert [(s.name, s.rows) for s in written] == [
        ("shard-00000.npy", 4),
        ("shard-00001.npy", 4),
        ("shard-00002.npy", 2),
    ]
    for i, info in enumerate(written):
        mapped = shards.open_shard(tmp_path / "published" / info.name, info.sha256)
        assert isinstance(mapped, np.memmap)  # memory-mapped, not read
        assert np.array_equal(mapped, images[4 * i : 4 * i + info.rows])
    assert shards.capacity(256, 3, 64) == 325  # 64 MB of 256 px RGB images


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "page_cache"])
def test_shard_files_hold_exactly_their_bytes_whichever_way_they_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    if not direct:
        monkeypatch.delattr(os, "O_DIRECT", raising=False)
    buffer = shards._aligned(3 * shards.ALIGN)
    buffer[:] = np.random.default_rng(2).integers(0, 256, len(buffer), dtype=np.uint8)
    # Aligned starts (O_DIRECT for the whole blocks, then the tail), and one that is not (an ordinary write).
    for start, length in ((0, 1), (0, shards.ALIGN), (0, shards.ALIGN + 77), (0, 3 * shards.ALIGN), (5, 9000)):
        path = tmp_path / f"{start}-{length}.bin"
        shards.write_direct(path, buffer.data[start : start + length])
        assert path.read_bytes() == buffer[start : start + length].tobytes()


def test_a_shard_that_is_not_the_one_named_is_refused(tmp_path: Path) -> None:
    images = np.zeros((3, 4, 4, 1), np.uint8)
    (info,) = _write(tmp_path, images, capacity=4)
    path = tmp_path / "published" / info.name
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="SHA-256 differs"):
        shards.open_shard(path, info.sha256)


def test_a_failed_publish_leaves_no_manifest_and_a_rerun_curates_the_batch(
    lake, settings, write_batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's atomicity as a reader sees it: shards without a manifest are never read, and are rewritten."""
    small = settings.model_copy(update={"image": settings.image.model_copy(update={"shard_mb": 0.05})})
    write_batch("b1", 0, 150)
    real = lake.write_view
    calls = {"n": 0}
    before: list[int] = []  # shards already in the lake at each publish

    def flaky(key: str, data: memoryview) -> None:
        if "/shards/" in key:
            calls["n"] += 1
            assert isinstance(data, memoryview), "the shard's own buffer, not a copy"
            before.append(len(lake.list_keys(layout.shards("b1"))))
            if calls["n"] == 2:
                raise OSError("S3 went away mid-batch")
        real(key, data)

    monkeypatch.setattr(lake, "write_view", flaky)
    with pytest.raises(OSError):
        ingest_batch(lake, "b1", small)
    assert lake.list_keys(layout.shards("b1")) and not lake.exists(layout.manifest("b1"))
    assert calls["n"] == 2, "the failed publish stopped the scan: no shard was written after it"
    calls["n"], before[:] = 100, []
    result = ingest_batch(lake, "b1", small)
    assert result["status"] == "curated"
    manifest = read_manifest(lake, "b1")
    assert manifest["shard"].nunique() > 1, "0.05 MB shards: the batch spans several"
    assert before == list(range(manifest["shard"].nunique())), "the earlier attempt's went first; then one by one"
    assert sorted(lake.list_children(layout.shards("b1"))) == sorted(manifest["shard"].unique())
    assert not [p for p in lake.root.rglob("*") if p.name.endswith(".tmp")], "no temporary file is left behind"
    # Every row reads back as what a single-array load gives, through the checked shards.
    with ShardReader(lake) as reader:
        whole = rows_of(reader, ["b1"], None, small.labels).images()
        rows = shard_set(reader, ["b1"], "train", small.labels)
    assert len(rows) == int((manifest["split"] == "train").sum()) and len(rows.paths) == manifest["shard"].nunique()
    assert len(whole) == 150


def _shard_set(tmp_path: Path, rows: int, per_shard: int, shape=(6, 6, 1)) -> ShardSet:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    paths, shard, row = [], [], []
    for s, start in enumerate(range(0, rows, per_shard)):
        n = min(per_shard, rows - start)
        path = tmp_path / shards.shard_name(s)
        np.save(path, rng.integers(0, 256, (n, *shape), dtype=np.uint8))
        paths.append(path)
        shard += [s] * n
        row += list(range(n))
    labels = rng.integers(0, 10, rows)
    return ShardSet(tuple(paths), np.array(shard), np.array(row), labels, shape)


def test_the_plan_visits_every_row_once_a_ring_at_a_time_and_splits_batches_across_ranks(tmp_path: Path) -> None:
    data = _shard_set(tmp_path, rows=100, per_shard=10)
    order = epoch_order(data, seed=3, epoch=0, ring=2)
    assert sorted(order) == list(range(100))
    # Rows of a ring of two shards come together: the first 20 rows of the order span exactly two shards.
    assert len(set(data.shard[order[:20]])) == 2
    assert not np.array_equal(order, epoch_order(data, seed=3, epoch=1, ring=2)), "each epoch reshuffles"
    assert np.array_equal(order, epoch_order(data, seed=3, epoch=0, ring=2)), "a function of (seed, epoch)"
    one = rank_batches(order, 32)
    two = [rank_batches(order, 32, world=2, rank=r) for r in (0, 1)]
    assert len(two[0]) == len(two[1]) == len(one)
    for step, batch in enumerate(one):  # the ranks together read exactly what one process reads
        assert np.array_equal(np.concatenate([two[0][step], two[1][step]]), batch)


def test_streaming_and_resident_loaders_give_the_same_batches(tmp_path: Path) -> None:
    data = _shard_set(tmp_path, rows=70, per_shard=16)
    cpu = torch.device("cpu")
    streamed = Loader(data, 16, cpu, seed=0, ring=2, threads=3, resident_bytes=0)
    resident = Loader(data, 16, cpu, seed=0, ring=2, resident_bytes=10**9)
    assert not streamed.resident and resident.resident
    pixels = np.concatenate([np.load(p) for p in data.paths])
    for (a, la), (b, lb), rows in zip(streamed.epoch(1), resident.epoch(1), streamed.plan(1), strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
        assert np.array_equal(a.numpy(), pixels[rows]) and np.array_equal(la.numpy(), data.labels[rows])
    assert len(list(streamed.epoch(1, start=3))) == len(streamed) - 3


def test_augmentation_is_per_sample_and_fixed_by_its_seed() -> None:
    batch = torch.randint(0, 256, (1, 12, 12, 1), dtype=torch.uint8).repeat(64, 1, 1, 1)
    out = augment(batch, 8, torch.Generator().manual_seed(5), mode="resized_crop", flip=True)
    assert out.shape == (64, 1, 8, 8)
    distinct = {tuple(x.flatten().tolist()) for x in out}
    assert len(distinct) > 32, "the same image, drawn 64 times, comes out in many different crops"
    again = augment(batch, 8, torch.Generator().manual_seed(5), mode="resized_crop", flip=True)
    assert torch.equal(out, again)
    # A translation by whole pixels copies pixels: every output value is one of the input's (or padding).
    shifted = augment(batch, 8, torch.Generator().manual_seed(6), mode="translate", pad=2)
    assert set(torch.unique(shifted * 255).round().tolist()) <= set(batch.float().unique().tolist()) | {0.0}


class _Memory:
    def __init__(self) -> None:
        self.saved: list[bytes] = []

    def load(self) -> bytes | None:
        return self.saved[-1] if self.saved else None

    def save(self, data: bytes) -> None:
        self.saved.append(data)


def _fit(data: ShardSet, checkpoints: _Memory | None, epochs: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("digits_cnn", 1, 10)
    cfg = FitConfig(epochs=epochs, batch_size=16, lr=0.01, weight_decay=1e-4, seed=0, size=6, checkpoint_seconds=0)
    fit(model, Loader(data, 16, torch.device("cpu"), seed=0, ring=2), cfg, torch.device("cpu"), "fp", checkpoints)
    return model


def test_a_run_resumed_from_any_checkpoint_ends_with_the_same_weights(tmp_path: Path) -> None:
    data = _shard_set(tmp_path, rows=60, per_shard=16)
    store = _Memory()
    reference = _fit(data, store).state_dict()
    assert len(store.saved) >= 6, "checkpoint_seconds=0: a checkpoint after every step but the last of each epoch"
    for cut in (1, len(store.saved) // 2, len(store.saved) - 1):  # mid-epoch and at an epoch boundary
        resumed = _fit(data, _Replay(store.saved[cut])).state_dict()
        for key, value in reference.items():
            assert torch.equal(value, resumed[key]), (cut, key)


class _Replay(_Memory):
    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.saved.append(data)
