"""The embedded profile's Airflow: environment, database setup, the demo scenario and ``make up``.

``python -m ct_airflow.launcher.local demo|up|drop-batch|env`` (the Makefile's targets call it). Everything
lives under ``CT_HOME`` (``./.ct``): ``postgres/`` (the PostgreSQL server that holds Airflow's
metadata and MLflow's backend store, on a Unix socket), ``airflow/`` (LocalExecutor, logs),
``mlartifacts/`` and ``lake/``. Every server listens on 127.0.0.1 or on no port at all: the Airflow
api-server on ``AIRFLOW_PORT`` (8080) and ``mlflow server`` on ``MLFLOW_PORT`` (5000), the names
docker-compose's ``.env`` uses for the same two ports.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pluggy import HookimplMarker

from ct_airflow.launcher import postgres
from ml.config import embedded_database_uri

REPO = Path(__file__).resolve().parents[3]
#: The environment variables that move ``make up``'s ports (``make up AIRFLOW_PORT=8081 MLFLOW_PORT=5001``;
#: ``SERVE_PORT`` moves the prediction service).
#: Not ``CT_`` settings: they are where this launcher binds, like the same names in docker-compose's ``.env``
#: (``mlflow server`` itself reads ``MLFLOW_PORT`` as its ``--port``). The settings that hold the links
#: people follow (``mlflow_ui_url``, ``dashboard_url``) follow them unless they are set (see :func:`link_env`).
AIRFLOW_PORT_ENV = "AIRFLOW_PORT"
MLFLOW_PORT_ENV = "MLFLOW_PORT"
SERVE_PORT_ENV = "SERVE_PORT"
DEFAULT_AIRFLOW_PORT = 8080
DEFAULT_MLFLOW_PORT = 5000
DEFAULT_SERVE_PORT = 5002
ADMIN = "admin"
#: The marker Airflow's listener hooks are found by (``airflow.listeners.hookimpl`` is this marker); taken
#: from pluggy so that importing this module does not import Airflow before ``embedded_env`` is applied.
hookimpl = HookimplMarker("airflow")


def ct_home() -> Path:
    return Path(os.environ.get("CT_HOME") or REPO / ".ct").resolve()


class PortError(ValueError):
    """A port setting is unusable, or the port is taken; the message is one line that says what to do."""


@dataclass(frozen=True)
class Ports:
    """Where ``make up``'s three servers listen on 127.0.0.1."""

    airflow: int = DEFAULT_AIRFLOW_PORT
    mlflow: int = DEFAULT_MLFLOW_PORT
    serve: int = DEFAULT_SERVE_PORT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Ports:
        environ = os.environ if environ is None else environ
        ports = cls(
            _port(environ, AIRFLOW_PORT_ENV, DEFAULT_AIRFLOW_PORT),
            _port(environ, MLFLOW_PORT_ENV, DEFAULT_MLFLOW_PORT),
            _port(environ, SERVE_PORT_ENV, DEFAULT_SERVE_PORT),
        )
        names = [(ports.airflow, AIRFLOW_PORT_ENV, "Airflow"), (ports.mlflow, MLFLOW_PORT_ENV, "MLflow"),
                 (ports.serve, SERVE_PORT_ENV, "the prediction service")]  # fmt: skip
        for i, (port, name, what) in enumerate(names):
            for other_port, other_name, other in names[i + 1 :]:
                if port == other_port:
                    raise PortError(f"{name} and {other_name} are both {port}; {what} and {other} need a port each")
        return ports

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.airflow}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow}"

    def named(self) -> list[tuple[int, str, str]]:
        """``(port, what listens there, the variable that moves it)`` for each server."""
        return [(self.airflow, "Airflow UI", AIRFLOW_PORT_ENV), (self.mlflow, "MLflow UI", MLFLOW_PORT_ENV),
                (self.serve, "prediction service", SERVE_PORT_ENV)]  # fmt: skip


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise PortError(f"{name}={raw!r} is not a port number (1-65535)")
    return int(raw)


