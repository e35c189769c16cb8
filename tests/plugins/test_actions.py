"""The dashboard's actions, through Airflow's real app: the form triggers ``ct_ops`` as the user, and
Airflow's own permissions decide.

Airflow's FastAPI app (with ct's plugin mounted under ``/ct``) runs in-process on the session's
metadata database, with real JWTs from its auth manager. The action's call to Airflow's REST API goes
to that same app. Running the triggered run (the alias moving) is the browser test's part, with a
scheduler: ``tests/integration/test_operating.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient


def jwt(user: str, role: str) -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=user, role=role))


def ops_runs() -> list[tuple[str, str | None, dict]]:
    """The ``ct_ops`` runs this test created (the session's database also holds other tests' runs)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(select(DagRun.run_id, DagRun.triggering_user_name, DagRun.conf)
                               .where(DagRun.dag_id == "ct_ops", DagRun.id > _FIRST_NEW[0])).all()  # fmt: skip
        return [(r[0], r[1], dict(r[2] or {})) for r in rows]


_FIRST_NEW = [0]  # DagRun ids above this one were created by the running test


def _newest_run_id() -> int:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        return int(session.scalar(select(func.max(DagRun.id))) or 0)


@pytest.fixture(scope="module")
def serialized_dags(airflow_db) -> None:  # type: ignore[no-untyped-def]
    """The DAGs as the dag-processor would store them, so that Airflow's API can trigger ct_ops."""
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "dags", "reserialize"], check=True, capture_output=True)


@pytest.fixture
def airflow(serialized_dags, lake, monkeypatch):  # type: ignore[no-untyped-def]
    """A client of Airflow's whole app; the dashboard's calls to the REST API reach the same app."""
    from airflow.api_fastapi.app import create_app
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    from ct_airflow.ui import actions

    app = create_app()
    monkeypatch.setattr(actions, "api_client", lambda: TestClient(app, base_url="http://127.0.0.1:8080"))
    _FIRST_NEW[0] = _newest_run_id()
    yield TestClient(app, base_url="http://127.0.0.1:8080")
    with create_session() as session:  # nothing queued is left for the other tests' ct_ops runs
        session.execute(delete(DagRun).where(DagRun.dag_id == "ct_ops", DagRun.id > _FIRST_NEW[0]))


def form_for(client: TestClient, token: str) -> dict[str, str]:
    page = client.get("/ct/actions", headers={"Authorization": f"Bearer {token}"})
    assert page.status_code == 200, page.text
    csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert csrf, "the form carries a CSRF token"
    return {"csrf": csrf.group(1), "action": "rollback", "version": "1", "reason": "v2 misreads the new scanner"}


def test_an_operator_triggers_ct_ops_as_themselves(airflow) -> None:
    token = jwt("alice", "op")
    headers = {"Authorization": f"Bearer {token}", "Origin": "http://127.0.0.1:8080"}
    reply = airflow.post("/ct/actions", data=form_for(airflow, token), headers=headers, follow_redirects=False)
    assert reply.status_code == 303, reply.text
    [(run_id, user, conf)] = ops_runs()
    assert user == "alice", "the run is triggered as the logged-in user, not as ct"
    assert conf == {"action": "rollback", "version": "1", "reason": "v2 misreads the new scanner"}
    assert reply.headers["location"].endswith(f"/ct/actions?run={run_id.replace(':', '%3A').replace('+', '%2B')}")
    result = airflow.get(reply.headers["location"], headers=headers)
    assert 'id="result" data-state="queued"' in result.text and "asked by alice" in result.text
    assert '<meta http-equiv="refresh"' in result.text, "the result page refreshes itself until the run ends"


def test_a_viewer_is_refused_by_airflow_and_nothing_runs(airflow) -> None:
    token = jwt("victor", "viewer")
    reply = airflow.post("/ct/actions", data=form_for(airflow, token), headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 403
    assert "Airflow refused: you may not trigger ct_ops" in reply.text
    assert ops_runs() == []


def test_forged_expired_and_incomplete_forms_trigger_nothing(airflow) -> None:
    token = jwt("alice", "op")
    auth = {"Authorization": f"Bearer {token}"}
    form = form_for(airflow, token)
    other_users_form = form_for(airflow, jwt("mallory", "op"))
    assert airflow.post("/ct/actions", data={**form, "csrf": ""}, headers=auth).status_code == 403
    assert airflow.post("/ct/actions", data=other_users_form, headers=auth).status_code == 403
    cross_site = airflow.post("/ct/actions", data=form, headers={**auth, "Origin": "https://evil.example"})
    assert cross_site.status_code == 403 and "refusing a form posted from https://evil.example" in cross_site.text
    short = airflow.post("/ct/actions", data={**form, "reason": "oops"}, headers=auth)
    assert short.status_code == 400 and "at least 10 characters" in short.text
    bad_version = airflow.post("/ct/actions", data={**form, "version": "1; drop"}, headers=auth)
    assert bad_version.status_code == 400 and "choose a model version" in bad_version.text
    assert ops_runs() == []


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_actions_need_a_login(airflow, method: str) -> None:
    assert airflow.request(method, "/ct/actions").status_code == 401
    assert ops_runs() == []
