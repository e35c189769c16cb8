"""``make demo``'s runs, seen the way the Airflow UI sees them after ``make up``.

The demo plays each day through ``dag.test(logical_date=<that day>)`` (:func:`ct_airflow.launcher.local.run_dag_test`)
with :func:`ct_airflow.launcher.local.task_logs_to_files` listening. Here one such run is played the same way,
in a process of its own as ``make demo`` is (pytest's output capture would otherwise stand between the
task and its log file), then read through Airflow's own REST API (the app the api-server serves,
in-process): the run's duration is its real one, not "logical date to now", and every task's log is
what the UI's log view gets from the api-server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAY = datetime(2026, 1, 1, 4, tzinfo=UTC)  # like the demo's day 1: long before the wall clock
PLAY_ONE_DAY = """
import json, sys
from datetime import datetime
from airflow.dag_processing.dagbag import DagBag
from ct_airflow.launcher.local import REPO, run_dag_test, task_logs_to_files

dag = DagBag(dag_folder=str(REPO / "dags")).dags["ct_ingest"]
with task_logs_to_files() as listener:
    run = run_dag_test(dag, datetime.fromisoformat(sys.argv[1]), run_conf={"batch_ids": [sys.argv[2]]})
print(json.dumps({"run_id": run.run_id, "state": str(run.state), "paths": [str(p) for p in listener.paths]}))
"""


@pytest.fixture
def api(airflow_db: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A client of the api-server's app, logged in (SimpleAuthManager, every user an admin for this test)."""
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    client = TestClient(create_app("core"))
    token = client.get("/auth/token").json()["access_token"]
    client.headers["Authorization"] = f"Bearer {token}"
    return client


def test_a_demo_run_has_its_real_duration_and_logs_the_ui_can_show(airflow_db, write_batch, api) -> None:  # type: ignore[no-untyped-def]
    batch_id = write_batch("demo-ui", 0, 60)
    env = {**os.environ, "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False"}  # as local.demo() sets it
    played = subprocess.run([sys.executable, "-c", PLAY_ONE_DAY, DAY.isoformat(), batch_id], env=env,
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert played.returncode == 0, played.stderr[-3000:]
    run = json.loads([line for line in played.stdout.splitlines() if line.startswith('{"run_id"')][-1])
    assert run["state"] == "success", played.stdout[-3000:]
    written = {Path(p) for p in run["paths"]}

    dag_run = api.get(f"/api/v2/dags/ct_ingest/dagRuns/{run['run_id']}").json()
    assert datetime.fromisoformat(dag_run["logical_date"]) == DAY  # the simulated day is kept
    duration = datetime.fromisoformat(dag_run["end_date"]) - datetime.fromisoformat(dag_run["start_date"])
    assert timedelta(0) < duration < timedelta(hours=1), dag_run

    tis = api.get(f"/api/v2/dags/ct_ingest/dagRuns/{run['run_id']}/taskInstances").json()["task_instances"]
    ran = {ti["task_id"]: ti for ti in tis if ti["state"] in ("success", "failed", "skipped") and ti["try_number"]}
    assert {"ingest", "publish_curated"} <= set(ran), tis
    logs = {}
    for task_id, ti in ran.items():
        url = f"/api/v2/dags/ct_ingest/dagRuns/{run['run_id']}/taskInstances/{task_id}/logs/{ti['try_number']}"
        response = api.get(url, headers={"Accept": "application/json"})
        assert response.status_code == 200, response.text
        events = [str(line.get("event", "")) for line in response.json()["content"]]
        logs[task_id] = text = "\n".join(events)
        # What the api-server read: a local file under base_log_folder, one the listener wrote.
        sources = [e for e in events if e.startswith("/")]
        assert sources and all(Path(s) in written for s in sources), text[:2000]
        assert "Log file not found" not in text and "Could not read served logs" not in text, text[:2000]
        assert "[DAG TEST]" not in text  # dag.test()'s own lines stay out of the task's log
        assert "\x1b[" not in text  # no terminal colour codes
    assert "python -m ml ingest" in logs["ingest"], logs["ingest"][-3000:]
    assert f"batch {batch_id} curated" in logs["ingest"], logs["ingest"][-3000:]  # the step's own stderr
