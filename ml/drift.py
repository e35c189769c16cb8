"""Drift: an Evidently report comparing the new batches with what the champion was trained on.

Outputs ``reports/ct_retrain/<run_key>/drift.json`` (verdict, share, and every per-feature score,
kept even when below threshold so trends can be plotted) and ``drift.html``.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from ml import layout
from ml.config import DriftConfig
from ml.ingest import read_manifest
from ml.storage import Lake
from ml.window import Window

log = logging.getLogger(__name__)

CATEGORICAL = ("label",)


def manifests(lake: Lake, batch_ids: list[str], split: str | None = None) -> pd.DataFrame:
    frames = [read_manifest(lake, b) for b in batch_ids]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if split is not None and not frame.empty:
        frame = frame[frame["split"] == split]
    return frame


def _is_drifted(method: str, value: float, threshold: float) -> bool:
    # p-value tests flag drift below the threshold; distances at or above it.
    return value < threshold if "p_value" in method else value >= threshold


def compare(current: pd.DataFrame, reference: pd.DataFrame, cfg: DriftConfig) -> tuple[dict[str, Any], Any]:
    """Run Evidently on the configured features; returns (verdict dict, the Evidently snapshot)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    features = list(cfg.features)
    numeric = [f for f in features if f not in CATEGORICAL]
    categorical = [f for f in features if f in CATEGORICAL]

    def sample(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame[features]
        return frame.sample(cfg.max_rows, random_state=cfg.seed) if len(frame) > cfg.max_rows else frame

    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    preset = DataDriftPreset(
        drift_share=cfg.drift_share,
        num_method=cfg.num_method,
        num_threshold=cfg.num_threshold,
        cat_method=cfg.cat_method,
        cat_threshold=cfg.cat_threshold,
        per_column_method=dict(cfg.per_column_method) or None,
        per_column_threshold=dict(cfg.per_column_threshold) or None,
    )
    snapshot = Report([preset]).run(
        Dataset.from_pandas(sample(current), data_definition=definition),
        Dataset.from_pandas(sample(reference), data_definition=definition),
    )
    per_feature: dict[str, dict[str, Any]] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config.get("type", "").endswith("ValueDrift"):
            value = float(metric["value"])
            per_feature[config["column"]] = {
                "method": config["method"],
                "score": value,
                "threshold": float(config["threshold"]),
                "drifted": _is_drifted(config["method"], value, float(config["threshold"])),
            }
    drifted = sorted(name for name, f in per_feature.items() if f["drifted"])
    share = len(drifted) / len(per_feature) if per_feature else 0.0
    verdict = {
        "drift_detected": share >= cfg.drift_share,
        "drifted_share": share,
        "drift_share_threshold": cfg.drift_share,
        "drifted_features": drifted,
        "features": per_feature,
        "current_rows": len(current),
        "reference_rows": len(reference),
    }
    return verdict, snapshot


def detect_drift(lake: Lake, cfg: DriftConfig, window: Window) -> dict[str, Any]:
    """Compare the window's new batches with the champion's training data and store the report."""
    json_key = layout.report(layout.RETRAIN_DAG, window.run_key, "drift.json")
    base = {"run_key": window.run_key, "new_batches": window.new_batches, "reference_batches": window.reference_batches}
    if not window.new_batches or not window.reference_batches:
        reason = "no new batches" if not window.new_batches else "no champion to compare with"
        verdict = {**base, "drift_detected": False, "skipped": reason, "features": {}}
        lake.write_json(json_key, verdict)
        return {**verdict, "report_uri": lake.uri(json_key)}

    current = manifests(lake, window.new_batches)
    reference = manifests(lake, window.reference_batches, split="train")
    result, snapshot = compare(current, reference, cfg)
    verdict = {**base, **result}
    html_key = layout.report(layout.RETRAIN_DAG, window.run_key, "drift.html")
    with tempfile.TemporaryDirectory(prefix="ct-drift-") as tmp:
        html = Path(tmp) / "drift.html"
        snapshot.save_html(str(html))  # a Path silently writes nothing in evidently 0.7
        lake.write_file(html_key, html)
    verdict["html_uri"] = lake.uri(html_key)
    lake.write_json(json_key, verdict)
    log.info("drift %s: share %.2f, drifted %s", window.run_key, result["drifted_share"], result["drifted_features"])
    return {**verdict, "report_uri": lake.uri(json_key)}
