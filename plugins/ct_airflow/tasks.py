"""Small TaskFlow tasks that turn a step's result into Airflow outcomes (asset events, failures)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from ct_airflow.assets import CURATED


@task(outlets=[CURATED])
def publish_curated(result: dict[str, Any], outlet_events: Any = None) -> list[str]:
    """Emit one ``ct_curated_batches`` event carrying the curated batch ids; skip when there are none."""
    curated = list(result.get("curated", []))
    if not curated:
        raise AirflowSkipException("no batch was curated in this run")
    outlet_events[CURATED].extra = {"batch_ids": curated}
    return curated


@task(retries=0)
def fail_on_quarantine(result: dict[str, Any]) -> None:
    """Make a quarantined batch visible: the run fails with the rules that rejected it and where to look."""
    quarantined = result.get("quarantined", [])
    if quarantined:
        lines = [f"{q['batch_id']}: {', '.join(q['failed_rules'])} (report: {q['report_uri']})" for q in quarantined]
        raise AirflowFailException("batch quarantined, champion untouched:\n" + "\n".join(lines))
