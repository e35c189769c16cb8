"""Where things live in the lake: the one place that spells out the key layout."""

from __future__ import annotations

from ml.storage import join

LANDING = "landing"
CURATED = "curated"
QUARANTINE = "quarantine"
GOLDEN = "golden"
REPORTS = "reports"
STATE = "state"
COMMIT_MARKER = "_COMMITTED"

INGEST_DAG = "ct_ingest"
RETRAIN_DAG = "ct_retrain"
OPS_DAG = "ct_ops"

__all__ = ["join"]  # re-exported: callers build keys with layout.join


def landing(batch_id: str) -> str:
    return join(LANDING, batch_id)


def commit_marker(batch_id: str) -> str:
    return join(LANDING, batch_id, COMMIT_MARKER)


def manifest(batch_id: str, root: str = CURATED) -> str:
    return join(root, batch_id, "manifest.parquet")


def shard(batch_id: str, root: str = CURATED) -> str:
    return join(root, batch_id, "shards", "images.npy")


def golden_source(name: str) -> str:
    return join(GOLDEN, name, "source.json")


def quarantine(batch_id: str) -> str:
    return join(QUARANTINE, batch_id)


def quarantine_report(batch_id: str) -> str:
    return join(QUARANTINE, batch_id, "report.json")


def quarantine_manifest(batch_id: str) -> str:
    return join(QUARANTINE, batch_id, "manifest.parquet")


def report(dag_id: str, run_key: str, name: str) -> str:
    return join(REPORTS, dag_id, run_key, name)


def state(name: str) -> str:
    return join(STATE, name)
