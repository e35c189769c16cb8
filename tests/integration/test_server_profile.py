"""The local server profile for real: continuous training with no manual trigger, the compose topology without containers.

The test starts exactly what ``make up`` starts (:func:`ct_airflow.launcher.local.service_commands`): PostgreSQL
(Airflow's metadata and MLflow's backend store), ``mlflow server``, and Airflow's scheduler
(LocalExecutor), dag-processor, triggerer and api-server. The lake is on S3 (moto's server mode, over
HTTP), and the steps, subprocesses of the scheduler, reach MLflow over HTTP as they do in production.
It commits a landing batch and waits for the triggerer's watcher to start ``ct_ingest``, whose asset
event must then start ``ct_retrain``, with both ending in success and the model promoted through the
tracking server. All the while, no process those services started may listen on anything but loopback.

Then, on the same stack, the documented backfill: ``airflow backfill create`` over 10 daily
intervals (the README's command, shortened: each run costs the same), and again with
``--reprocess-behavior completed``. Both must complete on PostgreSQL with
no ``database is locked``, one run at a time, no duplicate model version or decision, and the
champion untouched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from ct_airflow.launcher import postgres
from ct_airflow.launcher.local import embedded_env, server_env, service_commands, start_services, stop_services
from ml.config import embedded_socket_dir
from tests.conftest import free_port

pytestmark = pytest.mark.integration
TIMEOUT_S = 600
BACKFILL_TIMEOUT_S = 900
S3_AUTH = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def query(home: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows from Airflow's metadata database (on the stack's PostgreSQL)."""
    import psycopg2

    conn = psycopg2.connect(dbname="airflow", user="postgres", host=str(embedded_socket_dir(home)))
    with contextlib.closing(conn), conn.cursor() as cursor:
        cursor.execute(sql, args)
        return cursor.fetchall()


