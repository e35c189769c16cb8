"""Human approval of a promotion (``gate.require_approval``), settled by ``python -m ml approval``.

The Airflow side (the approval task answered through the REST API, and its timeout) is in
``tests/dags/test_approval_dag.py``; here the settling itself, on real MLflow.
"""

from __future__ import annotations

import pytest

from ml import layout
from tests.ml.test_promotion import candidate, champion_now, history, make_weak_champion


@pytest.fixture
def approvals(run_step, write_batch, monkeypatch):  # type: ignore[no-untyped-def]
    weak = make_weak_champion(run_step, write_batch, monkeypatch)
    monkeypatch.setenv("CT_GATE__REQUIRE_APPROVAL", "true")
    monkeypatch.setenv("CT_GATE__APPROVAL_TIMEOUT_HOURS", "2")
    return weak


def pending_gate(run_step, write_batch, run_key: str, start: int) -> dict:  # type: ignore[no-untyped-def]
    write_batch(f"b-{run_key}", start, 300)
    run_step("ingest")
    candidate(run_step, run_key)
    gate = run_step("gate", "--run-key", run_key)
    assert gate["decision"] == "pending", gate
    assert gate["reasons"][0].startswith("waiting for an approver: the evidence says promote")
    assert champion_now() == "1", "a pending decision must not move the champion"
    return gate


def test_approve_reject_and_expire_each_end_with_the_right_alias_and_record(
    run_step, approvals, write_batch, lake
) -> None:
    gate = pending_gate(run_step, write_batch, "r2", 500)
    body = gate["approval_body"]
    assert body.startswith(f"PENDING v{gate['candidate_version']} over v1: waiting for an approver")
    assert "lower bound" in body and "p-value" in body and "| class | support |" in body

    # Reject first: nothing moves, and the record says who and why.
    rejected = run_step("approval", "--run-key", "r2", "--answer", "reject", "--by", "carol", "--comment", "too soon")
    assert rejected["decision"] == "reject" and rejected["reasons"][0] == "not approved by carol: too soon"
    assert champion_now() == "1"
    # A second answer to the same approval changes nothing: the first one is the record.
    again = run_step("approval", "--run-key", "r2", "--answer", "approve", "--by", "dave")
    assert again["already_done"] and again["decision"] == "reject" and champion_now() == "1"

    pending_gate(run_step, write_batch, "r3", 800)
    expired = run_step("approval", "--run-key", "r3", "--answer", "expired")
    assert expired["decision"] == "expired" and "nobody answered within 2 h" in expired["reasons"][0]
    assert champion_now() == "1"

    gate4 = pending_gate(run_step, write_batch, "r4", 1100)
    approved = run_step(
        "approval", "--run-key", "r4", "--answer", "approve", "--by", "alice", "--comment", "looks right"
    )
    assert approved["decision"] == "promote" and approved["approval"]["by"] == "alice"
    assert approved["reasons"][0] == "approved by alice: looks right"
    assert champion_now() == gate4["candidate_version"]
    # MLflow's tags point people at the decision's page, and keep the record's address beside it.
    from ml import registry
    from ml.config import load_settings

    settings = load_settings()
    tags = registry.client(settings).get_model_version(settings.model_name, gate4["candidate_version"]).tags
    assert tags["ct.gate.decision"] == "promote"
    assert (
        tags["ct.gate.report"] == f"http://127.0.0.1:8080/ct/decision/{approved['history_key'].rsplit('/', 1)[-1][:-5]}"
    )
    assert tags["ct.gate.record"].startswith("file://") and tags["ct.gate.record"].endswith("/r4/approval.json")

    # Every step is in the history, in order, each with its own record object.
    assert [(h["kind"], h["decision"], h.get("actor")) for h in history()[1:]] == [
        ("gate", "pending", None), ("approval", "reject", "carol"),
        ("gate", "pending", None), ("approval", "expired", None),
        ("gate", "pending", None), ("approval", "promote", "alice"),
    ]  # fmt: skip
    assert lake.read_json(layout.report(layout.RETRAIN_DAG, "r4", "approval.json"))["decision"] == "promote"


def test_an_approval_that_waited_while_the_champion_moved_moves_nothing(run_step, approvals, write_batch) -> None:
    pending_gate(run_step, write_batch, "r2", 500)
    run_step("promote", "--version", "2", "--reason", "forced while the approval waits", "--run-key", "ops1")
    approved = run_step("approval", "--run-key", "r2", "--answer", "approve", "--by", "alice")
    # v2 is the candidate itself here: the approval compares against the champion the gate saw (v1).
    assert (
        approved["decision"] == "reject" and "moved from v1 to v2 while the approval waited" in approved["reasons"][0]
    )
    assert champion_now() == "2"


def test_no_approval_for_a_reject_or_a_backfill(run_step, approvals, write_batch, monkeypatch) -> None:
    write_batch("b2", 500, 300)
    run_step("ingest")
    candidate(run_step, "bf")
    backfill = run_step("gate", "--run-key", "bf", "--backfill")
    assert backfill["decision"] == "reject" and "approval_body" not in backfill
    refused = run_step("approval", "--run-key", "bf", "--answer", "approve", "--by", "alice")
    assert "there is no approval to settle" in refused["error"] and champion_now() == "1"

    candidate(run_step, "bf2")
    allowed = run_step("gate", "--run-key", "bf2", "--backfill", "--allow-backfill-promote")
    assert allowed["decision"] == "promote", "a backfill allowed to promote does not ask either"
