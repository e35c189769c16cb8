"""Start the embedded Airflow for real and watch continuous training happen with no manual trigger.

The test starts exactly what ``make up`` starts (:func:`ct_airflow.local.service_commands`): the
scheduler, dag-processor, triggerer and api-server, and the MLflow UI. It commits a landing batch
and waits for the triggerer's watcher to start ``ct_ingest``, whose asset event must then start
``ct_retrain``, with both ending in success. All the while, no process those services started may
listen on anything but loopback.
"""

from __future__ import annotations

import ipaddress
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ct_airflow.local import embedded_env, service_commands, start_services, stop_services
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


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def listening_sockets(roots: list[int]) -> dict[tuple[str, int], str]:
    """Every TCP socket in LISTEN state held by the ``roots``, their descendants, or anything in their sessions.

    ``start_services`` gives each service its own session, so a helper that detaches from the process
    tree (re-parented to init) is still found by its session id.
    """
    procs: dict[int, psutil.Process] = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            procs.update({p.pid: p for p in [root, *root.children(recursive=True)]})
        except psutil.NoSuchProcess:
            continue
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) in roots:
                procs.setdefault(proc.pid, proc)
        except (ProcessLookupError, PermissionError):
            continue
    found: dict[tuple[str, int], str] = {}
    for proc in procs.values():
        try:
            sockets = proc.net_connections(kind="tcp")
            cmdline = " ".join(proc.cmdline()).strip()[:120]
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for sock in sockets:
            if sock.status == psutil.CONN_LISTEN:
                found[(sock.laddr.ip, sock.laddr.port)] = f"pid {proc.pid}: {cmdline}"
    return found


def test_a_committed_batch_flows_through_ingest_and_retrain(tmp_path: Path) -> None:
    home = tmp_path / "ct"
    port, mlflow_port = free_port(), free_port()
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
    log_path = tmp_path / "services.log"
    log = open(log_path, "w")  # the services write to it until they are stopped
    services = start_services(service_commands(env, mlflow_port=mlflow_port), env, log)
    roots = [s.process.pid for s in services]
    listening: dict[tuple[str, int], str] = {}

    def check_listeners() -> None:
        listening.update(listening_sockets(roots))
        exposed = {f"{ip}:{p}": who for (ip, p), who in listening.items() if not is_loopback(ip)}
        assert not exposed, f"listening beyond loopback: {exposed}"

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
            check_listeners()  # while ingest and retrain run, with every component (and its workers) up
            runs = dag_runs(db)
            finished = [
                s for t, s in runs.get("ct_retrain", []) if t == "asset_triggered" and s in ("success", "failed")
            ]
            if finished or any(s == "failed" for _, s in runs.get("ct_ingest", [])):
                break
            if stopped := [s.name for s in services if s.process.poll() is not None]:
                pytest.fail(f"{', '.join(stopped)} exited; see {log_path}")
            time.sleep(3)
        check_listeners()
        seen_by = time.monotonic() + 90  # MLflow may still be starting on a slow machine
        while ("127.0.0.1", mlflow_port) not in listening and time.monotonic() < seen_by:
            time.sleep(2)
            check_listeners()
        # The check saw the servers it must see, so it is not passing for want of looking.
        assert ("127.0.0.1", port) in listening, (listening, log_path.read_text()[-3000:])
        assert ("127.0.0.1", mlflow_port) in listening, (listening, log_path.read_text()[-3000:])
        assert runs.get("ct_ingest") == [("asset_triggered", "success")], (runs, log_path.read_text()[-3000:])
        # With catchup off, the daily cron also runs once when the DAG first appears: with no new
        # data it must end in success (its steps skipped), never failed.
        retrain_runs = runs.get("ct_retrain", [])
        assert ("asset_triggered", "success") in retrain_runs, (runs, log_path.read_text()[-3000:])
        assert all(state == "success" for _, state in retrain_runs), runs
        gates = list((home / "lake" / "reports" / "ct_retrain").glob("*/gate.json"))
        assert len(gates) == 1 and '"decision": "promote"' in gates[0].read_text()
    finally:
        stop_services(services, timeout=60)
        log.close()