def dag_runs(home: Path) -> dict[str, list[tuple[str, str]]]:
    rows = query(home, "SELECT dag_id, run_type, state FROM dag_run WHERE run_type != 'backfill' ORDER BY id")
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


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    services: list[Any]
    log_path: Path
    port: int
    mlflow_port: int
    bucket: str
    s3_endpoint: str
    listening: dict[tuple[str, int], str] = field(default_factory=dict)

    @property
    def tracking(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def check_listeners(self) -> None:
        self.listening.update(listening_sockets([s.process.pid for s in self.services]))
        exposed = {f"{ip}:{p}": who for (ip, p), who in self.listening.items() if not is_loopback(ip)}
        assert not exposed, f"listening beyond loopback: {exposed}"

    def check_alive(self) -> None:
        """Fail with what a person would look at: who exited with what, and the tails of both logs."""
        stopped = [f"{s.name} (exit {s.process.returncode})" for s in self.services if s.process.poll() is not None]
        if stopped or not postgres.is_running(self.home):
            pg_log = postgres.log_path(self.home)
            pg_tail = pg_log.read_text(errors="replace")[-2000:] if pg_log.exists() else "(no log)"
            pytest.fail(f"{', '.join(stopped) or 'PostgreSQL'} exited.\n--- services.log ---\n{self.tail()}\n"
                        f"--- PostgreSQL's log ---\n{pg_tail}", pytrace=False)  # fmt: skip

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def s3(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, **S3_AUTH)

    def lake_keys(self, prefix: str) -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"lake/{prefix}")
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def lake_json(self, key: str) -> Any:
        return json.loads(self.s3().get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def airflow(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(Path(sys.executable).parent / "airflow"), *args], env=self.env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def stack(moto_s3: str) -> Iterator[Stack]:
    """``make up``'s topology, with the lake on S3: PostgreSQL, ``mlflow server`` and Airflow's four components.

    Its home is outside pytest's temporary root, which another pytest session on the machine may prune
    (it keeps the last three) while this stack's PostgreSQL still runs there.
    """
    import boto3

    root = Path(tempfile.mkdtemp(prefix="ct-server-profile-"))
    home = root / "ct"
    port, mlflow_port = free_port(), free_port()
    bucket = f"ct-live-{time.monotonic_ns()}"
    boto3.client("s3", endpoint_url=moto_s3, **S3_AUTH).create_bucket(Bucket=bucket)
    env = {k: v for k, v in os.environ.items() if k != "CT_MLFLOW_TRACKING_URI"}
    env.update(embedded_env(home, refresh_interval=2))
    env.update({
        "CT_LAKE_URI": f"s3://{bucket}/lake", "CT_S3_ENDPOINT_URL": moto_s3,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",  # a backfill run waits on scheduler loops; fewer idle seconds
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
    })  # fmt: skip
    (home / "airflow").mkdir(parents=True, exist_ok=True)  # embedded_env keeps its fernet key there
    postgres.start(home)
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    commands = service_commands(env, mlflow_port=mlflow_port, serve_port=free_port())
    assert commands["mlflow"][1] == "server" and "postgresql+psycopg2://" in " ".join(commands["mlflow"])
    log_path = root / "services.log"
    log = open(log_path, "w")  # the services write to it until they are stopped
    services = start_services(commands, server_env(env, mlflow_port=mlflow_port), log)
    try:
        yield Stack(home, server_env(env, mlflow_port=mlflow_port), services, log_path, port, mlflow_port, bucket,
                    moto_s3)  # fmt: skip
    finally:
        stop_services(services, timeout=60)
        log.close()
        postgres.stop(home)
        shutil.rmtree(root, ignore_errors=True)


def test_a_committed_batch_flows_through_ingest_and_retrain(stack: Stack) -> None:
    # Commit a batch the way a producer would; nobody triggers anything by hand.
    code = (
        "from ml.config import load_settings; from ml.storage import Lake; from ml.demo import digits, write_batch;"
        "images, labels = digits(); write_batch(Lake.from_uri(load_settings().lake_uri), 'live-1', images[:500], labels[:500])"
    )
    subprocess.run([sys.executable, "-c", code], env=stack.env, check=True)
    deadline = time.monotonic() + TIMEOUT_S
    runs: dict[str, list[tuple[str, str]]] = {}
    while time.monotonic() < deadline:
        stack.check_listeners()  # while ingest and retrain run, with every component (and its workers) up
        runs = dag_runs(stack.home)
        finished = [s for t, s in runs.get("ct_retrain", []) if t == "asset_triggered" and s in ("success", "failed")]
        if finished or any(s == "failed" for _, s in runs.get("ct_ingest", [])):
            break
        stack.check_alive()
        time.sleep(3)
    stack.check_listeners()
    seen_by = time.monotonic() + 90  # MLflow may still be starting on a slow machine
    while ("127.0.0.1", stack.mlflow_port) not in stack.listening and time.monotonic() < seen_by:
        time.sleep(2)
        stack.check_listeners()
    # The check saw the servers it must see, so it is not passing for want of looking.
    assert ("127.0.0.1", stack.port) in stack.listening, (stack.listening, stack.tail())
    assert ("127.0.0.1", stack.mlflow_port) in stack.listening, (stack.listening, stack.tail())
    assert runs.get("ct_ingest") == [("asset_triggered", "success")], (runs, stack.tail())
    # With catchup off, the daily cron also runs once when the DAG first appears: with no new
    # data it must end in success (its steps skipped), never failed.
    retrain_runs = runs.get("ct_retrain", [])
    assert ("asset_triggered", "success") in retrain_runs, (runs, stack.tail())
    assert all(state == "success" for _, state in retrain_runs), runs
    gates = [k for k in stack.lake_keys("reports/ct_retrain/") if k.endswith("/gate.json")]
    assert len(gates) == 1, gates
    gate = stack.lake_json(gates[0])
    assert gate["decision"] == "promote", gate
    # The steps reached MLflow through the tracking server: it holds the run and the champion.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.tracking, registry_uri=stack.tracking)
    champion = client.get_model_version_by_alias("ct-classifier", "champion")
    assert champion.version == str(gate["candidate_version"]), (champion.version, gate["candidate_version"])
    assert client.get_run(champion.run_id).info.status == "FINISHED"
    stack.check_alive()


#: The README's backfill commands (Operations), over 10 daily intervals of ct_retrain (the README's 30, shortened).
DAYS = 5  # backfilled twice: enough for one at a time, the reprocess and every day seeing nothing yet
BACKFILL = ["backfill", "create", "--dag-id", "ct_retrain", "--from-date", "2026-01-01", "--to-date",
            f"2026-01-{DAYS:02d}T03:00:00+00:00", "--max-active-runs", "1"]  # fmt: skip


def _wait_for_backfill(stack: Stack, backfill_id: int) -> int:
    """Wait until the backfill completes; returns the most backfill runs seen running at once."""
    most = 0
    deadline = time.monotonic() + BACKFILL_TIMEOUT_S
    while time.monotonic() < deadline:
        running = query(stack.home, "SELECT count(*) FROM dag_run WHERE backfill_id = %s AND state = 'running'",
                        backfill_id)[0][0]  # fmt: skip
        most = max(most, running)
        if query(stack.home, "SELECT completed_at FROM backfill WHERE id = %s", backfill_id)[0][0] is not None:
            return most
        stack.check_alive()
        time.sleep(1)
    pytest.fail(f"backfill {backfill_id} did not complete in {BACKFILL_TIMEOUT_S} s; see {stack.log_path}")


def _run_backfill(stack: Stack, *extra: str, dates: tuple[str, str] | None = None) -> int:
    before = query(stack.home, "SELECT coalesce(max(id), 0) FROM backfill")[0][0]
    command = list(BACKFILL)
    if dates:
        command[command.index("--from-date") + 1], command[command.index("--to-date") + 1] = dates
    created = stack.airflow(*command, *extra)
    assert created.returncode == 0, created.stdout + created.stderr
    backfill_id = query(stack.home, "SELECT max(id) FROM backfill")[0][0]
    assert backfill_id > before, created.stdout
    assert _wait_for_backfill(stack, backfill_id) <= 1, "more than one backfill run at a time"
    return int(backfill_id)


def _live_state(stack: Stack) -> dict[str, bytes]:
    """The live policy memory and the champion's error budget, as stored."""
    s3 = stack.s3()
    found = {}
    for name in ("policy.json", "reign.json"):
        key = f"lake/state/{name}"
        with contextlib.suppress(s3.exceptions.NoSuchKey):
            found[name] = s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read()
    return found


@pytest.mark.timeout(2 * BACKFILL_TIMEOUT_S + 600)  # backfills one run at a time: past the default 900 s
def test_backfill_over_days_before_any_data_twice_on_postgres(stack: Stack) -> None:
    from mlflow import MlflowClient

    stack.check_alive()
    client = MlflowClient(tracking_uri=stack.tracking, registry_uri=stack.tracking)
    versions = {v.version for v in client.search_model_versions("name='ct-classifier'")}
    # The stack is the module's: the first test promoted the champion this backfill must leave alone.
    assert versions, "no model on this stack: run the whole module (and keep its xdist group on one worker)"
    champion = client.get_model_version_by_alias("ct-classifier", "champion").version
    live_before = _live_state(stack)
    assert "policy.json" in live_before and "reign.json" in live_before, live_before

    first = _run_backfill(stack)
    second = _run_backfill(stack, "--reprocess-behavior", "completed")

    runs = query(stack.home, "SELECT run_id, logical_date, state, start_date, end_date, backfill_id FROM dag_run "
                 "WHERE run_type = 'backfill' ORDER BY start_date")  # fmt: skip
    assert len(runs) == DAYS, [r[0] for r in runs]  # reprocessing reran the same runs, it made no new ones
    assert {r[1].day for r in runs} == set(range(1, DAYS + 1))
    assert all(r[5] == second for r in runs) and first < second
    assert all(r[2] == "success" for r in runs), [(r[0], r[2]) for r in runs if r[2] != "success"]
    # One at a time: each run started after the previous one ended.
    for earlier, later in itertools.pairwise(runs):
        assert later[3] >= earlier[4], (earlier[0], later[0])
    # Every task succeeded or was skipped, and each skip says why (the step's reason is in the decision).
    states = query(stack.home, "SELECT ti.state, count(*) FROM task_instance ti JOIN dag_run dr ON "
                   "dr.run_id = ti.run_id AND dr.dag_id = ti.dag_id WHERE dr.run_type = 'backfill' GROUP BY ti.state")  # fmt: skip
    assert {state for state, _ in states} <= {"success", "skipped"}, states
    decisions = [k for k in stack.lake_keys("reports/ct_retrain/") if k.endswith("/decision.json")]
    backfill_decisions = [stack.lake_json(k) for k in decisions if "backfill" in k]
    # One per interval, not one per attempt: a rerun with the same conf and settings reuses its record.
    assert len(backfill_decisions) == DAYS, decisions
    # January's runs see January: the only batch was curated today, so there was nothing yet, and they say so.
    for decided in backfill_decisions:
        assert decided["backfill"] and decided["replay"] and not decided["retrain"], decided
        assert decided["reasons"][0].startswith("no data as of 2026-01-"), decided["reasons"]
        assert "no batch was available yet (the first, live-1, became available at 2026-" in decided["reasons"][0]
    window = stack.lake_json(next(k for k in decisions if "backfill__2026-01-05" in k).replace("decision", "window"))
    assert window["champion_version"] is None and window["train_batches"] == [], window
    assert window["sources"]["champion"]["source"].startswith("no live move of @champion before this time")
    assert list(window["sources"]["batches"]["not_yet_available"]) == ["live-1"]
    # Nothing was trained, nothing was promoted, no gate decision was recorded by a backfill.
    after = client.search_model_versions("name='ct-classifier'")
    assert {v.version for v in after} == versions
    assert client.get_model_version_by_alias("ct-classifier", "champion").version == champion
    gate_records = [k for k in stack.lake_keys("state/decisions/") if k.endswith(".json")]
    assert not [k for k in gate_records if "backfill" in k], gate_records
    # Rerun means rerun: a new conf on an existing date is a new attempt, recorded beside the first.
    _run_backfill(stack, "--reprocess-behavior", "completed", "--dag-run-conf", '{"force_retrain": true}',
                  dates=("2026-01-05", "2026-01-05T03:00:00+00:00"))  # fmt: skip
    attempts = [k for k in stack.lake_keys("reports/ct_retrain/") if "backfill__2026-01-05" in k
                and k.endswith("/decision.json")]  # fmt: skip
    assert len(attempts) == 2, attempts
    # A bad override fails the run at once, with the validation message and no retries.
    _run_backfill(stack, "--reprocess-behavior", "completed", "--dag-run-conf", '{"settings": {"gate": {"margn": 1}}}',
                  dates=("2026-01-06", "2026-01-06T03:00:00+00:00"))  # fmt: skip
    refused = query(stack.home, "SELECT ti.state, ti.try_number FROM task_instance ti JOIN dag_run dr ON "
                    "dr.run_id = ti.run_id AND dr.dag_id = ti.dag_id WHERE dr.logical_date = '2026-01-06T03:00:00+00:00' "
                    "AND dr.dag_id = 'ct_retrain' AND ti.task_id = 'drift'")  # fmt: skip
    [(state, tries)] = refused
    assert state == "failed", refused
    task_logs = Path(stack.env["AIRFLOW_HOME"], "logs")
    drift_logs = list(task_logs.rglob(f"run_id=*2026-01-06*/task_id=drift/attempt={tries}.log"))
    assert drift_logs and "gate.margn" in drift_logs[0].read_text(errors="replace"), drift_logs
    assert not list(task_logs.rglob(f"run_id=*2026-01-06*/task_id=drift/attempt={tries + 1}.log")), "no retry"
    assert _live_state(stack) == live_before, "the live policy memory and error budget are byte-for-byte unchanged"
    # PostgreSQL: no writer was refused anywhere (the SQLite profile's failure).
    logs = [stack.log_path, *Path(stack.env["AIRFLOW_HOME"], "logs").rglob("*.log")]
    assert not [p for p in logs if "database is locked" in p.read_text(errors="replace")]
