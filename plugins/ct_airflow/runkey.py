"""Derive a step's ``run_key`` and its inputs from the Airflow context.

A live run's key is the DAG run's id made safe for paths: stable across retries and clears of the
same run, unique across runs. For scheduled runs the id carries the data interval end; for
asset-triggered runs (which have no logical date) it carries the run's creation time.

A backfill run is a replay: its key is ``backfill__<logical date>.<replay id>``, where the replay id
digests everything its decision depends on besides the data (the settings, its overrides,
``force_retrain``; :func:`ml.config.decision_digest`). A retry or a plain rerun keeps the key and
reuses what it recorded; a rerun with a new conf or a changed configuration gets a new key, so it
decides afresh and the earlier attempt stays recorded beside it. A live run that a backfill
reprocesses (Airflow turns it into a backfill run, keeping its id) gets a replay key too: its live
records are never reused or overwritten.
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
    """The time a run stands for, as ISO 8601: its logical date, else when it was due to run (asset runs).

    ct_retrain's cron trigger timetable puts a scheduled or backfill run's logical date on its tick
    (the data interval end); a manual run's logical date is the one it was triggered with.
    """
    dag_run = context.get("dag_run")
    when = context.get("logical_date") or getattr(dag_run, "logical_date", None) or getattr(dag_run, "run_after", None)
    return when.isoformat() if when is not None else None


def replay_run_key(context: Mapping[str, Any], replay_id: str) -> str:
    """A backfill run's key: its logical date and its replay's id (see the module's docstring)."""
    return f"{run_key_from_run_id(f'backfill__{run_time(context)}')}.{replay_id}"
