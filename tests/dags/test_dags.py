"""DAG files: they import cleanly, stay light, and their wiring is what the docs say."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ["torch", "torchvision", "mlflow", "evidently", "great_expectations", "pandas", "sklearn"]


def test_dagbag_imports_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == {"ct_ingest", "ct_retrain", "ct_ops", "ct_monitor"}
    for dag in dagbag.dags.values():
        assert dag.doc_md and "###" in dag.doc_md, f"{dag.dag_id} needs doc_md for the UI"


def test_retrain_chain_and_schedule(dagbag) -> None:
    dag = dagbag.dags["ct_retrain"]
    order = ["drift", "decide", "train", "evaluate", "gate", "approval", "apply_approval"]
    outcomes = {"promoted", "champion_kept"}
    for upstream, downstream in itertools.pairwise(order):
        assert dag.get_task(upstream).downstream_task_ids - outcomes == {downstream}
    for outcome in outcomes:  # whether or not an approval was asked, exactly one of them succeeds
        assert dag.get_task(outcome).upstream_task_ids == {"gate", "apply_approval"}
        assert dag.get_task(outcome).trigger_rule == "none_failed_min_one_success"
    assert type(dag.get_task("approval")).__name__ == "CtApprovalOperator"
    assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"
    assert set(dag.params.keys()) == {"force_retrain", "settings"}


def test_the_loop_closes_through_assets(dagbag) -> None:
    """ct_monitor's alarm starts ct_retrain; every move of @champion (gate, rollback, forced) is a ct_champion event."""
    retrain = dagbag.dags["ct_retrain"]
    assert {a.name for a in retrain.timetable.asset_condition.objects} == {"ct_curated_batches", "ct_live_alarm"}
    assert [o.name for o in retrain.get_task("promoted").outlets] == ["ct_champion"]
    assert [o.name for o in dagbag.dags["ct_ops"].get_task("champion_moved").outlets] == ["ct_champion"]
    monitor = dagbag.dags["ct_monitor"]
    assert type(monitor.timetable).__name__ == "CronTriggerTimetable" and monitor.timetable.expression == "0 * * * *"
    assert monitor.get_task("monitor").downstream_task_ids == {"live_alarm", "serving_problems"}
    assert [o.name for o in monitor.get_task("live_alarm").outlets] == ["ct_live_alarm"]


def test_ingest_is_started_by_the_landing_watcher(dagbag) -> None:
    dag = dagbag.dags["ct_ingest"]
    watched = list(dag.timetable.asset_condition.objects)
    assert [a.name for a in watched] == ["ct_landing_batches"]
    assert [w.trigger.__class__.__name__ for w in watched[0].watchers] == ["NewLandingBatchTrigger"]
    assert [o.name for o in dag.get_task("publish_curated").outlets] == ["ct_curated_batches"]


def test_dag_and_plugin_modules_import_nothing_heavy() -> None:
    code = f"""
import sys, json, runpy
sys.path[:0] = [{str(REPO / "plugins")!r}]
for path in {[str(p) for p in sorted((REPO / "dags").glob("*.py"))]!r}:
    runpy.run_path(path)
import ct_plugin, ct_airflow.operators.step, ct_airflow.triggers, ct_airflow.operators.tasks, ct_airflow.launcher.local
print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
