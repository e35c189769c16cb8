"""Host memory of training does not grow with the dataset: peak RSS at 200k images against 20k.

Each size runs in its own process: write that many synthetic 64 px RGB images as shards, then one
epoch of :func:`ml.training.loop.fit` on the CPU with a training-set budget of zero, which forces
the streaming loader (no resident copy). It prints each peak RSS and their ratio (target: within 10%).

Run: ``.venv/bin/python bench/train_memory.py`` (about five minutes on 2 cores).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = (20_000, 200_000)


def child(rows: int) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_throughput import write_shards

    from ml.model.factory import build_model
    from ml.training.loader import Loader
    from ml.training.loop import FitConfig, fit

    with tempfile.TemporaryDirectory(prefix="ct-mem-bench-") as tmp:
        data = write_shards(Path(tmp), rows, 64, shard_mb=64)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cpu = torch.device("cpu")
        loader = Loader(data, 256, cpu, seed=0, ring=4, threads=2, resident_bytes=0)
        assert not loader.resident
        cfg = FitConfig(epochs=1, batch_size=256, lr=1e-3, weight_decay=0.0, seed=0, size=56,
                        augment="resized_crop", flip=True, checkpoint_seconds=1e12)  # fmt: skip
        started = time.perf_counter()
        fit(build_model("digits_cnn", 3, 10), loader, cfg, cpu, "bench")
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "gb": data.nbytes / 1e9, "seconds": seconds, "peak_rss_mb": peak,
                      "rss_before_training_mb": before}))  # fmt: skip


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
        return 0
    results = []
    for rows in SIZES:
        done = subprocess.run([sys.executable, __file__, "--child", str(rows)], capture_output=True, text=True,
                              check=True)  # fmt: skip
        result = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(result)
        print(f"{rows:>8,} images ({result['gb']:.2f} GB of shards): one epoch in {result['seconds']:.0f} s "
              f"({rows / result['seconds']:.0f} img/s), peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
    ratio = results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
    ok = ratio <= 1.10
    print(f"{'PASS' if ok else 'FAIL'}  peak RSS at {SIZES[-1]:,} within 10% of {SIZES[0]:,}: x{ratio:.3f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
