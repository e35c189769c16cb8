"""Derive a step's ``run_key`` and its inputs from the Airflow context.

The key is the DAG run's id made safe for paths: stable across retries and clears of the same run,
unique across runs. For scheduled runs the id carries the data interval end; for asset-triggered
runs (which have no logical date) it carries the run's creation time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def run_key_from_run_id(run_id: str) -> str:
    return _UNSAFE.sub("-", run_id).strip("-.")


def run_key(context: Mapping[str, Any]) -> str:
    return run_key_from_run_id(str(context["run_id"]))


def is_backfill(context: Mapping[str, Any]) -> bool:
    dag_run = context.get("dag_run")
    run_type = str(getattr(dag_run, "run_type", "") or "")
    return run_type.endswith("backfill") or str(context.get("run_id", "")).startswith("backfill__")


def triggering_batch_ids(context: Mapping[str, Any]) -> list[str]:
    """Batch ids carried by the asset events that started this run (trigger payloads or task extras)."""
    found: list[str] = []
    events = context.get("triggering_asset_events") or {}
    for asset_events in events.values():
        for event in asset_events:
            extra = dict(getattr(event, "extra", None) or {})
            payload = extra["payload"] if isinstance(extra.get("payload"), dict) else extra
            found.extend(str(b) for b in payload.get("batch_ids", []))
    return list(dict.fromkeys(found))


def run_time(context: Mapping[str, Any]) -> str | None:
    """The time a run stands for: its data interval end, else when it was due to run (asset runs), as ISO 8601."""
    dag_run = context.get("dag_run")
    when = context.get("data_interval_end") or getattr(dag_run, "run_after", None)
    return when.isoformat() if when is not None else None
