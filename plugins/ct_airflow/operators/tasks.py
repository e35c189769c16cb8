"""Small TaskFlow tasks that turn a step's result into Airflow outcomes (asset events, failures)."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from airflow.task.trigger_rule import TriggerRule

from ct_airflow.assets import CURATED

log = logging.getLogger(__name__)


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
        from ct_airflow.ui.links import WEBAPP_PREFIX, airflow_base_url

        lines = [f"{q['batch_id']}: {', '.join(q['failed_rules'])} (report: {q['report_uri']})" for q in quarantined]
        raise AirflowFailException("batch quarantined, champion untouched:\n" + "\n".join(lines)
                                   + f"\nrules, sample rows and how to re-ingest: {airflow_base_url()}{WEBAPP_PREFIX}/data")  # fmt: skip


def final_decision(ti: Any) -> dict[str, Any]:
    """The run's last word on the champion: the settled approval if there was one, else the gate."""
    return ti.xcom_pull(task_ids="apply_approval", default=None) or ti.xcom_pull(task_ids="gate", default=None) or {}


# The two outcome tasks make a promote and a reject look different in the grid: exactly one of them
# succeeds, and its log's first line is the decision and its reason (the other is skipped with it).
@task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, retries=0)
def promoted(ti: Any = None) -> str:
    """Succeeds when this run moved ``@champion``; skipped otherwise."""
    decision = final_decision(ti)
    line = decision.get("headline") or repr(decision)
    if decision.get("decision") != "promote":
        raise AirflowSkipException(f"the champion did not move: {line}")
    log.info("%s", line)
    return line


@task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, retries=0)
def champion_kept(ti: Any = None) -> str:
    """Succeeds when this run left ``@champion`` where it was (reject, expired); skipped when it promoted."""
    decision = final_decision(ti)
    line = decision.get("headline") or repr(decision)
    if decision.get("decision") == "promote":
        raise AirflowSkipException(f"the champion moved: {line}")
    log.info("%s", line)
    return line
