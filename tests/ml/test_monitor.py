"""Live monitoring's parts: the label-free estimate and its calibration check, Wilson intervals, feedback
batches and their rules, and the policy reading ct_monitor's alarms."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from ml import layout
from ml.config import PolicyConfig
from ml.data.window import Window
from ml.decide import estimate, policy


def calibrated_rows(rows: int, seed: int, low: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Confidences, and answers that are right exactly that often (a calibrated model)."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(low, 1.0, rows)
    return confidence, rng.random(rows) < confidence


def test_the_estimate_follows_the_accuracy_of_a_calibrated_model_when_confidence_moves() -> None:
    reference_conf, reference_correct = calibrated_rows(4000, seed=1)
    calibration = estimate.fit(reference_conf, reference_correct, bins=10, max_error=0.05)
    assert calibration["reliable"] is True and calibration["ece_held_out"] < 0.05
    assert json.loads(json.dumps(calibration)) == calibration, "plain JSON values: the report stores them as they are"
    assert calibration["accuracy"] == pytest.approx(reference_correct.mean())
    # live traffic the model finds harder: lower confidences, and (calibrated) lower accuracy
    live_conf, live_correct = calibrated_rows(2000, seed=2, low=0.1)
    live = estimate.estimate(live_conf, calibration)
    assert live["accuracy"] == pytest.approx(live_correct.mean(), abs=0.03)  # confidences the reference never had too
    assert live["accuracy"] < calibration["accuracy"] - 0.05, "the drop shows without a single label"


def test_an_overconfident_model_fails_the_calibration_check() -> None:
    """Held-out rows where confidence says nothing about being right: the check refuses the estimate."""
    rng = np.random.default_rng(3)
    confidence = rng.uniform(0.0, 1.0, 400)
    wrong_half = np.arange(400) % 2 == 1  # the odd rows (the held-out half) are right exactly when unsure
    correct = np.where(wrong_half, confidence < 0.5, confidence >= 0.5)
    calibration = estimate.fit(confidence, correct, bins=10, max_error=0.05)
    assert not calibration["reliable"] and calibration["ece_held_out"] > 0.3
    assert not estimate.fit(confidence[:15], correct[:15], bins=10, max_error=0.05)["reliable"], "too few rows"


@pytest.mark.parametrize(("correct", "rows", "low", "high"), [(8, 10, 0.4902, 0.9433), (0, 20, 0.0, 0.1611),
                         (95, 100, 0.8882, 0.9785)], ids=["8-of-10", "none-right", "95-of-100"])  # fmt: skip
def test_wilson_intervals(correct: int, rows: int, low: float, high: float) -> None:
    assert estimate.wilson(correct, rows) == pytest.approx((low, high), abs=1e-4)


def feedback_batch(lake, batch_id: str, text: str) -> None:  # type: ignore[no-untyped-def]
    lake.write_bytes(layout.join(layout.landing(batch_id), "feedback.csv"), text.encode())
    lake.write_bytes(layout.commit_marker(batch_id), b"")


def test_feedback_batches_are_taken_or_quarantined_by_their_rules(run_step, lake) -> None:
    feedback_batch(lake, "fb-good", "request_id,label\nr1,3\nr2,7\nr2,7\n")
    feedback_batch(lake, "fb-label", "request_id,label\nr3,cat\n")
    feedback_batch(lake, "fb-columns", "id,truth\nr4,3\n")
    feedback_batch(lake, "fb-twice", "request_id,label\nr5,3\nr5,4\n")
    result = run_step("ingest")
    assert result["feedback"] == ["fb-good"] and result["curated"] == []
    rules = {q["batch_id"]: q["failed_rules"] for q in result["quarantined"]}
    assert rules == {"fb-label": ["feedback_labels"], "fb-columns": ["feedback_columns"],
                     "fb-twice": ["feedback_unique"]}  # fmt: skip
    taken = pd.read_parquet(io.BytesIO(lake.read_bytes(layout.feedback("fb-good"))))
    assert taken[["request_id", "label"]].values.tolist() == [["r1", "3"], ["r2", "7"]]
    report = lake.read_json(layout.quarantine_report("fb-label"))
    assert "cat" in report["failures"][0]["observed"] and report["failures"][0]["fix"]
    assert run_step("ingest")["skip"], "nothing pending: accepted feedback is not ingested again"


def test_a_csv_of_late_labels_lands_as_a_feedback_batch(run_step, lake, tmp_path) -> None:
    good, bad = tmp_path / "labels.csv", tmp_path / "typo.csv"
    good.write_text("request_id,label\nabc,3\n")
    bad.write_text("request_id,label\nabc,three\n")
    rehearsed = run_step("land", str(bad), "--batch-id", "fb-typo", "--dry-run")
    assert rehearsed["would_be"] == "quarantined" and rehearsed["rules"][0]["rule"] == "feedback_labels"
    assert "three" in rehearsed["rules"][0]["observed"] and not lake.exists(layout.commit_marker("fb-typo"))
    landed = run_step("land", str(good), "--batch-id", "fb-1")
    assert landed["kind"] == "feedback" and lake.exists(layout.join(layout.landing("fb-1"), "feedback.csv"))
    assert run_step("ingest")["feedback"] == ["fb-1"]


def window(champion: str | None = "1", new: list[str] | None = None) -> Window:
    return Window.from_dict({"run_key": "r", "as_of": 1000.0, "champion_version": champion, "reference_batches": ["a"],
                             "new_batches": new or [], "train_batches": ["a", *(new or [])], "eval_batches": ["a"]})  # fmt: skip


def test_the_policy_retrains_on_ct_monitors_alarms_about_todays_champion_only() -> None:
    live = {"run_key": "m1", "as_of": 900.0, "champion_version": "1",
            "alarms": [{"trigger": "realized_drop", "reason": "realized live accuracy of v1 0.70 ..."}]}  # fmt: skip
    cfg, state = PolicyConfig(), policy.PolicyState()
    decision, after = policy.decide(window(), {}, cfg, state, 1000.0, live=live)
    assert decision.retrain and decision.reasons == ["live: realized live accuracy of v1 0.70 ..."]
    assert decision.signals["live"]["alarms"] == ["realized_drop"] and after.last_retrain_at == 1000.0
    # about another champion, judged before the last retrain, or after the run's time: not this run's business
    for stale, memory in [({**live, "champion_version": "2"}, state), (live, policy.PolicyState(last_retrain_at=950.0)),
                          ({**live, "as_of": 1100.0}, state)]:  # fmt: skip
        decision, _ = policy.decide(window(), {}, cfg, memory, 1000.0, live=stale)
        assert not decision.retrain and decision.reasons == ["no new data since the last decision"]
    cooling = policy.PolicyState(last_retrain_at=800.0)
    decision, _ = policy.decide(window(), {}, PolicyConfig(cooldown_hours=1), cooling, 1000.0, live=live)
    assert not decision.retrain
