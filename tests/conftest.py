"""Shared fixtures. Airflow's environment is set in ``pytest_configure``, before anything imports airflow."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="ct-tests-"))
#: The embedded home whose PostgreSQL serves the whole session (Airflow's database, MLflow's per test).
SESSION_PG_HOME = _SESSION_HOME / "session"

# Small, quick training for tests; the demo and production use the configured defaults.
TEST_ENV = {"CT_TRAIN__EPOCHS": "10", "CT_GATE__EVAL_RECENT_BATCHES": "3", "CT_INGEST__MIN_ROWS": "20"}


def pytest_configure(config: pytest.Config) -> None:
    sys.path[:0] = [str(REPO / "plugins"), str(REPO)]
    from ct_airflow.launcher import postgres
    from ct_airflow.launcher.local import embedded_env

    # One PostgreSQL server for the session, as in the embedded profile: Airflow's metadata database,
    # and one MLflow database per test (see ``ct_home``).
    os.environ.update(embedded_env(SESSION_PG_HOME))
    os.environ.update(TEST_ENV)
    if _runs_tests(config):
        postgres.start(SESSION_PG_HOME)


def _runs_tests(config: pytest.Config) -> bool:
    """False in xdist's controller process, which hands tests to its workers and runs none itself."""
    return hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None)


#: Tests that share a costly session or module setup run on one xdist worker (``make test`` runs two):
#: the fault suite's servers and scenario, the server-profile stack that the backfill reuses, and the browser's stack.
XDIST_GROUPS = {"tests/faults/": "faults", "tests/integration/test_server_profile.py": "server-profile",
                "tests/integration/test_operating.py": "operating",
                "tests/integration/test_backfill_replay.py": "replay"}  # fmt: skip


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the marks into the node ids it schedules by
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        where = Path(str(item.path)).relative_to(REPO).as_posix()
        for prefix, group in XDIST_GROUPS.items():
            if where.startswith(prefix):
                item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Refuse to run split groups: a later test would find another worker's fresh stack, not its own.

    xdist groups by a ``@group`` suffix it writes into each node id; when pytest stops honouring
    that write (9.2 did: pytest-dev/pytest-xdist#1386), the groups are silently spread over the
    workers. This makes that a loud error instead of a flaky test.
    """
    if not hasattr(session.config, "workerinput") or not getattr(session.config.option, "loadgroup", False):
        return
    lost = [item.nodeid for item in session.items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:
        message = (f"xdist ignored the xdist_group marks (e.g. {lost[0]}): this pytest and pytest-xdist do not "
                   "group tests; use the versions in requirements.lock")  # fmt: skip
        print(f"ERROR: {message}", file=sys.stderr)  # a worker's own error reaches the terminal only this way
        raise pytest.UsageError(message)


def pytest_unconfigure(config: pytest.Config) -> None:
    from ct_airflow.launcher import postgres

    if "airflow.settings" in sys.modules:  # close Airflow's pool now, not in an atexit hook after the server is gone
        sys.modules["airflow.settings"].dispose_orm()
    postgres.stop(SESSION_PG_HOME)
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


MLFLOW_TEMPLATE = "mlflow_template"


@pytest.fixture(scope="session")
def mlflow_template() -> str:
    """A database with MLflow's schema migrated once; each test's MLflow database is a copy of it."""
    from ct_airflow.launcher import postgres
    from ml.config import embedded_database_uri

    home = SESSION_PG_HOME
    postgres.create_databases(home, [MLFLOW_TEMPLATE])
    uri = embedded_database_uri(home, MLFLOW_TEMPLATE)
    # In a child process, so that no connection to the template stays open (copying needs it idle).
    subprocess.run([sys.executable, "-c", "import sys; from mlflow.store.tracking.sqlalchemy_store import "
                    "SqlAlchemyStore; SqlAlchemyStore(sys.argv[1], sys.argv[2])", uri, str(_SESSION_HOME / "unused")],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return MLFLOW_TEMPLATE


@pytest.fixture
def mlflow_database(mlflow_template: str) -> Iterator[str]:
    """A fresh, migrated MLflow database on the session's PostgreSQL; yields its SQLAlchemy URI."""
    from ct_airflow.launcher import postgres
    from ml.config import embedded_database_uri

    home = SESSION_PG_HOME
    name = f"mlflow_{time.monotonic_ns()}"
    postgres.create_databases(home, [name], template=mlflow_template)
    yield embedded_database_uri(home, name)
    postgres.drop_database(home, name)


@pytest.fixture
def run_step(ct_home, capsys):  # type: ignore[no-untyped-def]
    """Run ``python -m ml <argv>`` in-process and return its JSON result, checking that the exit code
    matches it: 0 for a result or a skip, 75 for a retryable error, 2 for refused arguments, else 1."""

    import json

    from ml.cli import main as cli_main

    def _run(*argv: str) -> dict:
        code = cli_main(list(argv))
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        expected = 0
        if "error" in result:
            expected = (
                75
                if result["retryable"]
                else 2
                if result["error_type"] in ("UsageError", "ConfigError", "ModelBuildError")
                else 1
            )
        assert code == expected, (code, result)
        return result

    return _run


@pytest.fixture
def ct_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_database: str) -> Path:
    """A fresh embedded home (lake, artifacts) with its own MLflow database, for one test."""
    home = tmp_path / "ct"
    monkeypatch.setenv("CT_HOME", str(home))
    monkeypatch.setenv("CT_MLFLOW_TRACKING_URI", mlflow_database)
    return home


