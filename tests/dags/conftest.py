from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def dagbag(airflow_db):  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


WHEN = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.fixture
def run_dag(dagbag):  # type: ignore[no-untyped-def]
    def _run(dag_id: str, when: datetime = WHEN, **kwargs):  # type: ignore[no-untyped-def]
        # A fixed run_after gives a fixed run_id: calling this twice re-runs the same DAG run.
        return dagbag.dags[dag_id].test(logical_date=when, run_after=when, **kwargs)

    return _run


@pytest.fixture
def webhook(monkeypatch) -> Iterator[list[dict]]:  # type: ignore[no-untyped-def]
    """A webhook receiver on loopback, wired to ct through the ``ct_notify`` Airflow connection: the messages it got."""
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({**json.loads(body), "_auth": self.headers.get("Authorization")})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    conn = {"conn_type": "http", "host": f"http://127.0.0.1:{port}/hooks/ct", "password": "s3cret"}
    monkeypatch.setenv("AIRFLOW_CONN_CT_NOTIFY", json.dumps(conn))
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example")
    yield received
    server.shutdown()
