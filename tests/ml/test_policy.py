"""The retrain policy's rules, each producing the expected decision and reason."""

from __future__ import annotations

import pytest

from ml.config import PolicyConfig
from ml.data.window import Window
from ml.decide.policy import PolicyState, decide

HOUR = 3600.0
NOW = 1_800_000_000.0


def window(new_images: int = 50, champion: str | None = "1", new: tuple[str, ...] = ("b9",)) -> Window:
    return Window(run_key="k", champion_version=champion, reference_batches=["b1"], new_batches=list(new),
                  train_batches=["b1", *new], eval_batches=["b1", *new], new_images=new_images)  # fmt: skip


EVIDENCE = "its confidence fell (KS 0.41, p=0.00012)"
DRIFT = {"drift_detected": True, "drifted_features": ["mean"], "harm": {"expected": True, "evidence": [EVIDENCE]}}
HURTS = f", and it hurts: {EVIDENCE}"
CALM = {"drift_detected": False, "drifted_features": []}
HARMLESS = {**DRIFT, "harm": {"expected": False, "evidence": [], "summary": "no evidence of harm: accuracy on the new "
                              "rows 0.930 vs 0.925 held-out, label-free estimate 0.928, confidence steady"}}  # fmt: skip


def test_debounce_needs_consecutive_drifting_windows() -> None:
    cfg = PolicyConfig(drift_windows=2)
    first, state = decide(window(), DRIFT, cfg, PolicyState(), NOW)
    assert not first.retrain and first.reasons == ["drift on mean for 1 window (< 2 needed)", "50 new images < 200"]
    assert state.drift_streak == 1
    second, state = decide(window(new=("b10",)), DRIFT, cfg, state, NOW + HOUR)
    assert second.retrain and second.reasons == [f"drift on mean for 2 windows{HURTS}"]
    assert state.drift_streak == 0 and state.last_retrain_at == NOW + HOUR


def test_a_calm_window_resets_the_streak() -> None:
    cfg = PolicyConfig(drift_windows=2)
    _, state = decide(window(), DRIFT, cfg, PolicyState(), NOW)
    calm, state = decide(window(new=("b10",)), CALM, cfg, state, NOW)
    assert not calm.retrain and state.drift_streak == 0
    again, _ = decide(window(new=("b11",)), DRIFT, cfg, state, NOW)
    assert not again.retrain and again.reasons[0] == "drift on mean for 1 window (< 2 needed)"


def test_cooldown_holds_drift_after_a_retrain() -> None:
    cfg = PolicyConfig(cooldown_hours=24)
    state = PolicyState(last_retrain_at=NOW - 2 * HOUR)
    held, _ = decide(window(), DRIFT, cfg, state, NOW)
    assert not held.retrain and held.reasons[0] == "drift on mean for 1 window, but cooling down after a retrain"
    later, _ = decide(window(), DRIFT, cfg, state, NOW + 23 * HOUR)
    assert later.retrain and later.reasons == [f"drift on mean for 1 window{HURTS}"]


def test_a_backfill_run_older_than_the_last_retrain_is_not_cooling() -> None:
    cfg = PolicyConfig(cooldown_hours=24)
    decision, _ = decide(window(), DRIFT, cfg, PolicyState(last_retrain_at=NOW), NOW - 30 * 24 * HOUR)
    assert decision.retrain and decision.reasons == [f"drift on mean for 1 window{HURTS}"]


def test_enough_new_data_retrains() -> None:
    decision, _ = decide(window(new_images=1340), CALM, PolicyConfig(), PolicyState(), NOW)
    assert decision.retrain and decision.reasons == ["1,340 new images"]
    assert decision.summary == "retrain: 1,340 new images"


def test_drift_and_volume_read_together() -> None:
    decision, _ = decide(window(new_images=1340), DRIFT, PolicyConfig(), PolicyState(), NOW)
    assert decision.summary == f"retrain: drift on mean for 1 window{HURTS}; 1,340 new images"


def test_drift_without_harm_does_not_retrain() -> None:
    decision, state = decide(window(), HARMLESS, PolicyConfig(), PolicyState(), NOW)
    assert not decision.retrain and decision.signals["harm"] is False
    assert decision.reasons[0] == f"drift on mean for 1 window, but {HARMLESS['harm']['summary']}"
    assert state.drift_streak == 1 and state.last_retrain_at is None
    # The same window retrains when drift alone is asked to, and when harm was never assessed.
    alone, _ = decide(window(), HARMLESS, PolicyConfig(drift_needs_harm=False), PolicyState(), NOW)
    assert alone.retrain and alone.reasons == ["drift on mean for 1 window"]
    unknown, _ = decide(window(), {**DRIFT, "harm": None}, PolicyConfig(), PolicyState(), NOW)
    assert unknown.retrain and unknown.reasons == ["drift on mean for 1 window (harm not assessed)"]