@pytest.fixture
def settings(ct_home: Path):  # type: ignore[no-untyped-def]
    from ml.config import load_settings

    return load_settings()


@pytest.fixture
def lake(settings):  # type: ignore[no-untyped-def]
    from ml.storage import Lake

    return Lake.from_uri(settings.lake_uri)


@pytest.fixture(scope="session")
def digits():  # type: ignore[no-untyped-def]
    from ml.demo import digits as load

    return load()


@pytest.fixture
def write_batch(lake, digits):  # type: ignore[no-untyped-def]
    """Write a committed landing batch of real digits: ``write_batch("b1", start, count, **kw)``."""
    from ml.demo import write_batch as write

    def _write(batch_id: str, start: int = 0, count: int = 200, transform=None, extra_files=None, commit=True,  # type: ignore[no-untyped-def]
               event_time=None) -> str:  # fmt: skip
        images, labels = digits
        chunk = images[start : start + count]
        write(lake, batch_id, transform(chunk) if transform else chunk, labels[start : start + count], extra_files,
              commit, event_time)  # fmt: skip
        return batch_id

    return _write


@pytest.fixture
def champion(run_step, write_batch, settings):  # type: ignore[no-untyped-def]
    """A first champion trained and promoted by the retrain step (run key r1): (its version, its eval.json)."""
    from ml import layout
    from ml.storage import Lake

    write_batch("b1", 0, 400)
    run_step("ingest")
    decided = run_step("retrain", "--run-key", "r1")
    assert decided["decision"] == "promote", decided
    lake = Lake.from_uri(settings.lake_uri)
    return decided["candidate_version"], lake.read_json(layout.report(layout.RETRAIN_DAG, "r1", "eval.json"))


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """An initialised Airflow metadata database (on the session's PostgreSQL) for dag.test() and DagBag tests."""
    airflow_home = Path(os.environ["AIRFLOW_HOME"])
    airflow_home.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True,
                   env=os.environ.copy(), stdout=subprocess.DEVNULL)  # fmt: skip
    return airflow_home


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """moto's S3 in server mode over HTTP on loopback; yields its endpoint URL."""
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_env(moto_s3: str, monkeypatch: pytest.MonkeyPatch) -> str:
    import boto3

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "CT_S3_ENDPOINT_URL": moto_s3}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    bucket = f"ct-{time.monotonic_ns()}"
    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket=bucket)
    return bucket