def port_is_free(port: int) -> bool:
    """True when a server could listen on 127.0.0.1:``port`` now (the check binds, as the server will)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As uvicorn and gunicorn do: a port whose last connections are still in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_ports_free(ports: Ports) -> None:
    """Raise :class:`PortError` naming each taken port and the ``make up`` line that moves it to a free one."""
    busy = [(port, what, name) for port, what, name in ports.named() if not port_is_free(port)]
    if not busy:
        return
    taken = {ports.airflow, ports.mlflow, ports.serve}
    moves = []
    for port, _what, name in busy:
        candidates = range(port + 1, min(port + 200, 65536))
        other = next((p for p in candidates if p not in taken and port_is_free(p)), None)
        taken.add(other or port)
        moves.append(f"{name}={other or '<a free port>'}")
    said = " and ".join(f"{port} ({what})" for port, what, _ in busy)
    if len(busy) == 1:
        raise PortError(f"port {said} is in use; free it or pick another: make up {moves[0]}")
    raise PortError(f"ports {said} are in use; free them or pick others: make up {' '.join(moves)}")


def link_env(ports: Ports, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``CT_MLFLOW_UI_URL`` and ``CT_DASHBOARD_URL`` for ports moved from their defaults, so that the links
    ct writes (the "MLflow model" link, MLflow's ``ct.gate.report`` tag) lead to this machine's servers.

    A link that is configured (in the environment or the ``ct.yaml`` that ``CT_CONFIG`` names) stays as it is.
    """
    from ml.config import Settings, load_settings

    settings = load_settings(os.environ if environ is None else environ)
    wanted = {"mlflow_ui_url": ports.mlflow_url, "dashboard_url": f"{ports.airflow_url}/ct"}
    return {
        f"CT_{name.upper()}": url
        for name, url in wanted.items()
        if getattr(settings, name) == Settings.model_fields[name].default != url
    }


def _path_list(*entries: str | None) -> str:
    """``os.pathsep``-joined, each entry once, in order (``eval``-ing ``env`` twice must not grow it)."""
    seen: list[str] = []
    for entry in entries:
        for part in (entry or "").split(os.pathsep):
            if part and part not in seen:
                seen.append(part)
    return os.pathsep.join(seen)


def fernet_key(home: Path) -> str:
    """The key Airflow encrypts connections and trigger arguments with: one per home, in ``airflow/fernet.key``.

    Without one in the environment, an Airflow process that finds no ``airflow.cfg`` makes up its own
    key; processes started together (``make up``'s four, a test session's) then write rows the others
    cannot read (a trigger's arguments fail to decrypt). Created once, atomically (a link cannot
    replace a file another process linked first), readable by its owner only; a home whose
    ``airflow.cfg`` already holds a key keeps that one, so the rows encrypted with it stay readable.
    """
    path = home / "airflow" / "fernet.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".fernet.key.{os.getpid()}")
        draft.write_text(_configured_fernet_key(home) or base64.urlsafe_b64encode(os.urandom(32)).decode())
        draft.chmod(0o600)
        with contextlib.suppress(FileExistsError):
            os.link(draft, path)
        draft.unlink()
    return path.read_text().strip()


def _configured_fernet_key(home: Path) -> str:
    """The key an existing ``airflow.cfg`` of this home holds (a home from before ct kept its own), or ''."""
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    with contextlib.suppress(configparser.Error, OSError):
        parser.read(home / "airflow" / "airflow.cfg")
    return parser.get("core", "fernet_key", fallback="").strip()


