"""Real DAG runs with ``dag.test()``: the operator runs every ``ml`` step as a subprocess."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ml import layout, overview
from ml.release import registry


def states(dag_run) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def event_extras(asset: str) -> list[dict]:
    """The extras of every event of ``asset``, oldest first."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == asset)
            .order_by(AssetEvent.id)
        ).all()
        return [dict(e.extra or {}) for e in rows]


def curated_event_extras(batch_id: str) -> list[dict]:
    return [e for e in event_extras("ct_curated_batches") if batch_id in e.get("batch_ids", [])]


def extra_link(dag_run, task_id: str, link_class: str) -> str:  # type: ignore[no-untyped-def]
    """The link Airflow stored for a finished task (links are computed on the worker in Airflow 3)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        value = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == dag_run.dag_id,
                XComModel.run_id == dag_run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == f"_link_{link_class}",
            )
        )
    return str(value)


def test_ingest_curates_and_announces_the_batch(run_dag, write_batch, lake) -> None:
    write_batch("d1", 0, 200)
    dag_run = run_dag("ct_ingest", run_conf={"batch_ids": ["d1"]})
    assert dag_run.state == "success"
    assert states(dag_run) == {"ingest": "success", "publish_curated": "success", "fail_on_quarantine": "success"}
    assert lake.exists(layout.manifest("d1"))
    assert curated_event_extras("d1") == [{"batch_ids": ["d1"]}]


def test_ingest_quarantines_a_corrupted_batch_and_fails_visibly(run_dag, write_batch, lake) -> None:
    write_batch("bad", 0, 60, extra_files={"images/2/oops.png": b"not an image"})
    dag_run = run_dag("ct_ingest", run_conf={"batch_ids": ["bad"]})
    assert dag_run.state == "failed"
    assert states(dag_run) == {"ingest": "success", "publish_curated": "skipped", "fail_on_quarantine": "failed"}
    assert lake.read_json(layout.quarantine_report("bad"))["failed_rules"] == ["image_decodes"]
    assert curated_event_extras("bad") == []


def test_retrain_end_to_end_then_rerun_duplicates_nothing(run_dag, write_batch, lake, settings) -> None:
    from ct_airflow.runkey import run_key_from_run_id

    write_batch("r1", 0, 500)
    assert run_dag("ct_ingest", run_conf={"batch_ids": ["r1"]}).state == "success"
    curated_keys = lake.list_keys("curated")

    first = run_dag("ct_retrain")
    assert first.state == "success"
    assert states(first) == {"drift": "success", "decide": "success", "train": "success", "evaluate": "success",
                             "gate": "success", "approval": "skipped", "apply_approval": "skipped",
                             "promoted": "success", "champion_kept": "skipped"}  # fmt: skip
    key = run_key_from_run_id(first.run_id)
    gate = lake.read_json(layout.report(layout.RETRAIN_DAG, key, "gate.json"))
    assert gate["decision"] == "promote" and gate["candidate_version"] == "1"
    assert extra_link(first, "gate", "ReportLink") == f"/ct/decision/{overview.decision_id(gate)}"
    assert extra_link(first, "train", "MlflowModelLink").endswith("/#/models/ct-classifier/versions/1")
    # The training run's page in MLflow: its per-epoch metrics were logged while it trained.
    train_run = registry.get_version(registry.client(settings), settings.model_name, "1").run_id
    assert extra_link(first, "train", "MlflowRunLink").endswith(f"/#/runs/{train_run}")
    epochs = registry.client(settings).get_metric_history(train_run, "val_accuracy")
    assert [m.step for m in epochs] == list(range(settings.train.epochs))
    ended = registry.client(settings).get_run(train_run).info.end_time
    assert all(m.timestamp < ended for m in epochs), "each epoch was logged before the run ended"

    # The same DAG run again (a clear-and-rerun): same run_id, so same run key.
    again = run_dag("ct_retrain")
    assert again.run_id == first.run_id and again.state == "success"
    assert run_dag("ct_ingest", run_conf={"batch_ids": ["r1"]}).state == "success"
    client = registry.client(settings)
    assert [str(v.version) for v in client.search_model_versions(f"name='{settings.model_name}'")] == ["1"]
    assert lake.list_keys("curated") == curated_keys
    assert len(lake.list_keys("state/decisions")) == 1
    assert registry.champion(client, settings.model_name).version == "1"


def test_retrain_with_nothing_new_is_skipped_not_failed(run_dag, write_batch) -> None:
    write_batch("s1", 0, 500)
    run_dag("ct_ingest", run_conf={"batch_ids": ["s1"]})
    assert run_dag("ct_retrain").state == "success"
    later = run_dag("ct_retrain", when=datetime(2026, 2, 2, tzinfo=UTC))
    assert later.state == "success"
    assert states(later) == {
        "drift": "success",
        "decide": "skipped",
        "train": "skipped",
        "evaluate": "skipped",
        "gate": "skipped",
        "approval": "skipped",
        "apply_approval": "skipped",
        "promoted": "skipped",
        "champion_kept": "skipped",
    }


def test_forced_retrain_then_ops_promote_and_rollback(run_dag, write_batch, settings, lake) -> None:
    """Every move of @champion (the gate's, a rollback, a forced promotion) is a ct_champion asset event."""
    before = len(event_extras("ct_champion"))  # the session's database holds other tests' events too
    write_batch("f1", 0, 500)
    run_dag("ct_ingest", run_conf={"batch_ids": ["f1"]})
    first = run_dag("ct_retrain")
    assert states(first)["promoted"] == "success"
    assert event_extras("ct_champion")[before:] == [{"version": "1", "model_uri": f"models:/{settings.model_name}/1",
                                                    "previous_version": None, "action": "gate",
                                                    "run_key": event_extras("ct_champion")[before]["run_key"]}]  # fmt: skip
    forced = run_dag("ct_retrain", when=datetime(2026, 2, 3, tzinfo=UTC), run_conf={"force_retrain": True})
    assert states(forced)["decide"] == "success" and states(forced)["gate"] == "success"
    client = registry.client(settings)
    assert sorted(str(v.version) for v in client.search_model_versions(f"name='{settings.model_name}'")) == ["1", "2"]

    current = registry.champion(client, settings.model_name).version
    other = "1" if current == "2" else "2"
    action = "rollback" if other == "1" else "promote"
    ops = run_dag("ct_ops", when=datetime(2026, 2, 4, tzinfo=UTC),
                  run_conf={"action": action, "version": other, "reason": "checked by the on-call engineer"})  # fmt: skip
    assert ops.state == "success" and states(ops) == {"move_champion": "success", "champion_moved": "success"}
    assert registry.champion(client, settings.model_name).version == other
    moves = event_extras("ct_champion")[before:]
    assert moves[-1]["version"] == other and moves[-1]["action"] == action and moves[-1]["previous_version"] == current
    assert moves[-1]["model_uri"] == f"models:/{settings.model_name}/{other}"
    assert len(moves) == (3 if current == "2" else 2), (
        "one event per move: the gate's (and the forced run's), the override's"
    )
    record = [h for h in (lake.read_json(k) for k in lake.list_keys("state/decisions")) if h["kind"] == action]
    assert [(r["candidate_version"], r["reasons"]) for r in record] == [(other, ["checked by the on-call engineer"])]


def test_ops_refuses_a_missing_reason(run_dag) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        run_dag("ct_ops", run_conf={"action": "rollback", "version": "1", "reason": "short"})
