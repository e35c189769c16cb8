"""Drift: an Evidently report comparing the new batches with what the champion was trained on.

Outputs ``reports/ct_retrain/<run_key>/drift.json`` (verdict, share, and every per-feature score,
kept even when below threshold so trends can be plotted) and ``drift.html``.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml import layout
from ml.config import DriftConfig, Settings
from ml.ingest import read_manifest
from ml.storage import Lake
from ml.window import Window

log = logging.getLogger(__name__)

CATEGORICAL = ("label",)
EMBEDDINGS = "embeddings"


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
    # Constant columns (e.g. every image 8x8) make Evidently divide by a zero spread; the scores stay right.
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
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
    return summarise(per_feature, cfg, len(current), len(reference)), snapshot


def summarise(
    per_feature: dict[str, dict[str, Any]], cfg: DriftConfig, current_rows: int, reference_rows: int
) -> dict[str, Any]:
    """The window drifts when enough image statistics drift, or the label mix, or the embeddings do."""
    stats = {name: f for name, f in per_feature.items() if name not in CATEGORICAL and name != EMBEDDINGS}
    share = sum(f["drifted"] for f in stats.values()) / len(stats) if stats else 0.0
    groups = {
        "image_stats": {
            "share": share,
            "threshold": cfg.drift_share,
            "drifted": bool(stats) and share >= cfg.drift_share,
        },
        **{
            name: {"drifted": per_feature[name]["drifted"]}
            for name in (*CATEGORICAL, EMBEDDINGS)
            if name in per_feature
        },
    }
    return {
        "drift_detected": any(g["drifted"] for g in groups.values()),
        "drifted_share": share,
        "drift_share_threshold": cfg.drift_share,
        "drifted_features": sorted(name for name, f in per_feature.items() if f["drifted"]),
        "groups": groups,
        "features": per_feature,
        "current_rows": current_rows,
        "reference_rows": reference_rows,
    }


def embedding_drift(current: np.ndarray, reference: np.ndarray, cfg: DriftConfig) -> dict[str, Any]:
    """Evidently's embedding drift method, called directly: its Report always runs t-SNE (20 s+)."""
    import pandas as pd
    from evidently.legacy.metrics.data_drift import embedding_drift_methods as methods

    rng = np.random.default_rng(cfg.seed)

    def frame(rows: np.ndarray) -> pd.DataFrame:
        if len(rows) > cfg.embedding_max_rows:
            rows = rows[rng.choice(len(rows), cfg.embedding_max_rows, replace=False)]
        return pd.DataFrame(rows, columns=[f"e{i}" for i in range(rows.shape[1])])

    method = getattr(methods, cfg.embedding_method)(threshold=cfg.embedding_threshold)
    # Evidently mutates its inputs: hand it fresh frames.
    score, drifted, name = method(frame(current), frame(reference))
    return {"method": f"{cfg.embedding_method} ({name})", "score": float(score), "threshold": cfg.embedding_threshold,
            "drifted": bool(drifted)}  # fmt: skip


def detect_drift(
    lake: Lake,
    settings: Settings,
    window: Window,
    champion_model: Any = None,
    champion_accuracy: float | None = None,
) -> dict[str, Any]:
    """Compare the window's new batches with the champion's training data and store the report.

    With the champion model at hand, also compare its embeddings of new and reference images, and
    measure its accuracy on the new labelled rows (none of which it was trained on).
    """
    cfg = settings.drift
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
    quality = None
    if champion_model is not None:
        from ml.data import load_split
        from ml.embed import embed_and_predict
        from ml.train import pick_device

        device = pick_device(settings.train.device)
        new_rows = load_split(lake, window.new_batches, None, settings.labels)
        # The champion never trained on val/test rows: an unbiased reference for its embeddings.
        held_out = [load_split(lake, window.reference_batches, part, settings.labels) for part in ("val", "test")]
        new_emb, new_pred = embed_and_predict(champion_model, new_rows.images, device)
        ref_emb = np.concatenate([embed_and_predict(champion_model, h.images, device)[0] for h in held_out if len(h)])
        if cfg.embeddings:
            result["features"][EMBEDDINGS] = embedding_drift(new_emb, ref_emb, cfg)
            result = summarise(result["features"], cfg, result["current_rows"], result["reference_rows"])
        quality = {
            "champion_version": window.champion_version,
            "accuracy_on_new": float((new_pred == new_rows.labels).mean()) if len(new_rows) else None,
            "recorded_accuracy": champion_accuracy,
            "rows": len(new_rows),
        }
    verdict = {**base, **result, "quality": quality}
    html_key = layout.report(layout.RETRAIN_DAG, window.run_key, "drift.html")
    with tempfile.TemporaryDirectory(prefix="ct-drift-") as tmp:
        html = Path(tmp) / "drift.html"
        snapshot.save_html(str(html))  # a Path silently writes nothing in evidently 0.7
        lake.write_file(html_key, html)
    verdict["html_uri"] = lake.uri(html_key)
    lake.write_json(json_key, verdict)
    log.info("drift %s: %s, drifted %s", window.run_key, result["groups"], result["drifted_features"])
    return {**verdict, "report_uri": lake.uri(json_key)}