def embedded_env(home: Path | None = None, refresh_interval: int = 5, ports: Ports | None = None) -> dict[str, str]:
    """Environment for Airflow and the ``ml`` steps in the embedded profile; ``ports`` default to the environment's."""
    home = home or ct_home()
    ports = ports or Ports.from_env()
    airflow_home = home / "airflow"
    return {
        "CT_HOME": str(home),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__FERNET_KEY": fernet_key(home),
        # The embedded PostgreSQL (ct_airflow.launcher.postgres); Airflow derives its asyncpg URI from this one.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": embedded_database_uri(home, "airflow"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": str(refresh_interval),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(ports.airflow),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{ports.airflow_url}/execution/",
        # Carried along, so that whatever this environment starts (service_commands, server_env) agrees.
        AIRFLOW_PORT_ENV: str(ports.airflow),
        MLFLOW_PORT_ENV: str(ports.mlflow),
        SERVE_PORT_ENV: str(ports.serve),
        **link_env(ports),
        # Off by default; if someone turns it on, it must not listen on 0.0.0.0 (its default host).
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "GX_ANALYTICS_ENABLED": "false",
        "TQDM_DISABLE": "1",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # `mlflow server` would start four job-queue consumers (about 30 workers) for GenAI jobs ct never runs.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # Whatever runs `airflow ...` from PATH (`airflow standalone`, if run by hand, does) gets this venv's.
        "PATH": _path_list(str(Path(sys.executable).parent), os.environ.get("PATH")),
        "PYTHONPATH": _path_list(str(REPO / "plugins"), str(REPO), os.environ.get("PYTHONPATH")),
    }


def apply_env(home: Path | None = None, ports: Ports | None = None) -> dict[str, str]:
    env = embedded_env(home, ports=ports)
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
    postgres.stop(home)
    for name in ("airflow", "lake", "mlartifacts", "postgres", "postgres-socket"):
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