def test_max_model_age_retrains_even_without_new_data() -> None:
    cfg = PolicyConfig(max_model_age_days=30)
    old, _ = decide(window(new_images=0, new=()), {}, cfg, PolicyState(), NOW, champion_age_days=31.5)
    assert old.retrain and old.reasons == ["champion is 31.5 days old > 30"]
    young, _ = decide(window(new_images=0, new=()), {}, cfg, PolicyState(), NOW, champion_age_days=3)
    assert not young.retrain and young.reasons == ["no new data since the last decision"]


@pytest.mark.parametrize(("accuracy", "retrain"), [(0.80, True), (0.93, False)], ids=["dropped", "within-tolerance"])
def test_quality_drop_of_the_champion_on_new_labels(accuracy: float, retrain: bool) -> None:
    drift = {**CALM, "quality": {"accuracy_on_new": accuracy, "recorded_accuracy": 0.95}}
    decision, _ = decide(window(), drift, PolicyConfig(quality_tolerance=0.05), PolicyState(), NOW)
    assert decision.retrain is retrain
    if retrain:
        assert decision.reasons == ["champion accuracy on new data 0.800 < recorded 0.950 - 0.05"]


def test_no_data_at_all_skips_and_first_data_bootstraps() -> None:
    empty = Window(
        run_key="k", champion_version=None, reference_batches=[], new_batches=[], train_batches=[], eval_batches=[]
    )
    assert decide(empty, {}, PolicyConfig(), PolicyState(), NOW)[0].reasons == ["no curated data yet"]
    first, _ = decide(window(champion=None), {}, PolicyConfig(), PolicyState(), NOW)
    assert first.retrain and first.reasons[0] == "no champion yet"


def test_considered_batches_accumulate() -> None:
    _, state = decide(window(new=("b9",)), CALM, PolicyConfig(), PolicyState(considered_batches=("b1",)), NOW)
    assert state.considered_batches == ("b1", "b9")


# -- the policy memory in the lake ------------------------------------------------------------
def _record(lake, run_key: str, as_of: float, backfill: bool = False) -> dict:  # type: ignore[no-untyped-def]
    from ml.decide.policy import load_state, record_decision

    state = load_state(lake)
    win = Window.from_dict({**window(new_images=500).to_dict(), "run_key": run_key, "backfill": backfill})
    decision, new_state = decide(win, CALM, PolicyConfig(), state, as_of)
    return record_decision(lake, win, decision, state, new_state, as_of, backfill=backfill)


def test_a_backfill_records_its_decision_but_never_writes_the_live_memory(lake) -> None:
    from ml.decide.policy import load_state

    _record(lake, "live", NOW)
    before = load_state(lake)
    backfilled = _record(lake, "backfill__old", NOW - 30 * 24 * HOUR, backfill=True)
    assert backfilled["retrain"] and backfilled["backfill"] and backfilled["state_after"] is None
    assert load_state(lake) == before, "cooldown and model age still count from the live run"
    assert before.last_retrain_at == NOW and before.updated_by == "live"


def test_a_rerun_applies_the_memory_a_killed_decide_committed(lake) -> None:
    from ml import layout
    from ml.decide.policy import apply_state, load_state, recorded_decision

    _record(lake, "first", NOW)
    committed = _record(lake, "second", NOW + HOUR)
    # The kill: decision.json was written, policy.json still holds what "first" left.
    lake.write_json(layout.state("policy.json"), {**committed["state_after"], "revision": 1, "updated_by": "first"})
    assert apply_state(lake, recorded_decision(lake, "second")) is True
    assert load_state(lake).updated_by == "second" and load_state(lake).revision == 2
    assert apply_state(lake, recorded_decision(lake, "second")) is False, "applied once, never twice"


def test_memory_a_later_run_wrote_is_never_overwritten(lake) -> None:
    from ml.decide.policy import apply_state, load_state

    stale = _record(lake, "a", NOW)
    _record(lake, "b", NOW + HOUR)
    assert apply_state(lake, stale) is False
    assert load_state(lake).updated_by == "b" and load_state(lake).last_retrain_at == NOW + HOUR


def test_last_retrain_never_moves_back(lake) -> None:
    from ml.decide.policy import load_state

    _record(lake, "now", NOW)
    _record(lake, "late-arrival", NOW - 5 * HOUR)
    assert load_state(lake).last_retrain_at == NOW
