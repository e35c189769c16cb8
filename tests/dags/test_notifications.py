"""Messages through the ``ct_notify`` webhook connection, received by a local HTTP sink, from real DAG runs.

One story under ``dag.test()``: a batch is quarantined, a model is promoted, an operator moves the
champion both ways (a rollback and a forced promotion), and a move that cannot be done fails.
Each event must reach the sink once, with its one-line reason and a link into the ct dashboard.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ml.release import registry


@pytest.fixture
def sink(webhook: list[dict], monkeypatch) -> list[dict]:  # type: ignore[no-untyped-def]
    """The webhook receiver, with short training: messages are what is tested, not models."""
    monkeypatch.setenv("CT_TRAIN__EPOCHS", "2")
    monkeypatch.setenv("CT_GATE__FLOOR_ACCURACY", "0")  # any first model becomes champion
    return webhook


def events(received: list[dict]) -> list[str]:
    return [m["event"] for m in received]


def test_each_event_reaches_the_webhook_with_its_reason_and_link(run_dag, dagbag, write_batch, settings, sink) -> None:
    write_batch("n1", 0, 500)
    write_batch("bad", 500, 60, extra_files={"images/3/broken.png": b"not a png"})
    ingest = run_dag("ct_ingest", when=datetime(2026, 4, 1, 1, tzinfo=UTC), run_conf={"batch_ids": ["n1", "bad"]})
    assert ingest.state == "failed"  # the quarantine fails the run visibly
    [quarantine] = sink
    assert quarantine["event"] == "quarantine" and quarantine["_auth"] == "Bearer s3cret"
    assert quarantine["reason"] == "bad: image_decodes"
    assert quarantine["text"] == "ct: batch quarantined, champion untouched: bad: image_decodes"
    assert quarantine["link"] == "https://airflow.example/ct/data"
    assert (quarantine["dag_id"], quarantine["task_id"]) == ("ct_ingest", "fail_on_quarantine")

    sink.clear()
    assert run_dag("ct_retrain", when=datetime(2026, 4, 2, tzinfo=UTC)).state == "success"
    [promotion] = sink
    assert promotion["event"] == "promotion" and promotion["text"].startswith(
        "ct: promotion: PROMOTE v1: first model: accuracy"
    )
    assert promotion["link"].startswith("https://airflow.example/ct/decision/") and "-gate-" in promotion["link"]

    # v2, whatever the gate says of it, so that the operator can move the champion both ways.
    sink.clear()
    run_dag("ct_retrain", when=datetime(2026, 4, 3, tzinfo=UTC), run_conf={"force_retrain": True})
    assert events(sink) in ([], ["promotion"])  # a gate's reject sends nothing
    client = registry.client(settings)
    first = registry.champion(client, settings.model_name).version
    other = "2" if first == "1" else "1"
    moves = [("promote", other), ("rollback", first)] if other == "2" else [("rollback", other), ("promote", first)]
    sink.clear()
    for day, (action, version) in enumerate(moves, start=4):
        ops = run_dag("ct_ops", when=datetime(2026, 4, day, tzinfo=UTC),
                      run_conf={"action": action, "version": version, "reason": f"{action} asked by the on-call"})  # fmt: skip
        assert ops.state == "success"
    assert sorted(events(sink)) == ["forced promotion", "rollback"]
    for message in sink:
        assert message["reason"].endswith("asked by the on-call") and " to v" in message["reason"]
        assert message["link"].startswith("https://airflow.example/ct/decision/") and message["dag_id"] == "ct_ops"

    # A move that cannot be done (the version is already the champion) fails the task: that is news too.
    sink.clear()
    task = dagbag.dags["ct_ops"].get_task("move_champion")
    retries, task.retries = task.retries, 0  # fail at once rather than wait out the outage retries
    try:
        failed = dagbag.dags["ct_ops"].test(logical_date=datetime(2026, 4, 9, tzinfo=UTC), run_after=datetime(2026, 4, 9, tzinfo=UTC),
                              run_conf={"action": "promote", "version": first, "reason": "already there, on purpose"})  # fmt: skip
    finally:
        task.retries = retries
    assert failed.state == "failed"
    [failure] = sink
    assert failure["event"] == "task failed" and failure["task_id"] == "move_champion"
    assert f"v{first} is already @champion" in failure["reason"] and failure["link"] == "https://airflow.example/ct/"