def _redirect_fds(target: IO[bytes]) -> tuple[int, int]:
    """Point fds 1 and 2 (this process's and its children's stdout/stderr) at ``target``; return the old ones."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(target.fileno(), 1)
    os.dup2(target.fileno(), 2)
    return saved


def _restore_fds(saved: tuple[int, int]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, old in zip((1, 2), saved, strict=True):
        os.dup2(old, fd)
        os.close(old)


@contextlib.contextmanager
def output_to(log_path: Path) -> Iterator[None]:
    """Send this process's and its children's stdout/stderr to ``log_path`` (Airflow's task logs are chatty)."""
    with open(log_path, "ab") as log_file:
        saved = _redirect_fds(log_file)
        try:
            yield
        finally:
            _restore_fds(saved)


class TaskLogFiles:
    """An Airflow listener that gives ``dag.test()`` tasks the log files the Airflow UI reads.

    ``dag.test()`` runs each task inside the calling process (``run_task_in_process``): unlike a
    worker's supervisor it writes no log file, it logs to this process's stdout, so the api-server
    later finds nothing ("Log file not found"). While a task runs, from the task runner's
    ``on_task_instance_running`` hook to its ``success``/``failed``/``skipped`` hook, this listener
    points fds 1 and 2 at ``<[logging] base_log_folder>/<log_filename_template>``: the path a worker's
    supervisor writes (``airflow.sdk.log.init_log_file`` with the template the executor renders) and
    the one the api-server's ``FileTaskHandler`` reads. Everything the task logs, including the ``ml``
    step's stderr that the operator relays, lands there; between tasks, output goes back where it was.
    """

    def __init__(self) -> None:
        self._saved: tuple[int, int] | None = None
        self._file: IO[bytes] | None = None
        self.paths: list[Path] = []

    @staticmethod
    def path_for(task_instance: Any) -> Path:
        from airflow.sdk.log import init_log_file
        from airflow.utils.helpers import log_filename_template_renderer

        return Path(init_log_file(log_filename_template_renderer()(ti=task_instance)))

    def _start(self, task_instance: Any) -> None:
        self._stop()
        path = self.path_for(task_instance)
        self._file = open(path, "ab")  # append: a deferred task resumes into the same attempt's file
        self._saved = _redirect_fds(self._file)
        self.paths.append(path)

    def _stop(self) -> None:
        if self._saved is not None:
            _restore_fds(self._saved)
            self._saved = None
        if self._file is not None:
            self._file.close()
            self._file = None

    # The hooks of airflow.sdk._shared.listeners.spec.taskinstance, called by the task runner.
    @hookimpl
    def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
        self._start(task_instance)

    @hookimpl
    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        self._stop()

    @hookimpl
    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None:
        self._stop()

    @hookimpl
    def on_task_instance_skipped(self, previous_state: Any, task_instance: Any) -> None:
        self._stop()

    def close(self) -> None:
        self._stop()


@contextlib.contextmanager
def task_logs_to_files() -> Iterator[TaskLogFiles]:
    """Register :class:`TaskLogFiles` with the Task SDK's listener manager (the one ``dag.test()``'s tasks call)."""
    from airflow.sdk.listener import get_listener_manager

    listener = TaskLogFiles()
    manager = get_listener_manager()
    manager.add_listener(listener)
    try:
        yield listener
    finally:
        listener.close()
        manager.pm.unregister(listener)


def run_dag_test(dag: Any, logical_date: datetime, **kwargs: Any) -> Any:
    """``dag.test()`` for a simulated day, recorded with the wall-clock time it really started.

    ``DAG.test()`` creates its run with ``start_date=logical_date or run_after``
    (airflow/sdk/definitions/dag.py, the ``get_or_create_dagrun`` call), so a run for 2026-01-01
    "started" on 2026-01-01 and the UI shows a duration of months. The logical date must stay (the
    policy's clock is the run's data interval), and no argument or setting changes that start date,
    and the REST API's ``PATCH dagRuns`` only accepts ``state`` and ``note``. So once the run is
    finished, its ``start_date`` is set to when it really started, through Airflow's own ORM session
    (the way ``dag.test()`` itself wrote the row). Task instances already carry real start and end times.
    """
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import update

    started = datetime.now(UTC)
    run = dag.test(logical_date=logical_date, **kwargs)
    with create_session() as session:
        session.execute(update(DagRun).where(DagRun.id == run.id).values(start_date=started))
    run.start_date = started
    return run


def demo() -> int:
    """Play the four-day scenario through the real Airflow (``dag.test()``) and print what happened."""
    home = ct_home()
    reset(home)
    env = apply_env(home)
    print(f"Starting PostgreSQL (Airflow's and MLflow's databases) under {postgres.data_dir(home)} ...", flush=True)
    postgres.start(home)
    try:
        return _play(home, env)
    finally:
        postgres.stop(home)


def _play(home: Path, env: Mapping[str, str]) -> int:
    # Plain text: dag.test()'s output lands in demo.log and, task by task, in the logs the UI shows.
    os.environ["AIRFLOW__LOGGING__COLORED_CONSOLE_LOG"] = "False"
    started = time.perf_counter()
    log_path = home / "demo.log"
    print(f"ct demo: embedded profile under {home}; Airflow's output goes to {log_path},", flush=True)
    print(f"each task's log to {Path(env['AIRFLOW_HOME']) / 'logs'} (the Airflow UI shows them after make up)")
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
        with output_to(log_path), task_logs_to_files():
            ingest_run = run_dag_test(ingest_dag, when, run_conf={"batch_ids": noticed})
        curated = lake.exists(layout.manifest(batch.batch_id))
        quarantine = lake.read_json_or(layout.quarantine_report(batch.batch_id), None)
        row: dict[str, Any] = {"batch": batch.batch_id, "ingest": str(ingest_run.state)}
        row["validation"] = (
            "passed" if curated else f"quarantined: {', '.join(quarantine['failed_rules'])}" if quarantine else "?"
        )
        print(f"   ct_ingest: {ingest_run.state} ({row['validation']}); running ct_retrain ...", flush=True)
        with output_to(log_path), task_logs_to_files():
            retrain_run = run_dag_test(retrain_dag, when)
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
    from ml.release import registry

    champion = registry.champion(registry.client(settings), settings.model_name)
    print(f"\n@champion of {settings.model_name}: v{champion.version if champion else None}")
    print(f"Finished in {time.perf_counter() - started:.0f} s. Where to look next:")
    print(f"  reports and decisions  {lake.uri('reports')}/ct_retrain/<run_key>/ (gate.md, drift.html)")
    print(f"  quarantined batches    {lake.uri('quarantine')}/")
    ports = Ports.from_env(env)
    print(f"  MLflow                 make up, then {ports.mlflow_url} (runs, models, @champion)")
    print(f"  Airflow UI             make up, then {ports.airflow_url} (these DAG runs, their logs)")
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
@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]


