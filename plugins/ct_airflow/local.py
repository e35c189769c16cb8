"""The embedded profile's Airflow: environment, database setup, the demo scenario and ``make up``.

``python plugins/ct_airflow/local.py demo|up|env`` (the Makefile's targets call it). Everything
lives under ``CT_HOME`` (``./.ct``): ``airflow/`` (SQLite, LocalExecutor), ``mlflow.db``,
``mlartifacts/`` and ``lake/``. Servers bind to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_PORT = 8080
MLFLOW_PORT = 5000
ADMIN = "admin"


def ct_home() -> Path:
    return Path(os.environ.get("CT_HOME") or REPO / ".ct").resolve()


def embedded_env(home: Path | None = None, refresh_interval: int = 5) -> dict[str, str]:
    """Environment for Airflow and the ``ml`` steps in the embedded profile."""
    home = home or ct_home()
    airflow_home = home / "airflow"
    return {
        "CT_HOME": str(home),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": str(refresh_interval),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(AIRFLOW_PORT),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "GX_ANALYTICS_ENABLED": "false",
        "TQDM_DISABLE": "1",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # `airflow standalone` starts its components as `airflow ...` found on PATH: use this venv's.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "plugins"), str(REPO), os.environ.get("PYTHONPATH")])),
    }


def apply_env(home: Path | None = None) -> dict[str, str]:
    env = embedded_env(home)
    os.environ.update(env)
    for path in (str(REPO / "plugins"), str(REPO)):
        if path not in sys.path:
            sys.path.insert(0, path)
    return env


def airflow_cli(*args: str) -> None:
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), *args], check=True, env=os.environ.copy(), stdout=subprocess.DEVNULL)


def reset(home: Path) -> None:
    """Start from a clean embedded state: the demo replays from scratch every time."""
    for name in ("airflow", "lake", "mlartifacts", "mlflow.db"):
        target = home / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    (home / "airflow").mkdir(parents=True, exist_ok=True)


def write_password(home: Path) -> str:
    """Fix the admin password for ``make up`` (SimpleAuthManager reads this file)."""
    path = home / "airflow" / "simple_auth_manager_passwords.json.generated"
    if path.exists():
        return str(json.loads(path.read_text())[ADMIN])
    password = secrets.token_urlsafe(12)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({ADMIN: password}))
    return password


# -- the demo ---------------------------------------------------------------------------------
def _report(lake: Any, run_key: str, name: str) -> dict[str, Any]:
    from ml import layout

    return dict(lake.read_json_or(layout.report(layout.RETRAIN_DAG, run_key, name), {}))


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if value < 0.001 else f"{value:.{digits}f}"
    return str(value)


@contextlib.contextmanager
def output_to(log_path: Path) -> Iterator[None]:
    """Send this process's and its children's stdout/stderr to ``log_path`` (Airflow's task logs are chatty)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as log_file:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def demo() -> int:
    """Play the four-day scenario through the real Airflow (``dag.test()``) and print what happened."""
    home = ct_home()
    reset(home)
    apply_env(home)
    started = time.perf_counter()
    log_path = home / "demo.log"
    print(f"ct demo: embedded profile under {home}; Airflow's task logs go to {log_path}", flush=True)
    print("Setting up the Airflow database ...", flush=True)
    airflow_cli("db", "migrate")

    from airflow.dag_processing.dagbag import DagBag

    from ct_airflow.runkey import run_key_from_run_id
    from ct_airflow.triggers import claim_new_batches
    from ml import demo as scenario
    from ml import layout
    from ml.config import load_settings
    from ml.storage import Lake

    settings = load_settings()
    lake = Lake.from_uri(settings.lake_uri)
    bag = DagBag(dag_folder=str(REPO / "dags"))
    if bag.import_errors:
        print(f"DAG import errors: {bag.import_errors}", file=sys.stderr)
        return 1
    ingest_dag, retrain_dag = bag.dags["ct_ingest"], bag.dags["ct_retrain"]

    rows = []
    for day, batch in enumerate(scenario.SCENARIO, start=1):
        print(f"\n== day {day}: batch {batch.batch_id} ({batch.kind}): {batch.story}", flush=True)
        scenario.write_demo_batch(lake, batch)
        noticed = claim_new_batches(settings.lake_uri)  # what the triggerer's AssetWatcher does
        when = datetime(2026, 1, day, 4, tzinfo=UTC)
        print(f"   the landing watcher noticed {noticed}; running ct_ingest ...", flush=True)
        with output_to(log_path):
            ingest_run = ingest_dag.test(logical_date=when, run_conf={"batch_ids": noticed})
        curated = lake.exists(layout.manifest(batch.batch_id))
        quarantine = lake.read_json_or(layout.quarantine_report(batch.batch_id), None)
        row: dict[str, Any] = {"batch": batch.batch_id, "ingest": str(ingest_run.state)}
        row["validation"] = (
            "passed" if curated else f"quarantined: {', '.join(quarantine['failed_rules'])}" if quarantine else "?"
        )
        print(f"   ct_ingest: {ingest_run.state} ({row['validation']}); running ct_retrain ...", flush=True)
        with output_to(log_path):
            retrain_run = retrain_dag.test(logical_date=when)
        key = run_key_from_run_id(retrain_run.run_id)
        drift, decision, gate = (
            _report(lake, key, "drift.json"),
            _report(lake, key, "decision.json"),
            _report(lake, key, "gate.json"),
        )
        states = {ti.task_id: str(ti.state) for ti in retrain_run.get_task_instances()}
        row.update(
            retrain_run=str(retrain_run.state),
            drift=("drift: " + ",".join(drift["drifted_features"]))
            if drift.get("drift_detected")
            else drift.get("skipped") or "no drift",
            retrained="yes" if decision.get("retrain") else "no",
            champion=_fmt((gate.get("metrics", {}).get("champion") or {}).get("accuracy")),
            candidate=_fmt(gate.get("metrics", {}).get("candidate", {}).get("accuracy")),
            p_value=_fmt(gate.get("checks", {}).get("significance", {}).get("p_value")),
            guard=_fmt(gate.get("checks", {}).get("non_inferiority", {}).get("passed")),
            decision=gate.get("decision") or ("no retrain" if states.get("decide") == "skipped" else "-"),
            reason="; ".join(gate.get("reasons") or decision.get("reasons") or []),
        )
        rows.append(row)
        print(f"   ct_retrain: {retrain_run.state}; {decision.get('summary', 'no decision')}", flush=True)
        if gate:
            print(f"   gate: {row['decision']}: {row['reason']}", flush=True)

    print_table(rows)
    from ml import registry

    champion = registry.champion(registry.client(settings), settings.model_name)
    print(f"\n@champion of {settings.model_name}: v{champion.version if champion else None}")
    print(f"Finished in {time.perf_counter() - started:.0f} s. Where to look next:")
    print(f"  reports and decisions  {lake.uri('reports')}/ct_retrain/<run_key>/ (gate.md, drift.html)")
    print(f"  quarantined batches    {lake.uri('quarantine')}/")
    print(f"  MLflow                 make up, then http://127.0.0.1:{MLFLOW_PORT} (runs, models, @champion)")
    print(f"  Airflow UI             make up, then http://127.0.0.1:{AIRFLOW_PORT} (these DAG runs, their logs)")
    failed = [r for r in rows if r["ingest"] != "success" and not r["validation"].startswith("quarantined")]
    return 1 if failed else 0


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = [
        "batch",
        "validation",
        "drift",
        "retrained",
        "champion",
        "candidate",
        "p_value",
        "guard",
        "decision",
        "reason",
    ]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns[:-1]}
    print()
    print("  ".join(c.ljust(widths.get(c, 0)) for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths.get(c, 0)) for c in columns))


