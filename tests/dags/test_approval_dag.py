"""Human approval in ``ct_retrain`` under ``dag.test()``, answered through Airflow's REST API.

A helper thread plays the approver: it waits until the ``approval`` task is *awaiting input*, then
answers with a real token through the public API (``PATCH .../hitlDetails``) of Airflow's own
FastAPI app on the same metadata database, or, for the timeout, runs the scheduler's own sweep of
overdue approvals. ``dag.test()`` resumes the task and finishes the run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest

from ml import layout
from tests.dags.test_dag_runs import states
from tests.ml.test_promotion import champion_now, history

WAIT_S = 600


def awaiting_run_id() -> str | None:
    """The run whose approval task waits for an answer, if any."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(select(TaskInstance.run_id).where(
            TaskInstance.dag_id == "ct_retrain", TaskInstance.task_id == "approval",
            TaskInstance.state == TaskInstanceState.AWAITING_INPUT))  # fmt: skip


def token(user: str, role: str = "admin") -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=user, role=role))


def rest_answer(chosen: str, comment: str, user: str = "alice", role: str = "admin") -> Callable[[str], Any]:
    def respond(run_id: str) -> Any:
        from airflow.api_fastapi.app import create_app
        from fastapi.testclient import TestClient

        client = TestClient(create_app())
        url = f"/api/v2/dags/ct_retrain/dagRuns/{quote(run_id, safe='')}/taskInstances/approval/-1/hitlDetails"
        headers = {"Authorization": f"Bearer {token(user, role)}"}
        asked = client.get(url, headers=headers).json()
        reply = client.patch(url, json={"chosen_options": [chosen], "params_input": {"comment": comment}},
                             headers=headers)  # fmt: skip
        reply.asked = asked  # what the approver was shown
        return reply

    return respond


def scheduler_timeout_sweep(run_id: str) -> None:
    """What the running scheduler does every loop for approvals past their deadline."""
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

    time.sleep(4)  # the approval's response_timeout (0.001 h) passes
    SchedulerJobRunner(job=Job()).check_awaiting_input_timeouts()


def run_answered(dag, when: datetime, act: Callable[[str], Any]) -> tuple[Any, list[Any]]:  # type: ignore[no-untyped-def]
    """``dag.test()`` a forced retrain while a thread answers its approval with ``act(run_id)``."""
    replies: list[Any] = []
    done = threading.Event()

    def approver() -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not done.is_set():
            if run_id := awaiting_run_id():
                replies.append(act(run_id))
                return
            time.sleep(0.5)

    thread = threading.Thread(target=approver, daemon=True)
    thread.start()
    run = dag.test(logical_date=when, run_after=when, run_conf={"force_retrain": True})
    done.set()
    thread.join(timeout=5)
    return run, replies


@pytest.fixture
def approving_dag(airflow_db, monkeypatch, write_batch):  # type: ignore[no-untyped-def]
    """A weak first champion (v1, promoted without approval), then approvals on, with a short timeout."""
    from airflow.dag_processing.dagbag import DagBag

    from tests.dags.conftest import REPO

    write_batch("a1", 0, 500)
    write_batch("a2", 500, 500)
    with monkeypatch.context() as weak:
        for key, value in {"CT_TRAIN__EPOCHS": "1", "CT_TRAIN__LR": "1e-6", "CT_GATE__FLOOR_ACCURACY": "0"}.items():
            weak.setenv(key, value)
        dags = DagBag(dag_folder=str(REPO / "dags"))
        assert dags.dags["ct_ingest"].test(run_conf={"batch_ids": ["a1", "a2"]}).state == "success"
        first = datetime(2026, 3, 1, tzinfo=UTC)
        assert dags.dags["ct_retrain"].test(logical_date=first, run_after=first).state == "success"
    assert champion_now() == "1"
    monkeypatch.setenv("CT_GATE__REQUIRE_APPROVAL", "true")
    monkeypatch.setenv("CT_GATE__APPROVAL_TIMEOUT_HOURS", "0.001")  # read when the DAG file is parsed
    monkeypatch.setenv("CT_TRAIN__EPOCHS", "2")  # enough to beat v1 by far
    return DagBag(dag_folder=str(REPO / "dags")).dags["ct_retrain"]


def test_reject_timeout_and_approve_through_the_rest_api(approving_dag) -> None:
    # A viewer may look but not answer; Airflow's own permissions refuse it.
    rejected, replies = run_answered(approving_dag, datetime(2026, 3, 2, tzinfo=UTC), _viewer_then("Reject", "not yet"))
    assert [r.status_code for r in replies[0]] == [403, 200], [r.text for r in replies[0]]
    assert rejected.state == "success"
    assert champion_now() == "1"
    tail = ("gate", "approval", "apply_approval", "promoted", "champion_kept")
    assert [states(rejected)[t] for t in tail] == ["success", "success", "success", "skipped", "success"]
    record = history()[-1]
    assert (record["kind"], record["decision"], record["reasons"][0]) == (
        "approval",
        "reject",
        "not approved by carol: not yet",
    )

    expired, _ = run_answered(approving_dag, datetime(2026, 3, 3, tzinfo=UTC), scheduler_timeout_sweep)
    assert expired.state == "success" and champion_now() == "1"
    assert states(expired)["champion_kept"] == "success"
    assert (history()[-1]["decision"], history()[-1]["actor"]) == ("expired", None)

    approved, replies = run_answered(approving_dag, datetime(2026, 3, 4, tzinfo=UTC),
                                     rest_answer("Approve", "numbers look right", "alice"))  # fmt: skip
    assert replies[0].status_code == 200, replies[0].text
    asked = replies[0].asked
    assert asked["subject"].startswith("Promote v") and asked["options"] == ["Approve", "Reject"]
    for evidence in ("PENDING v", "lower bound", "p-value", "| class | support |", "/ct/decision/"):
        assert evidence in asked["body"], (evidence, asked["body"])
    assert approved.state == "success"
    assert states(approved)["promoted"] == "success" and states(approved)["champion_kept"] == "skipped"
    record = history()[-1]
    assert (record["decision"], record["actor"], record["reasons"][0]) == (
        "promote", "alice", "approved by alice: numbers look right")  # fmt: skip
    assert champion_now() == record["candidate_version"] != "1"
    # Each approval's evidence was in front of the approver, and each settled run has its record.
    assert [h["decision"] for h in history()[1:]] == ["pending", "reject", "pending", "expired", "pending", "promote"]
    key = record["run_key"]
    # A candidate no better than the new champion: the gate rejects, and nobody is asked.
    again, asked_anyway = run_answered(approving_dag, datetime(2026, 3, 5, tzinfo=UTC), rest_answer("Reject", "?"))
    assert asked_anyway == [], "nobody is asked about a reject"
    assert history()[-1]["kind"] == "gate" and history()[-1]["decision"] == "reject", history()[-1]["reasons"]
    assert [states(again)[t] for t in tail] == ["success", "skipped", "skipped", "skipped", "success"]
    from ml.config import load_settings
    from ml.storage import Lake

    assert Lake.from_uri(load_settings().lake_uri).exists(layout.report(layout.RETRAIN_DAG, key, "approval.json"))


def _viewer_then(chosen: str, comment: str) -> Callable[[str], list[Any]]:
    def act(run_id: str) -> list[Any]:
        return [rest_answer(chosen, comment, "victor", role="viewer")(run_id),
                rest_answer(chosen, comment, "carol")(run_id)]  # fmt: skip

    return act
