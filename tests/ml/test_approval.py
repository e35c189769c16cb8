"""Human approval of a promotion (``gate.require_approval``), settled by ``python -m ml approval``.

Approve, reject and timeout, each through the real ``approval`` task answered over Airflow's REST API,
are in ``tests/dags/test_approval_dag.py``. Here the settling itself, on real MLflow: what a pending
decision is, the compare-and-set when the champion moved while the approval waited, a second
answer, the links in MLflow's tags, and who is never asked.
"""

from __future__ import annotations

from ml import layout
from ml.config import load_settings
from ml.release import registry
from tests.ml.test_promotion import candidate, champion_now, history, make_weak_champion


def pending_gate(run_step, write_batch, run_key: str, start: int) -> dict:  # type: ignore[no-untyped-def]
    write_batch(f"b-{run_key}", start, 300)
    run_step("ingest")
    candidate(run_step, run_key)
    gate = run_step("gate", "--run-key", run_key)
    assert gate["decision"] == "pending", gate
    assert gate["reasons"][0].startswith("waiting for an approver: the evidence says promote")
    assert champion_now() == "1", "a pending decision must not move the champion"
    return gate


def test_approvals_settle_by_compare_and_set_once_and_only_when_asked(run_step, write_batch, monkeypatch, lake) -> None:
    make_weak_champion(run_step, write_batch, monkeypatch)
    monkeypatch.setenv("CT_GATE__REQUIRE_APPROVAL", "true")
    # Two candidates wait for an answer, both against v1.
    first = pending_gate(run_step, write_batch, "r2", 500)
    body = first["approval_body"]
    assert body.startswith(f"PENDING v{first['candidate_version']} over v1: waiting for an approver")
    assert "lower bound" in body and "p-value" in body and "| class | support |" in body
    second = pending_gate(run_step, write_batch, "r3", 800)
    # A backfill with the same good evidence never asks (it cannot promote): nothing to settle for it.
    candidate(run_step, "bf", "--replay", "bf")
    backfill = run_step("gate", "--run-key", "bf")
    assert backfill["decision"] == "would-promote" and "approval_body" not in backfill, backfill
    assert "live ct would have asked an approver first (gate.require_approval)" in backfill["reasons"]
    refused = run_step("approval", "--run-key", "bf", "--answer", "approve", "--by", "alice")
    assert "there is no approval to settle" in refused["error"] and champion_now() == "1"

    approved = run_step("approval", "--run-key", "r3", "--answer", "approve", "--by", "alice", "--comment", "good")
    assert approved["decision"] == "promote" and approved["reasons"][0] == "approved by alice: good"
    assert champion_now() == second["candidate_version"]
    # MLflow's tags point people at the decision's page, and keep the record's address beside it.
    settings = load_settings()
    tags = registry.client(settings).get_model_version(settings.model_name, second["candidate_version"]).tags
    page = approved["history_key"].rsplit("/", 1)[-1].removesuffix(".json")
    assert (
        tags["ct.gate.decision"] == "promote" and tags["ct.gate.report"] == f"http://127.0.0.1:8080/ct/decision/{page}"
    )
    assert tags["ct.gate.record"].startswith("file://") and tags["ct.gate.record"].endswith("/r3/approval.json")

    # The first approval now comes too late: the champion it was decided against is gone.
    late = run_step("approval", "--run-key", "r2", "--answer", "approve", "--by", "bob")
    assert late["decision"] == "reject"
    assert f"moved from v1 to v{second['candidate_version']} while the approval waited" in late["reasons"][0]
    assert champion_now() == second["candidate_version"]
    # A second answer to a settled approval changes nothing: the first one is the record.
    again = run_step("approval", "--run-key", "r2", "--answer", "reject", "--by", "carol", "--comment", "no")
    assert again["already_done"] and again["decision"] == "reject" and again["reasons"] == late["reasons"]
    assert [(h["kind"], h["decision"], h.get("actor")) for h in history()[1:]] == [
        ("gate", "pending", None), ("gate", "pending", None), ("gate", "would-promote", None),
        ("approval", "promote", "alice"), ("approval", "reject", "bob"),
    ]  # fmt: skip
    assert lake.read_json(layout.report(layout.RETRAIN_DAG, "r2", "approval.json"))["approval"]["by"] == "bob"
