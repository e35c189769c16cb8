"""The ``/ct`` report viewer: serves only report prefixes of the lake, never paths outside it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient


@pytest.fixture
def client(lake):  # type: ignore[no-untyped-def]
    from airflow.api_fastapi.core_api.security import get_user

    from ct_airflow.ui.app import create_app

    app = create_app()
    app.dependency_overrides[get_user] = lambda: {"name": "tester"}
    lake.write_bytes("reports/ct_retrain/k/gate.md", b"# Gate decision")
    lake.write_json("state/decisions/20260101T000000-k.json", {"run_key": "k", "decision": "promote"})
    lake.write_json("state/decisions/20260102T000000-k2.json", {"run_key": "k2", "decision": "reject"})
    lake.write_bytes("state/policy.json", b"{}")
    lake.write_bytes("landing/b/images/1/x.png", b"raw")
    return TestClient(app)


def test_serves_reports_and_decisions(client) -> None:
    page = client.get("/lake/reports/ct_retrain/k/gate.md")
    assert page.status_code == 200 and page.text == "# Gate decision"
    newest_first = [{"run_key": "k2", "decision": "reject"}, {"run_key": "k", "decision": "promote"}]
    assert client.get("/decisions").json() == newest_first
    assert client.get("/decisions?limit=1").json() == newest_first[:1]


@pytest.mark.parametrize(
    ("path", "status"),
    [("/lake/landing/b/images/1/x.png", 404), ("/lake/state/policy.json", 404), ("/lake/reports/nope.json", 404),
     ("/lake/reports/..%2F..%2Fetc/passwd", 400)],
    ids=["landing", "state", "missing", "traversal"],
)  # fmt: skip
def test_refuses_everything_else(client, path: str, status: int) -> None:
    assert client.get(path).status_code == status


def test_one_corrupt_record_does_not_hide_the_others(client, lake) -> None:
    lake.write_bytes("state/decisions/20260103T000000-bad.json", b"{truncated")
    response = client.get("/decisions")
    assert response.status_code == 200
    assert [d["run_key"] for d in response.json()] == ["k2", "k"]
    assert response.headers["X-Ct-Unreadable"] == "1"
    assert "20260103T000000-bad.json is not valid JSON" in response.headers["X-Ct-Unreadable-First"]


def test_requires_an_airflow_login(lake) -> None:
    from ct_airflow.ui.app import create_app

    assert TestClient(create_app()).get("/decisions").status_code in (401, 403)
