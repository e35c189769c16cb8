from __future__ import annotations

import asyncio

from ct_airflow.triggers import NewLandingBatchTrigger, claim_new_batches
from ct_airflow.ui.links import report_url


def test_watcher_announces_each_committed_batch_once(lake, settings, write_batch) -> None:
    write_batch("a", 0, 30)
    write_batch("still-writing", 30, 30, commit=False)
    assert claim_new_batches(settings.lake_uri) == ["a"]
    assert claim_new_batches(settings.lake_uri) == [], "consumed: the same batch never fires twice"
    write_batch("b", 60, 30)
    assert claim_new_batches(None) == ["b"]  # None: the lake comes from the configuration


def test_trigger_yields_an_event_with_the_batch_ids(lake, settings, write_batch) -> None:
    write_batch("x1", 0, 30)
    trigger = NewLandingBatchTrigger(poll_interval=0.01)
    classpath, kwargs = trigger.serialize()
    assert classpath == "ct_airflow.triggers.NewLandingBatchTrigger"
    assert kwargs == {"lake_uri": None, "poll_interval": 0.01}

    async def first_event():  # type: ignore[no-untyped-def]
        return await asyncio.wait_for(anext(trigger.run()), timeout=20)

    event = asyncio.run(first_event())
    assert event.payload == {"batch_ids": ["x1"]}


def test_report_links_open_the_dashboard() -> None:
    root = "file:///srv/ct/lake"
    assert (
        report_url({"html_uri": f"{root}/reports/ct_retrain/k/drift.html"}, root)
        == "/ct/lake/reports/ct_retrain/k/drift.html"
    )
    quarantined = {"quarantined": [{"report_uri": f"{root}/quarantine/b/report.json"}], "batches": []}
    assert (
        report_url(quarantined, root, "http://airflow:8080/")
        == "http://airflow:8080/ct/report/quarantine/b/report.json"
    )
    # A decision (the gate's, or a rollback's) opens its page, not its raw record.
    gate = {
        "gate_md_uri": f"{root}/reports/ct_retrain/k/gate.md",
        "history_key": "state/decisions/20260101T030000.000001-gate-k.json",
    }
    assert report_url(gate, root) == "/ct/decision/20260101T030000.000001-gate-k"
    assert report_url({"decision_uri": f"{root}/reports/ct_retrain/k/decision.json"}, root) == (
        "/ct/report/reports/ct_retrain/k/decision.json"
    )
    assert report_url({"html_uri": "s3://elsewhere/x"}, root) == ""