def service_commands(
    env: Mapping[str, str], mlflow_port: int | None = None, serve_port: int | None = None
) -> dict[str, list[str]]:
    """What ``make up`` runs: Airflow's four components, the MLflow UI and the prediction service
    (``python -m ml serve``, following ``@champion``), each on 127.0.0.1 or on no port.

    Not ``airflow standalone``: it starts ``airflow scheduler`` and ``airflow triggerer`` with no
    arguments (airflow/cli/commands/standalone_command.py), and each of them then starts a log server
    (8793 for the LocalExecutor's workers, 8794 for the triggerer) whose host is hard-coded to every
    interface (``uvicorn.run(host="")`` in airflow/utils/serve_logs/core.py); no setting changes it.
    Those servers let an api-server on another machine fetch log files. Here every component writes,
    and the api-server reads, the same ``$AIRFLOW_HOME/logs``, so ``--skip-serve-logs`` turns them off.
    The api-server takes its host and port from ``[api] host`` and ``port`` (see :func:`embedded_env`);
    MLflow's port is ``mlflow_port``, else ``env``'s ``MLFLOW_PORT``; the service's, ``serve_port`` or ``SERVE_PORT``.
    """
    from ml.config import load_settings

    settings = load_settings(env)
    mlflow_port = mlflow_port or Ports.from_env(env).mlflow
    serve_port = serve_port or Ports.from_env(env).serve
    bindir = Path(sys.executable).parent
    airflow = str(bindir / "airflow")
    return {
        "scheduler": [airflow, "scheduler", "--skip-serve-logs"],
        "dag-processor": [airflow, "dag-processor"],
        "triggerer": [airflow, "triggerer", "--skip-serve-logs"],
        "api-server": [airflow, "api-server"],
        # The tracking server on the embedded PostgreSQL; the steps talk to it over HTTP (see server_env).
        # One worker: a local server needs no more, and mlflow's default of four costs a core while they start.
        "mlflow": [str(bindir / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                   "--workers", "1", "--backend-store-uri", settings.mlflow_tracking_uri,
                   "--artifacts-destination", settings.mlflow_artifact_uri],
        # MLflow's scoring server for whatever @champion is; it waits (503 on /ready) until there is one.
        "serve": [sys.executable, "-m", "ml", "serve", "--host", "127.0.0.1", "--port", str(serve_port)],
    }  # fmt: skip


def server_env(env: Mapping[str, str], mlflow_port: int | None = None) -> dict[str, str]:
    """The environment of Airflow's components when MLflow runs as a server: steps use its HTTP API,
    as they do in production, and the server stores (and proxies) the artifacts of new experiments.

    Those artifacts' URIs (``mlflow-artifacts:/...``) resolve only through the server, so every process
    that reads models while ``make up`` runs needs this environment: ``env`` prints it for a shell.
    """
    mlflow_port = mlflow_port or Ports.from_env(env).mlflow
    url = f"http://127.0.0.1:{mlflow_port}"
    # MLFLOW_TRACKING_URI too: MLflow's own commands (`mlflow models serve -m models:/ct-classifier@champion`) read it.
    return {**env, "CT_MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_URI": url}


def _relay(prefix: str, stream: IO[bytes], sink: IO[str], lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        with lock:
            sink.write(prefix + raw.decode(errors="replace").rstrip("\n") + "\n")
            sink.flush()


def start_services(commands: Mapping[str, list[str]], env: Mapping[str, str], sink: IO[str]) -> list[Service]:
    """Start each command in its own session; its output goes to ``sink``, each line prefixed with its name."""
    width = max(map(len, commands))
    lock = threading.Lock()
    services = []
    for name, command in commands.items():
        process = subprocess.Popen(command, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        assert process.stdout is not None
        threading.Thread(target=_relay, args=(f"{name:<{width}} | ", process.stdout, sink, lock),
                         name=f"relay-{name}", daemon=True).start()  # fmt: skip
        services.append(Service(name, process))
    return services


def stop_services(services: list[Service], timeout: float = 30.0) -> None:
    """SIGTERM each service (it stops its own workers), then SIGKILL whatever is left in its session."""
    for service in services:
        if service.process.poll() is None:
            service.process.terminate()
    deadline = time.monotonic() + timeout
    for service in services:
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(service.process.pid, signal.SIGKILL)  # its session's group: only what it started
        service.process.wait()


def shell_exports(env: Mapping[str, str]) -> str:
    """``export NAME=value`` lines that a POSIX shell can ``eval``, every value quoted."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())


def env_command(home: Path, ports: Ports) -> str:
    """How to give another shell this ``make up``'s environment, from any directory: its home and ports
    are spelt out where they are not the defaults, since that shell's environment may not hold them."""
    given = [f"CT_HOME={shlex.quote(str(home))}"] if home != (REPO / ".ct").resolve() else []
    if ports.airflow != DEFAULT_AIRFLOW_PORT:
        given.append(f"{AIRFLOW_PORT_ENV}={ports.airflow}")
    if ports.mlflow != DEFAULT_MLFLOW_PORT:
        given.append(f"{MLFLOW_PORT_ENV}={ports.mlflow}")
    if ports.serve != DEFAULT_SERVE_PORT:
        given.append(f"{SERVE_PORT_ENV}={ports.serve}")
    return f'eval "$({" ".join([*given, shlex.quote(sys.executable)])} -m ct_airflow.launcher.local env)"'


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def up() -> int:
    """Run Airflow's scheduler, dag-processor, triggerer and api-server and the MLflow UI until interrupted."""
    ports = Ports.from_env()
    check_ports_free(ports)  # before anything starts: a taken port is said at once, in one line
    home = ct_home()
    apply_env(home, ports)
    (home / "airflow").mkdir(parents=True, exist_ok=True)
    password = write_password(home)
    ours = not postgres.is_running(home)  # stop only a server this command started
    postgres.start(home)
    failed: list[str] = []
    services: list[Service] = []
    try:
        airflow_cli("db", "migrate")
        from ml.config import load_settings

        settings = load_settings()
        signal.signal(signal.SIGTERM, _interrupt)
        services = start_services(service_commands(os.environ), server_env(os.environ), sys.stdout)
        shown = False
        while not (failed := [s.name for s in services if s.process.poll() is not None]):
            if not shown and _port_open(ports.airflow):
                shown = True
                print(f"\nAirflow: {ports.airflow_url}  user {ADMIN}, password {password}")
                print(f"MLflow:  {ports.mlflow_url}")
                print(f"Predictions: POST http://127.0.0.1:{ports.serve}/invocations (@champion; /ready, /metrics)")
                print(f"Drop a batch: write {settings.lake_uri}/landing/<batch_id>/images/<label>/*.png, "
                      "then an empty _COMMITTED file.")  # fmt: skip
                print("Or: make drop-batch. Ctrl-C stops everything.")
                print(f"For `airflow ...` and `python -m ml ...` in another shell: {env_command(home, ports)}\n",
                      flush=True)  # fmt: skip
            time.sleep(1)
        print(f"stopped by itself: {', '.join(failed)}; stopping the rest", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        stop_services(services)
        if ours:
            postgres.stop(home)
    return 1 if failed else 0


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
    sub.add_parser("up", help="Airflow (scheduler, dag-processor, triggerer, api-server) + MLflow UI on 127.0.0.1")
    drop = sub.add_parser("drop-batch", help="commit one more demo batch into the landing area")
    drop.add_argument("--batch-id")
    sub.add_parser("env", help="print make up's environment as shell exports (MLflow through its server)")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return demo()
        if args.command == "up":
            return up()
        if args.command == "drop-batch":
            return drop_batch(args.batch_id)
        # What make up's components get: airflow finds its database and dags, `python -m ml` reads models
        # through the MLflow server (it alone resolves the artifacts it stores), python and airflow are this venv's.
        sys.stdout.write(shell_exports(server_env(embedded_env())))
        return 0
    except PortError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
