"""Score the candidate and the champion on the same evaluation rows and keep every prediction.

The evaluation rows are the test splits of the window's newest batches plus, when configured, a
frozen golden set (``golden/<gate.golden_set>``). Both models are also costed the same way: CPU
p95 latency per batch of ``gate.latency_batch_size`` rows, and size in MB. Predictions are stored
per row in ``reports/ct_retrain/<run_key>/eval.json`` so the gate, and anyone auditing it later,
can recompute every number from the paired outcomes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ml import layout, registry
from ml.config import Settings
from ml.data import concat, load_split
from ml.errors import CtError
from ml.gate import metrics
from ml.storage import Lake
from ml.window import load_window

log = logging.getLogger(__name__)


def eval_key(run_key: str) -> str:
    return layout.report(layout.RETRAIN_DAG, run_key, "eval.json")


def evaluate(lake: Lake, settings: Settings, run_key: str) -> dict[str, Any]:
    """Evaluate once per run key: a rerun returns the pinned result instead of re-resolving the champion."""
    key = eval_key(run_key)
    if lake.exists(key):
        return _summary(lake.read_json(key), lake.uri(key), already_done=True)

    from ml.train import pick_device, predict

    mlflow_client = registry.client(settings)
    candidate = registry.version_by_run_key(mlflow_client, settings.model_name, run_key)
    if candidate is None:
        raise CtError(f"run {run_key} registered no candidate; run its train step first")
    champion = registry.champion(mlflow_client, settings.model_name)
    window = load_window(lake, run_key)
    rows = load_split(lake, window.eval_batches, "test", settings.labels)
    golden = settings.gate.golden_set
    if golden:
        if not lake.exists(layout.manifest(golden, layout.GOLDEN)):
            raise CtError(
                f"gate.golden_set={golden!r} but {lake.uri(layout.manifest(golden, layout.GOLDEN))} is missing"
            )
        rows = concat(rows, load_split(lake, [golden], None, settings.labels, root=layout.GOLDEN))
    device = pick_device(settings.train.device)

    record: dict[str, Any] = {
        "run_key": run_key,
        "labels": list(settings.labels),
        "eval_batches": window.eval_batches,
        "golden_set": golden,
        "train_batches": window.train_batches,
        "rows": rows.rows.to_dict(orient="list"),
        "y_true": rows.labels.tolist(),
        "candidate": {"version": candidate.version, "run_id": candidate.run_id},
        "champion": None,
    }
    candidate_pred = predict(registry.load_model(settings, candidate).to(device), rows.images, device)
    record["candidate"].update(
        pred=candidate_pred.tolist(), metrics=metrics(rows.labels, candidate_pred, settings.labels)
    )
    if champion is not None:
        champion_pred = predict(registry.load_model(settings, champion).to(device), rows.images, device)
        record["champion"] = {"version": champion.version, "run_id": champion.run_id, "pred": champion_pred.tolist(),
                              "metrics": metrics(rows.labels, champion_pred, settings.labels)}  # fmt: skip
    lake.write_json(key, record)
    return _summary(record, lake.uri(key), already_done=False)


def cost(model: Any, images: np.ndarray, batch_size: int, repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """CPU latency per batch (p50/p95 over ``repeats`` timed batches) and size: the same probe for every model."""
    import torch

    from ml.train import to_tensor

    model = model.to("cpu").eval()
    sample = images[:batch_size] if len(images) else np.zeros((batch_size, 8, 8, 1), np.uint8)
    batch = to_tensor(sample, "cpu")
    timings = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            started = time.perf_counter()
            model(batch)
            if i >= warmup:
                timings.append((time.perf_counter() - started) * 1000)
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return {
        "latency_p50_ms": float(np.percentile(timings, 50)),
        "latency_p95_ms": float(np.percentile(timings, 95)),
        "latency_batch_rows": float(len(sample)),
        "size_mb": size / 1e6,
    }


def _summary(record: dict[str, Any], uri: str, already_done: bool) -> dict[str, Any]:
    champion = record.get("champion")
    return {
        "eval_uri": uri,
        "rows": len(record["y_true"]),
        "candidate_version": record["candidate"]["version"],
        "candidate_accuracy": record["candidate"]["metrics"]["accuracy"],
        "champion_version": champion["version"] if champion else None,
        "champion_accuracy": champion["metrics"]["accuracy"] if champion else None,
        "already_done": already_done,
    }
