"""Training throughput: ct's trainer from shards on disk against the same model on tensors already on the device.

In one run on one device, eager and compiled:

* (a) **ceiling**: the model, optimizer and batch of the trainer, stepping on one synthetic batch
  that already sits on the device (float, model-sized): no data path at all;
* (b) **ct**: :func:`ml.training.loop.fit` end to end, streaming from uint8 shards on disk through
  the loader (``resident_bytes=0`` forces streaming), with the per-sample crop and flip on the
  device, warm page cache; and cold where the page cache can be dropped (on Linux: all of it as
  root, else the shards' own pages).

It also reads the shards once to measure the disk (cold when caches could be dropped). It prints
img/s, the ratio (b)/(a), peak GPU memory and peak host RSS.

Defaults per device:

* CUDA: ResNet-18, 224 px crops of 256 px shards, bf16 autocast, channels_last, batch 256
  (target: ratio >= 0.95 eager and compiled, warm);
* CPU: the digits CNN, 32 px crops of 36 px RGB shards, batch 256 (target: data-path overhead
  <= 10% of the in-memory ceiling, i.e. ratio >= 0.90).

It needs only torch, torchvision and numpy (nothing else is imported), so it runs on a bare GPU
host: ``python bench/train_throughput.py`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.data.synthetic import images as synthetic_images
from ml.model.factory import build_model
from ml.training.augment import augment
from ml.training.loader import Loader, ShardSet
from ml.training.loop import FitConfig, fit
from ml.training.shards import ShardWriter, capacity, into_folder


def write_shards(folder: Path, rows: int, store: int, shard_mb: float) -> ShardSet:
    """``rows`` synthetic RGB images at ``store`` px as shards in ``folder`` (generated in chunks)."""
    writer = ShardWriter((store, store, 3), capacity(store, 3, shard_mb), into_folder(folder))
    labels = []
    for start in range(0, rows, 2048):
        pixels, chunk_labels = synthetic_images(min(2048, rows - start), store, seed=start)
        for image in pixels:
            writer.add(image)
        labels.append(chunk_labels)
    infos = writer.close()
    shard = np.concatenate([np.full(info.rows, i) for i, info in enumerate(infos)])
    row = np.concatenate([np.arange(info.rows) for info in infos])
    return ShardSet(tuple(folder / i.name for i in infos), shard, row, np.concatenate(labels), (store, store, 3))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ceiling(arch: str, size: int, batch: int, steps: int, warmup: int, device: torch.device, compiled: bool) -> float:
    """img/s of the bare training step on one batch already on the device."""
    torch.manual_seed(0)
    model = build_model(arch, 3, 10).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    forward = torch.compile(model) if compiled else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    started = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            started = time.perf_counter()
        with autocast:
            loss = torch.nn.functional.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return steps * batch / (time.perf_counter() - started)


def trainer(
    data: ShardSet, arch: str, size: int, batch: int, warmup: int, device: torch.device, compiled: bool, threads: int
) -> float:
    """img/s of ct's loop from the shards, over the steps after ``warmup``."""
    torch.manual_seed(0)
    model = build_model(arch, 3, 10)
    loader = Loader(data, batch, device, seed=0, ring=4, threads=threads, resident_bytes=0)
    cfg = FitConfig(epochs=1, batch_size=batch, lr=1e-3, weight_decay=0.0, seed=0, size=size,
                    augment="resized_crop", flip=True, compile=compiled, checkpoint_seconds=1e12)  # fmt: skip
    marks: dict[str, float] = {}
    last = len(loader) - 1

    def on_step(_epoch: int, step: int) -> None:
        if step in (warmup - 1, last):
            sync(device)
            marks["start" if step == warmup - 1 else "end"] = time.perf_counter()

    fit(model, loader, cfg, device, "bench", on_step=on_step)
    return (last - warmup + 1) * batch / (marks["end"] - marks["start"])  # every batch is full


def drop_caches(paths: tuple[Path, ...]) -> bool:
    """Evict the shards from the page cache: every cache as root, else the shards' own pages.

    ``POSIX_FADV_DONTNEED`` drops a file's clean cached pages without any privilege, so a cold read
    can be measured on Linux as any user. False where neither is possible.
    """
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        pass
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def disk_rate(data: ShardSet) -> float:
    started, total = time.perf_counter(), 0
    for path in data.paths:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 24):
                total += len(chunk)
    return total / (time.perf_counter() - started) / 1e9


def main() -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18" if cuda else "digits_cnn")
    parser.add_argument("--size", type=int, default=224 if cuda else 32)
    parser.add_argument("--store", type=int, default=256 if cuda else 36)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60 if cuda else 80, help="timed steps")
    parser.add_argument("--warmup", type=int, default=15 if cuda else 8)
    parser.add_argument("--threads", type=int, default=4 if cuda else 1, help="loader threads")
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"])
    parser.add_argument("--dir", default=None, help="where to write the shards (default: a temporary folder)")
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    rows = (args.warmup + args.steps) * args.batch
    target = 0.95 if cuda else 0.90
    print(f"device {torch.cuda.get_device_name() if cuda else f'cpu ({torch.get_num_threads()} threads)'}, "
          f"torch {torch.__version__}, {args.arch} at {args.size} px from {args.store} px shards, batch {args.batch}, "
          f"{rows:,} images", flush=True)  # fmt: skip
    ok = True
    with tempfile.TemporaryDirectory(prefix="ct-train-bench-", dir=args.dir) as tmp:
        data = write_shards(Path(tmp), rows, args.store, shard_mb=64)
        print(f"shards: {len(data.paths)} files, {data.nbytes / 1e9:.2f} GB", flush=True)
        cold = drop_caches(data.paths)
        print(f"disk read {'(cold)' if cold else '(warm: caches cannot be dropped here)'}: {disk_rate(data):.2f} GB/s")
        for mode in args.modes:
            compiled = mode == "compiled"
            top = ceiling(args.arch, args.size, args.batch, args.steps, args.warmup, device, compiled)
            trainer(data, args.arch, args.size, args.batch, args.warmup, device, compiled, args.threads)  # warm cache
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            mine = trainer(data, args.arch, args.size, args.batch, args.warmup, device, compiled, args.threads)
            gpu = f", GPU peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else ""
            ratio = mine / top
            print(f"{mode:9s} (a) ceiling {top:8.0f} img/s   (b) ct from shards, warm {mine:8.0f} img/s   "
                  f"ratio {ratio:.3f}{gpu}", flush=True)  # fmt: skip
            ok &= ratio >= target
            print(f"{'PASS' if ratio >= target else 'FAIL'}  {mode}: (b)/(a) >= {target}: {ratio:.3f}", flush=True)
            if cold and drop_caches(data.paths):
                cold_rate = trainer(data, args.arch, args.size, args.batch, args.warmup, device, compiled, args.threads)
                print(f"{mode:9s} (b) cold {cold_rate:8.0f} img/s (ratio {cold_rate / top:.3f}) next to the disk above")
    print(f"host peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    # The augmentation alone, for reference: what the device spends per batch on crops and flips.
    sample = torch.randint(0, 256, (args.batch, args.store, args.store, 3), dtype=torch.uint8, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    sync(device)
    started = time.perf_counter()
    for _ in range(10):
        augment(sample, args.size, generator, "resized_crop", flip=True)
    sync(device)
    print(f"augmentation alone: {10 * args.batch / (time.perf_counter() - started):.0f} img/s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
