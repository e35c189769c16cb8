"""Validation plus drift on a 100k- and a 1M-row manifest: wall time and peak memory, next to numpy/scipy.

For each size, three separate processes (so each peak RSS is its own):
* ``ct``: what the ingest and drift steps run: the two GX suites on the whole manifest, then the
  Evidently drift report on the configured features (sampled to ``drift.max_rows`` per side);
* ``direct``: the same checks written by hand in numpy/pandas, and the same distances computed by
  scipy on every row (no sampling): a floor for what the libraries cost.

Target: 1M rows in under 15 s for ``ct``. Run: ``.venv/bin/python bench/validate_drift.py``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SIZES = (100_000, 1_000_000)
TARGET_S = 15.0


def manifest(rows: int, seed: int, brightness: float = 0.0) -> pd.DataFrame:
    """A synthetic manifest with the columns and value ranges ingest writes."""
    from ml.data.ingest import MANIFEST_COLUMNS

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, rows).astype(str)
    mean = np.clip(rng.normal(55 + brightness, 12, rows), 0, 255)
    frame = pd.DataFrame({
        "batch_id": "bench", "uri": [f"s3://lake/landing/bench/images/{lab}/{i:08d}.png" for i, lab in enumerate(labels)],
        "label": labels, "path_ok": True, "decode_ok": True, "mode_ok": True, "error": "", "width": 8, "height": 8,
        "channels": 1, "mode": "L", "mean": mean, "std": np.clip(rng.normal(90, 8, rows), 0, 128), "min": 0.0,
        "max": 240.0, "bright": np.clip(mean / 255 + rng.normal(0, 0.03, rows), 0, 1), "bytes": rng.integers(150, 400, rows),
        "sha256": [f"{x:064x}" for x in rng.integers(0, 2**63, rows, dtype=np.int64)], "dup_of": "",
        "split": rng.choice(["train", "val", "test"], rows, p=[0.7, 0.1, 0.2]), "row": np.arange(rows),
    })  # fmt: skip
    return frame.astype({"decode_ok": "boolean", "mode_ok": "boolean"})[MANIFEST_COLUMNS]


def run_ct(rows: int) -> dict[str, float]:
    from ml.config import load_settings
    from ml.data.validate import validate_manifest
    from ml.decide.drift import compare

    settings = load_settings({"CT_HOME": "/tmp/ct-bench", "CT_INGEST__MAX_CLASS_SHARE": "0.5"})
    current, reference = manifest(rows, 1, brightness=4.0), manifest(rows, 2)
    started = time.perf_counter()
    outcome = validate_manifest(current, settings)
    validated = time.perf_counter()
    verdict, _ = compare(current, reference, settings.drift)
    done = time.perf_counter()
    assert outcome.success, outcome.summary()
    return {"validate_s": validated - started, "drift_s": done - validated, "total_s": done - started,
            "drifted": float(verdict["drift_detected"])}  # fmt: skip


def run_direct(rows: int) -> dict[str, float]:
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance

    current, reference = manifest(rows, 1, brightness=4.0), manifest(rows, 2)
    labels = [str(d) for d in range(10)]
    started = time.perf_counter()
    checks = [
        set(current.columns) == set(reference.columns),
        10 <= len(current) <= 5_000_000,
        bool(current["path_ok"].all()), bool(current["decode_ok"].all()), bool(current["mode_ok"].all()),
        bool(current["label"].isin(labels).all()), bool(current["uri"].is_unique), bool((current["dup_of"] == "").all()),
        bool(current["width"].between(4, 8192).all()), bool(current["height"].between(4, 8192).all()),
        bool(current["mean"].between(0, 255).all()), bool(current["std"].between(0, 128).all()),
        bool((current["label"].value_counts(normalize=True) <= 0.5).all()),
    ]  # fmt: skip
    validated = time.perf_counter()
    scores = {c: wasserstein_distance(current[c], reference[c]) / max(float(reference[c].std()), 1e-3)
              for c in ("mean", "std", "bright", "width", "height")}  # fmt: skip
    p = current["label"].value_counts(normalize=True).reindex(labels, fill_value=0)
    q = reference["label"].value_counts(normalize=True).reindex(labels, fill_value=0)
    scores["label"] = float(jensenshannon(p, q))
    done = time.perf_counter()
    assert all(checks)
    return {"validate_s": validated - started, "drift_s": done - validated, "total_s": done - started,
            "drifted": float(sum(s >= 0.3 for s in scores.values()) >= 3)}  # fmt: skip


def child(kind: str, rows: int) -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    result = (run_ct if kind == "ct" else run_direct)(rows)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> int:
    if len(sys.argv) == 3:
        child(sys.argv[1], int(sys.argv[2]))
        return 0
    print(f"{'rows':>9}  {'what':6}  {'validate s':>10}  {'drift s':>8}  {'total s':>8}  {'peak RSS MB':>11}")
    worst = 0.0
    for rows in SIZES:
        for kind in ("ct", "direct"):
            out = subprocess.run([sys.executable, __file__, kind, str(rows)], capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)  # fmt: skip
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{rows:>9,}  {kind:6}  {r['validate_s']:>10.2f}  {r['drift_s']:>8.2f}  {r['total_s']:>8.2f}  {r['peak_rss_mb']:>11.0f}"
            )
            if kind == "ct" and rows == SIZES[-1]:
                worst = r["total_s"]
    print("(the synthetic manifests' set-up is excluded; each line is its own process)")
    print(
        f"ct on {SIZES[-1]:,} rows: {worst:.1f} s; target < {TARGET_S:.0f} s: {'OK' if worst < TARGET_S else 'OVER TARGET'}"
    )
    return 0 if worst < TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