# -- make up ----------------------------------------------------------------------------------
def up() -> int:
    """Run Airflow standalone and the MLflow UI on 127.0.0.1 until interrupted."""
    home = ct_home()
    apply_env(home)
    (home / "airflow").mkdir(parents=True, exist_ok=True)
    password = write_password(home)
    airflow_cli("db", "migrate")
    from ml.config import load_settings

    settings = load_settings()
    bindir = Path(sys.executable).parent
    procs = [
        subprocess.Popen([str(bindir / "airflow"), "standalone"], env=os.environ.copy()),
        subprocess.Popen(
            [str(bindir / "mlflow"), "ui", "--host", "127.0.0.1", "--port", str(MLFLOW_PORT),
             "--backend-store-uri", settings.mlflow_tracking_uri, "--default-artifact-root", settings.mlflow_artifact_uri],
            env=os.environ.copy(),
        ),
    ]  # fmt: skip
    print(f"\nAirflow: http://127.0.0.1:{AIRFLOW_PORT}  user {ADMIN}, password {password}")
    print(f"MLflow:  http://127.0.0.1:{MLFLOW_PORT}")
    print(
        f"Drop a batch: write {settings.lake_uri}/landing/<batch_id>/images/<label>/*.png, then an empty _COMMITTED file."
    )
    print("Or: make drop-batch. Ctrl-C stops both.", flush=True)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    return 0


def drop_batch(batch_id: str | None) -> int:
    """Write one more clean demo batch into the landing area (for trying ``make up``)."""
    apply_env()
    from ml import demo as scenario
    from ml.config import load_settings
    from ml.storage import Lake

    lake = Lake.from_uri(load_settings().lake_uri)
    images, labels = scenario.digits()
    pick = slice(0, 300)
    batch_id = batch_id or datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
    scenario.write_batch(lake, batch_id, scenario.drift(images[pick], seed=1, brightness=0, noise=8), labels[pick])
    print(f"committed landing batch {batch_id} in {lake.uri('landing')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="replay the demo scenario from a clean state")
    sub.add_parser("up", help="Airflow standalone + MLflow UI on 127.0.0.1")
    drop = sub.add_parser("drop-batch", help="commit one more demo batch into the landing area")
    drop.add_argument("--batch-id")
    sub.add_parser("env", help="print the embedded environment as shell exports")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    if args.command == "up":
        return up()
    if args.command == "drop-batch":
        return drop_batch(args.batch_id)
    for key, value in embedded_env().items():
        print(f"export {key}={value!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
