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
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ml import layout
from ml.config import Settings
from ml.data.curated import Rows, ShardReader, join_rows, rows_of
from ml.data.window import Window, load_window
from ml.decide.gate import metrics
from ml.errors import CtError
from ml.release import registry
from ml.storage import Lake

log = logging.getLogger(__name__)

PARITY_BATCH = 256


def eval_key(run_key: str) -> str:
    return layout.report(layout.RETRAIN_DAG, run_key, "eval.json")


def eval_rows(reader: ShardReader, settings: Settings, window: Window) -> Rows:
    """The evaluation rows of a window: test splits of its newest batches, plus the golden set if any.

    Rows come from where the gate counts them (``source``: ``recent`` or ``golden``); their pixels
    are streamed, centre-cropped to the model's input size, whenever a model scores them.
    """
    lake, size = reader.lake, settings.image.size
    rows = rows_of(reader, window.eval_batches, "test", settings.labels, size=size, source="recent")
    golden = settings.gate.golden_set
    if golden:
        if not lake.exists(layout.manifest(golden, layout.GOLDEN)):
            raise CtError(
                f"gate.golden_set={golden!r} but {lake.uri(layout.manifest(golden, layout.GOLDEN))} is missing"
            )
        frozen = rows_of(reader, [golden], None, settings.labels, root=layout.GOLDEN, size=size, source="golden")
        rows = join_rows(rows, frozen)
    return rows


def _score(settings: Settings, version: registry.VersionInfo, rows: Rows, serving: bool = False) -> dict[str, Any]:
    """Predictions (and costs) of one version on ``rows``; with ``serving``, its ONNX file checked against it."""
    from ml.learn.train import pick_device, predict

    device = pick_device(settings.train.device)
    with registry.downloaded(settings, version) as folder:
        model = registry.load_folder(settings, version, folder)
        pred = predict(model.to(device), rows.batches(), device)
        scored = {"version": version.version, "run_id": version.run_id, "pred": pred.tolist(),
                  "metrics": metrics(rows.labels, pred, settings.labels)}  # fmt: skip
        if serving:
            scored.update(_serving_checks(settings, folder, model, rows, pred))
            log.info("serving checks of v%s: ONNX %s; served %s", version.version, scored["onnx"], scored["served"])
    if settings.gate.max_latency_p95_ms is not None or settings.gate.max_size_mb is not None:
        probe = next(rows.batches(settings.gate.latency_batch_size), None)
        scored["cost"] = cost(model, probe, settings.gate.latency_batch_size)
    return scored


def _serving_checks(settings: Settings, folder: Path, model: Any, rows: Rows, pred: np.ndarray) -> dict[str, Any]:
    """The candidate's serving forms against the torch model on the evaluation rows.

    ``onnx``: its ONNX file's logits; ``served``: the labels its MLflow model answers when each row
    is sent as an image file (:func:`ml.learn.mlmodel.served_parity`). Either failing refuses it.
    """
    from ml.learn import mlmodel
    from ml.model import artifact

    files = artifact.locate(folder) or folder
    checks: dict[str, Any] = {}
    try:
        checks["onnx"] = artifact.onnx_parity(files, model, rows.batches(PARITY_BATCH))
    except artifact.ModelFileError as exc:
        checks["onnx"] = {"passed": False, "error": str(exc), "rows": 0}
    if not (folder / "MLmodel").is_file():
        checks["served"] = {
            "passed": False,
            "rows": 0,
            "error": "the version has no MLmodel: it is not an MLflow model",
        }
        return checks
    try:
        stored = replace(rows, size=None).batches(PARITY_BATCH)  # the stored squares, before the centre crop
        checks["served"] = mlmodel.served_parity(folder, stored, pred, settings.labels)
    except Exception as exc:  # noqa: BLE001 - whatever breaks the served form refuses the candidate, saying why
        checks["served"] = {"passed": False, "rows": 0, "error": f"{type(exc).__name__}: {exc}"}
    return checks


def evaluate(lake: Lake, settings: Settings, run_key: str) -> dict[str, Any]:
    """Evaluate once per run key: a rerun returns the pinned result instead of re-resolving the champion."""
    key = eval_key(run_key)
    if lake.exists(key):
        return _summary(lake.read_json(key), lake.uri(key), already_done=True)

    mlflow_client = registry.client(settings)
    candidate = registry.version_by_run_key(mlflow_client, settings.model_name, run_key)
    if candidate is None:
        raise CtError(f"run {run_key} registered no candidate; run its train step first")
    window = load_window(lake, run_key)
    if window.backfill:  # a replay scores the champion of its time, whatever holds the alias now
        version = window.champion_version
        champion = None if version is None else registry.get_version(mlflow_client, settings.model_name, version)
    else:
        champion = registry.champion(mlflow_client, settings.model_name)
    with ShardReader(lake) as reader:
        rows = eval_rows(reader, settings, window)
        record = _record(run_key, settings, window, rows, candidate, champion)
    lake.write_json(key, record)
    return _summary(record, lake.uri(key), already_done=False)


def _record(
    run_key: str,
    settings: Settings,
    window: Window,
    rows: Rows,
    candidate: registry.VersionInfo,
    champion: registry.VersionInfo | None,
) -> dict[str, Any]:
    return {
        "run_key": run_key,
        "labels": list(settings.labels),
        "eval_batches": window.eval_batches,
        "golden_set": settings.gate.golden_set,
        "train_batches": window.train_batches,
        "rows": rows.rows.to_dict(orient="list"),
        "y_true": rows.labels.tolist(),
        "candidate": _score(settings, candidate, rows, serving=True),
        "champion": _score(settings, champion, rows) if champion is not None else None,
    }


def rescore_champion(lake: Lake, settings: Settings, run_key: str, champion_version: str | None) -> dict[str, Any]:
    """Score a new champion on the rows this run already evaluated, and pin it in ``eval.json``.

    The gate calls this when ``@champion`` moved while it was deciding: the candidate's predictions
    stay, the rows stay, only the side it is compared with changes. The earlier champions are kept.
    """
    key = eval_key(run_key)
    record: dict[str, Any] = lake.read_json(key)
    with ShardReader(lake) as reader:
        rows = eval_rows(reader, settings, load_window(lake, run_key))
        if rows.rows["sha256"].tolist() != record["rows"]["sha256"]:
            raise CtError(
                f"the evaluation rows of {run_key} changed since {lake.uri(key)} was written; re-run evaluate"
            )
        previous = record.get("champion")
        record.setdefault("superseded_champions", []).append(previous["version"] if previous else None)
        if champion_version is None:
            record["champion"] = None
        else:
            mlflow_client = registry.client(settings)
            record["champion"] = _score(
                settings, registry.get_version(mlflow_client, settings.model_name, champion_version), rows
            )
    lake.write_json(key, record)
    log.info("re-scored %s against the new champion v%s on the same %d rows", run_key, champion_version, len(rows))
    return record


def cost(
    model: Any, images: np.ndarray | None, batch_size: int, repeats: int = 20, warmup: int = 3
) -> dict[str, float]:
    """CPU latency per batch (p50/p95 over ``repeats`` timed batches) and size: the same probe for every model."""
    import torch

    from ml.learn.train import to_tensor

    model = model.to("cpu").eval()
    sample = images[:batch_size] if images is not None and len(images) else np.zeros((batch_size, 8, 8, 1), np.uint8)
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
