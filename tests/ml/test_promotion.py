"""The decision history, rollback, forced promotion, golden sets and backfill runs, on real MLflow.

Racing gates, kills and outages are in ``tests/faults/``.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime

import pytest

from ml import layout
from ml.config import load_settings
from ml.release import registry


def candidate(run_step, run_key: str, *drift_flags: str) -> dict:  # type: ignore[no-untyped-def]
    """Plan, force, train and evaluate a candidate for ``run_key`` (everything but the gate).

    ``drift_flags`` go to the step that plans the window: ``--replay <id>`` makes the run a backfill's
    (replaying this very moment, unless ``--as-of`` says another).
    """
    if "--replay" in drift_flags and "--as-of" not in drift_flags:
        drift_flags = (*drift_flags, "--as-of", datetime.now(UTC).isoformat())
    run_step("drift", "--run-key", run_key, *drift_flags)
    run_step("decide", "--run-key", run_key, "--force")
    run_step("train", "--run-key", run_key)
    return run_step("evaluate", "--run-key", run_key)


@pytest.fixture
def weak_champion(run_step, write_batch, monkeypatch) -> str:  # type: ignore[no-untyped-def]
    return make_weak_champion(run_step, write_batch, monkeypatch)


def make_weak_champion(run_step, write_batch, monkeypatch) -> str:  # type: ignore[no-untyped-def]
    """v1 is a deliberately poor champion (one epoch at a tiny learning rate, promoted under a zero floor)."""
    write_batch("b1", 0, 500)
    run_step("ingest")
    with monkeypatch.context() as patch:
        patch.setenv("CT_TRAIN__EPOCHS", "1")
        patch.setenv("CT_TRAIN__LR", "1e-6")
        patch.setenv("CT_GATE__FLOOR_ACCURACY", "0")
        candidate(run_step, "r1")
        assert run_step("gate", "--run-key", "r1")["decision"] == "promote"
    return "1"


def champion_now() -> str | None:
    settings = load_settings()
    found = registry.champion(registry.client(settings), settings.model_name)
    return found.version if found else None


def history() -> list[dict]:
    from ml.release.history import history as read_history
    from ml.storage import Lake

    return read_history(Lake.from_uri(load_settings().lake_uri))


def test_rollback_and_forced_promotion_are_recorded_with_reasons(run_step, weak_champion, write_batch) -> None:
    write_batch("b2", 500, 400)
    run_step("ingest")
    candidate(run_step, "r2")
    assert run_step("gate", "--run-key", "r2")["decision"] == "promote"
    assert champion_now() == "2"

    too_short = run_step("rollback", "--to", "1", "--reason", "oops")
    assert "needs a reason of at least 10 characters" in too_short["error"] and champion_now() == "2"
    rolled = run_step(
        "rollback", "--to", "1", "--reason", "v2 misclassifies sevens in production", "--run-key", "ops-1"
    )
    assert rolled["champion_version"] == "2" and champion_now() == "1"
    again = run_step("rollback", "--to", "1", "--reason", "v2 misclassifies sevens in production", "--run-key", "ops-1")
    assert again["already_done"], "a rerun of the same ops run changes nothing"
    forward = run_step("rollback", "--to", "2", "--reason", "going forward is not a rollback")
    assert "newer than the champion" in forward["error"]
    forced = run_step("promote", "--version", "2", "--reason", "fix for sevens verified by hand", "--run-key", "ops-2")
    assert forced["decision"] == "promote" and champion_now() == "2"

    overrides = [
        (h["kind"], h["candidate_version"], h["champion_version"], h["reasons"])
        for h in history()
        if h["kind"] != "gate"
    ]
    assert overrides == [
        ("rollback", "1", "2", ["v2 misclassifies sevens in production"]),
        ("promote", "2", "1", ["fix for sevens verified by hand"]),
    ]
    settings = load_settings()
    tags = registry.get_version(registry.client(settings), settings.model_name, "1").tags
    assert tags["ct.rollback.reason"] == "v2 misclassifies sevens in production"


def test_backfill_runs_record_what_they_would_have_decided(run_step, weak_champion, write_batch) -> None:
    write_batch("b2", 500, 400)
    run_step("ingest")
    candidate(run_step, "backfill-r2", "--replay", "r")
    result = run_step("gate", "--run-key", "backfill-r2")
    assert result["decision"] == "would-promote" and result["backfill"] is True, result
    assert result["champion_version"] == "1" and "judged against v1, the champion then" in result["reasons"][-1]
    assert champion_now() == "1", "a backfill never moves @champion"
    again = run_step("gate", "--run-key", "backfill-r2")
    assert again["already_done"] and again["decision"] == "would-promote"


def test_unloadable_champion_stops_the_evaluation(run_step, weak_champion, write_batch, ct_home) -> None:
    shutil.rmtree(ct_home / "mlartifacts")  # the champion's files are gone
    write_batch("b2", 500, 400)
    run_step("ingest")
    run_step("drift", "--run-key", "r2")
    run_step("decide", "--run-key", "r2", "--force")
    assert run_step("train", "--run-key", "r2")["model_version"] == "2"
    evaluated = run_step("evaluate", "--run-key", "r2")
    assert evaluated["error_type"] == "ChampionUnavailable"
    assert "model version 1 of ct-classifier cannot be loaded" in evaluated["error"]
    assert champion_now() == "1", "never a silent promotion"
    assert not (ct_home / "lake" / layout.report(layout.RETRAIN_DAG, "r2", "gate.json")).exists()


def test_golden_set_joins_every_evaluation(run_step, weak_champion, write_batch, monkeypatch) -> None:
    write_batch("frozen", 900, 200)
    frozen = run_step("freeze-golden", "--batch-id", "frozen", "--name", "v1")
    assert frozen["status"] == "curated" and frozen["golden_set"] == "v1"
    assert run_step("ingest") == {"skip": "no committed landing batch is waiting to be ingested"}, (
        "golden is not training data"
    )
    write_batch("b2", 500, 300)
    run_step("ingest")
    monkeypatch.setenv("CT_GATE__GOLDEN_SET", "v1")
    evaluated = candidate(run_step, "r2")
    settings = load_settings()
    record = json.loads((settings.home / "lake" / layout.report(layout.RETRAIN_DAG, "r2", "eval.json")).read_text())
    assert record["golden_set"] == "v1"
    golden_rows = [b for b in record["rows"]["batch_id"] if b == "frozen"]
    assert len(golden_rows) == 200, "every golden row, whatever its split"
    assert evaluated["rows"] == len(record["y_true"]) > 200


def reign_now() -> dict:
    from ml.decide.reign import reign_key
    from ml.storage import Lake

    return Lake.from_uri(load_settings().lake_uri).read_json(reign_key())


def test_live_challenges_spend_the_reign_budget_and_a_move_starts_a_new_one(
    run_step, weak_champion, write_batch, monkeypatch
) -> None:
    from ml.decide import stats
    from ml.decide.reign import claim
    from ml.release.lease import promotion_lease
    from ml.storage import Lake

    alpha = load_settings().gate.alpha
    first = reign_now()
    assert first["champion_version"] == "1" and first["challenges"] == []
    assert first["started_by"] == layout.report(layout.RETRAIN_DAG, "r1", "gate.json")

    write_batch("b2", 500, 400)
    run_step("ingest")
    with monkeypatch.context() as patch:  # two candidates no better than the weak champion
        patch.setenv("CT_TRAIN__EPOCHS", "1")
        patch.setenv("CT_TRAIN__LR", "1e-6")
        candidate(run_step, "r2")
        candidate(run_step, "backfill-r3", "--replay", "r3")
    # r2's gate claims its challenge and is killed before it decides: its rerun decides at that level.
    lake = Lake.from_uri(load_settings().lake_uri)
    with promotion_lease(lake, "test (a gate killed after its claim)", lambda intent, lease: None) as lease:
        claimed = claim(lake, lease, "1", "r2", alpha)
    rejected = run_step("gate", "--run-key", "r2")
    assert rejected["decision"] == "reject" and rejected["spending"] == claimed
    assert claimed["k"] == 1 and claimed["alpha"] == pytest.approx(stats.alpha_for(alpha, 1)) and claimed["consumed"]
    assert claimed["left"] == pytest.approx(alpha - stats.alpha_for(alpha, 1))
    assert "challenge 1 of v1's reign: tested at alpha 0.00304" in " ".join(rejected["reasons"])
    assert run_step("gate", "--run-key", "r2")["spending"]["k"] == 1, "a rerun spends nothing more"

    backfill = run_step("gate", "--run-key", "backfill-r3")
    assert backfill["spending"]["k"] == 2 and backfill["spending"]["consumed"] is False
    assert [c["run_key"] for c in reign_now()["challenges"]] == ["r2"], "backfills spend nothing"

    candidate(run_step, "r4")  # a normally trained model: far better than the weak champion
    promoted = run_step("gate", "--run-key", "r4")
    assert promoted["decision"] == "promote" and promoted["spending"]["k"] == 2
    assert promoted["power"]["sentence"].startswith(f"with {promoted['eval_rows']} paired rows")
    reign = reign_now()
    assert reign["champion_version"] == promoted["candidate_version"] and reign["challenges"] == []
    assert reign["started_by"] == layout.report(layout.RETRAIN_DAG, "r4", "gate.json")

    run_step("rollback", "--to", "1", "--reason", "the new model confuses ones and sevens", "--run-key", "ops-9")
    reign = reign_now()
    assert reign["champion_version"] == "1" and reign["challenges"] == [], "a rollback starts a new reign"
    assert reign["started_by"] == layout.report(layout.OPS_DAG, "ops-9", "decision.json")
    report = (load_settings().home / "lake" / layout.report(layout.RETRAIN_DAG, "r2", "gate.md")).read_text()
    assert "**What this evaluation could see:** with" in report and "**Error budget:** challenge 1 of v1" in report
    assert "**What the class guard could see:** " in report
