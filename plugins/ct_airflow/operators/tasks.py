"""Small TaskFlow tasks that turn a step's result into Airflow outcomes (asset events, failures)."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from airflow.task.trigger_rule import TriggerRule

from ct_airflow.assets import CHAMPION, CURATED, LIVE_ALARM

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


def champion_event(record: dict[str, Any]) -> dict[str, Any]:
    """The extra of a ``ct_champion`` event for a decision that moved the alias (gate, rollback or forced promotion)."""
    from ml.config import load_settings

    version = str(record["candidate_version"])
    return {
        "version": version,
        "model_uri": f"models:/{load_settings().model_name}/{version}",
        "previous_version": record.get("champion_version"),
        "action": record.get("kind") if record.get("kind") in ("rollback", "promote") else "gate",
        "run_key": record.get("run_key"),
    }


def final_decision(ti: Any) -> dict[str, Any]:
    """The run's last word on the champion: the settled approval if there was one, else the gate."""
    return ti.xcom_pull(task_ids="apply_approval", default=None) or ti.xcom_pull(task_ids="gate", default=None) or {}


# The two outcome tasks make a promote and a reject look different in the grid: exactly one of them
# succeeds, and its log's first line is the decision and its reason (the other is skipped with it).
@task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, retries=0, outlets=[CHAMPION])
def promoted(ti: Any = None, outlet_events: Any = None) -> str:
    """Succeeds when this run moved ``@champion``, with a ``ct_champion`` event; skipped otherwise."""
    decision = final_decision(ti)
    line = decision.get("headline") or repr(decision)
    if decision.get("decision") != "promote":
        raise AirflowSkipException(f"the champion did not move: {line}")
    outlet_events[CHAMPION].extra = champion_event(decision)
    log.info("%s", line)
    return line


@task(retries=0, outlets=[CHAMPION])
def champion_moved(result: dict[str, Any], outlet_events: Any = None) -> str:
    """After a rollback or forced promotion: the ``ct_champion`` event, naming the version now serving."""
    extra = champion_event(result)
    outlet_events[CHAMPION].extra = extra
    log.info("@champion is v%s (%s, was v%s)", extra["version"], extra["action"], extra["previous_version"])
    return str(extra["version"])


@task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, retries=0)
def champion_kept(ti: Any = None) -> str:
    """Succeeds when this run left ``@champion`` where it was (reject, expired); skipped when it promoted."""
    decision = final_decision(ti)
    line = decision.get("headline") or repr(decision)
    if decision.get("decision") == "promote":
        raise AirflowSkipException(f"the champion moved: {line}")
    log.info("%s", line)
    return line


@task(retries=0, outlets=[LIVE_ALARM])
def live_alarm(result: dict[str, Any], outlet_events: Any = None, dag_run: Any = None) -> list[str]:
    """A ``ct_live_alarm`` event when ct_monitor raised alarms (it starts ct_retrain); skipped otherwise."""
    from ct_airflow.runkey import is_backfill

    triggers = [a["trigger"] for a in result.get("alarms") or []]
    if not triggers:
        raise AirflowSkipException("no alarm: the champion holds up on its live traffic")
    if is_backfill({"dag_run": dag_run, "run_id": getattr(dag_run, "run_id", "")}):
        raise AirflowSkipException(f"a backfill of ct_monitor retrains nothing (it saw {triggers})")
    outlet_events[LIVE_ALARM].extra = {"alarms": triggers, "monitor_run_key": result.get("run_key"),
                                       "champion_version": result.get("champion_version")}  # fmt: skip
    for alarm in result["alarms"]:
        log.info("live alarm: %s", alarm["reason"])
    return triggers


@task(retries=0)
def serving_problems(result: dict[str, Any]) -> None:
    """Fail (and so notify, like any failed ct task) when the prediction service reported problems since the last run."""
    problems = result.get("problems") or []
    if problems:  # the first line is what a notification shows: the latest problem, and how many there were
        lines = [f"{p.get('kind')}: {p.get('message')}" for p in reversed(problems[-10:])]
        more = f" (and {len(problems) - 1} more, below)" if len(problems) > 1 else ""
        raise AirflowFailException(f"prediction service: {lines[0]}{more}\n" + "\n".join(lines[1:]))
