"""Start the embedded Airflow for real and watch continuous training happen with no manual trigger.

``airflow standalone`` runs the scheduler, dag-processor, triggerer and api-server. The test commits
a landing batch and waits for the triggerer's watcher to start ``ct_ingest``, whose asset event
must then start ``ct_retrain``, with both ending in success.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ct_airflow.local import embedded_env
from tests.conftest import free_port

pytestmark = pytest.mark.integration
TIMEOUT_S = 600


def dag_runs(db: Path) -> dict[str, list[tuple[str, str]]]:
    if not db.exists():
        return {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        try:
            rows = conn.execute("SELECT dag_id, run_type, state FROM dag_run ORDER BY id").fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return {}
    runs: dict[str, list[tuple[str, str]]] = {}
    for dag_id, run_type, state in rows:
        runs.setdefault(dag_id, []).append((run_type, state))
    return runs


def test_a_committed_batch_flows_through_ingest_and_retrain(tmp_path: Path) -> None:
    home = tmp_path / "ct"
    port = free_port()
    env = {**os.environ, **embedded_env(home, refresh_interval=2)}
    env.update({
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
    })  # fmt: skip
    (home / "airflow").mkdir(parents=True)
    bindir = Path(sys.executable).parent
    subprocess.run([str(bindir / "airflow"), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    log_path = tmp_path / "standalone.log"
    with open(log_path, "wb") as log:
        airflow = subprocess.Popen([str(bindir / "airflow"), "standalone"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        # Commit a batch the way a producer would; nobody triggers anything by hand.
        code = (
            "from ml.config import load_settings; from ml.storage import Lake; from ml.demo import digits, write_batch;"
            "images, labels = digits(); write_batch(Lake.from_uri(load_settings().lake_uri), 'live-1', images[:500], labels[:500])"
        )
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        db = home / "airflow" / "airflow.db"
        deadline = time.monotonic() + TIMEOUT_S
        runs: dict[str, list[tuple[str, str]]] = {}
        while time.monotonic() < deadline:
            runs = dag_runs(db)
            finished = [
                s for t, s in runs.get("ct_retrain", []) if t == "asset_triggered" and s in ("success", "failed")
            ]
            if finished or any(s == "failed" for _, s in runs.get("ct_ingest", [])):
                break
            if airflow.poll() is not None:
                pytest.fail(f"airflow standalone exited {airflow.returncode}; see {log_path}")
            time.sleep(3)
        assert runs.get("ct_ingest") == [("asset_triggered", "success")], (runs, log_path.read_text()[-3000:])
        # With catchup off, the daily cron also runs once when the DAG first appears: with no new
        # data it must end in success (its steps skipped), never failed.
        retrain_runs = runs.get("ct_retrain", [])
        assert ("asset_triggered", "success") in retrain_runs, (runs, log_path.read_text()[-3000:])
        assert all(state == "success" for _, state in retrain_runs), runs
        gates = list((home / "lake" / "reports" / "ct_retrain").glob("*/gate.json"))
        assert len(gates) == 1 and '"decision": "promote"' in gates[0].read_text()
    finally:
        os.killpg(airflow.pid, signal.SIGTERM)
        try:
            airflow.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(airflow.pid, signal.SIGKILL)
