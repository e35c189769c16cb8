"""Backfills replay history as it was: the batches, the champion and the policy memory of the run's time.

Three dated batches are landed at once (their producer states each one's event time), live ct runs
on days 1 and 2, a rollback follows, and then backfill runs replay days 0 to 3. Each replay's window
must name what existed at its time, with where it came from, and nothing live may move.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from ml import layout
from ml.config import load_settings
from ml.release import registry

DAY = 86400


def at(day: int, hour: int) -> str:
    return datetime(2026, 11, day, hour, tzinfo=UTC).isoformat()


def epoch(day: int, hour: int) -> float:
    return datetime(2026, 11, day, hour, tzinfo=UTC).timestamp()


def champion_now() -> str | None:
    settings = load_settings()
    found = registry.champion(registry.client(settings), settings.model_name)
    return found.version if found else None


def run(run_step, key: str, when: str, *drift_flags: str, force: bool = False, settings: str = "") -> dict:  # type: ignore[no-untyped-def]
    """One ct_retrain run as the operator runs it: drift (pins the window), decide, then train/evaluate/gate."""
    extra = ["--settings", settings] if settings else []
    run_step("drift", "--run-key", key, "--as-of", when, *drift_flags, *extra)
    decided = run_step("decide", "--run-key", key, *(["--force"] if force else []), *extra)
    if "skip" in decided:
        return decided
    run_step("train", "--run-key", key, *extra)
    run_step("evaluate", "--run-key", key, *extra)
    return run_step("gate", "--run-key", key, *extra)


@pytest.fixture
def history(run_step, write_batch, monkeypatch, lake):  # type: ignore[no-untyped-def]
    """Three batches landed today, stating days 1-3; live runs on days 1 and 2; a rollback on the evening of day 2."""
    monkeypatch.setenv("CT_TRAIN__EPOCHS", "2")
    monkeypatch.setenv("CT_GATE__FLOOR_ACCURACY", "0")
    for day, start in ((1, 0), (2, 300), (3, 600)):
        write_batch(f"day{day}", start, 300, event_time=at(day, 1))
    assert set(run_step("ingest")["curated"]) == {"day1", "day2", "day3"}
    first = run(run_step, "live-1", at(1, 12))
    assert first["decision"] == "promote" and champion_now() == "1"
    window = lake.read_json(layout.report(layout.RETRAIN_DAG, "live-1", "window.json"))
    assert window["train_batches"] == ["day1"], "a live run on day 1 leaves out the data its producer dated later"
    second = run(run_step, "live-2", at(2, 12), force=True)
    assert second["champion_version"] == "1"
    if second["decision"] != "promote":  # whatever the gate said, make v2 the champion, then roll back to v1
        run_step("promote", "--version", "2", "--reason", "v2 looks better on the bench", "--as-of", at(2, 18))
    run_step("rollback", "--to", "1", "--reason", "v2 misreads sevens from camera B", "--as-of", at(2, 20))
    assert champion_now() == "1"


def live_state(lake) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    keys = [layout.state("policy.json"), layout.state("reign.json")]
    return {k: lake.read_bytes(k) for k in keys if lake.exists(k)}


def test_a_backfill_sees_each_day_as_it_was_and_moves_nothing(run_step, history, lake) -> None:  # type: ignore[no-untyped-def]
    live_before = live_state(lake)
    decisions_before = lake.list_keys(layout.state("decisions"))

    day0 = run(run_step, "backfill__day0.r1", at(1, 0), "--replay", "r1")
    assert day0["skip"].startswith(
        "skip: no data as of 2026-11-01T00:00:00Z: no batch was available yet (the first, day1"
    )

    day1 = run(run_step, "backfill__day1.r1", at(1, 3), "--replay", "r1")
    window = lake.read_json(layout.report(layout.RETRAIN_DAG, "backfill__day1.r1", "window.json"))
    assert window["train_batches"] == ["day1"] and window["new_batches"] == ["day1"]
    assert set(window["sources"]["batches"]["not_yet_available"]) == {"day2", "day3"}
    assert window["sources"]["batches"]["available"]["day1"]["source"] == "event_time"
    assert window["champion_version"] is None, "no champion existed at day 1, 03:00"
    assert window["sources"]["policy"]["state"]["considered_batches"] == []
    assert day1["decision"] == "would-promote" and day1["backfill"] is True
    assert "first model" in day1["reasons"][0] and champion_now() == "1"

    day2 = run(run_step, "backfill__day2.r1", at(2, 3), "--replay", "r1", force=True)
    window = lake.read_json(layout.report(layout.RETRAIN_DAG, "backfill__day2.r1", "window.json"))
    assert window["train_batches"] == ["day1", "day2"] and window["new_batches"] == ["day2"]
    assert (
        window["champion_version"] == "1"
        and "promote by the gate of run live-1" in window["sources"]["champion"]["source"]
    )
    assert window["sources"]["policy"]["state"]["considered_batches"] == ["day1"]
    assert "live-1" in window["sources"]["policy"]["source"]
    assert day2["champion_version"] == "1" and day2["decision"] in ("would-promote", "would-reject")
    assert day2["spending"]["k"] == 1 and day2["spending"]["consumed"] is False, "v1's first challenge, then"

    day3 = run(run_step, "backfill__day3.r1", at(3, 3), "--replay", "r1", force=True)
    window = lake.read_json(layout.report(layout.RETRAIN_DAG, "backfill__day3.r1", "window.json"))
    assert window["champion_version"] == "1" and "rollback" in window["sources"]["champion"]["source"]
    assert window["train_batches"] == ["day1", "day2", "day3"] and window["new_batches"] == ["day3"]
    assert day3["spending"]["k"] == 1, "the rollback started a new reign for v1"

    assert live_state(lake) == live_before, "policy memory and the error budget are byte-for-byte unchanged"
    assert champion_now() == "1"
    added = [k for k in lake.list_keys(layout.state("decisions")) if k not in decisions_before]
    assert added and all(lake.read_json(k)["backfill"] for k in added)
    replays = [k for k in lake.list_keys(layout.state("runs")) if "-replay-" in k]
    assert len(replays) == 4, "every replayed run is listed, skips too"


def test_a_rerun_with_new_settings_is_a_new_attempt_and_bad_settings_are_refused(run_step, history, lake) -> None:  # type: ignore[no-untyped-def]
    same = run(run_step, "backfill__day3.a", at(3, 3), "--replay", "a")
    again = run(run_step, "backfill__day3.a", at(3, 3), "--replay", "a")
    assert again.get("already_done") or again.get("skip") == same.get("skip"), "a plain retry reuses its record"

    margin = json.dumps({"policy": {"min_new_images": 10_000}})
    other = run(run_step, "backfill__day3.b", at(3, 3), "--replay", "b", settings=margin)
    assert "new images < 10,000" in other["skip"]
    replay = lake.read_json(layout.state("replays/b.json"))
    assert replay["settings"] == {"policy": {"min_new_images": 10_000}}

    def replay_drift(overrides: str, *flags: str) -> dict:
        return run_step("drift", "--run-key", "backfill__day3.c", "--as-of", at(3, 3), *flags, "--settings", overrides)

    unknown = replay_drift('{"gate": {"margn": 0.1}}', "--replay", "c")
    assert unknown["error_type"] == "ConfigError" and "gate.margn" in unknown["error"]
    bad = replay_drift('{"gate": {"margin": "lots"}}', "--replay", "c")
    assert bad["error_type"] == "ConfigError" and "gate.margin" in bad["error"]
    outside = replay_drift('{"lake_uri": "file:///elsewhere"}', "--replay", "c")
    assert "may change only policy, gate, drift, train" in outside["error"]
    live = replay_drift('{"gate": {"margin": 0.1}}')
    assert live["error_type"] == "UsageError" and "only to a backfill's replay" in live["error"]
    no_time = run_step("drift", "--run-key", "backfill__day3.c", "--replay", "c")
    assert "drift --replay needs --as-of" in no_time["error"]
    ahead = run_step(
        "rollback", "--to", "1", "--reason", "a rollback dated next century", "--as-of", "2099-01-01T00:00Z"
    )
    assert ahead["error_type"] == "UsageError" and "is in the future" in ahead["error"]
    assert not lake.exists(layout.report(layout.RETRAIN_DAG, "backfill__day3.c", "window.json"))


def test_a_malformed_event_time_quarantines_the_batch_with_the_fix(run_step, lake, write_batch) -> None:  # type: ignore[no-untyped-def]
    write_batch("late", 0, 60, commit=False)
    lake.write_bytes(layout.commit_marker("late"), b'{"event_time": "yesterday"}')
    result = run_step("ingest")
    assert result["quarantined"][0]["failed_rules"] == ["commit_marker"]
    report = lake.read_json(layout.quarantine_report("late"))
    assert "not an ISO 8601 time" in report["failures"][0]["observed"]
    assert '{"event_time": "2026-01-03T00:00:00Z"}' in report["failures"][0]["fix"]
    assert not lake.exists(layout.join(layout.CURATED, "late")), "a quarantined batch leaves nothing in curated/"


def test_a_live_run_sees_what_was_curated_a_backfill_only_what_was_available(lake) -> None:  # type: ignore[no-untyped-def]
    from ml.data.availability import available_batches, record_batch

    record_batch(lake, "stated", epoch(3, 1))  # its producer says it belongs to day 3
    record_batch(lake, "unstated", None)  # curated now, no event time
    record_batch(lake, "ahead", epoch(30, 1) + 40 * DAY)  # a producer clock far ahead: counts as curated now
    batches = ["ahead", "stated", "unstated"]
    backfill = available_batches(lake, batches, epoch(2, 3), "event")
    assert backfill.available == [] and backfill.later == batches
    live = available_batches(lake, batches, epoch(2, 3), "event", live=True)
    assert live.available == ["unstated"], "a live run never hides data for its ingest time alone"
    assert live.later == ["ahead", "stated"], "but data dated after the run's time is not the run's"
    now = available_batches(lake, batches, time.time(), "event", live=True)
    assert now.available == batches, "a date ahead of ct's own clock counts as the moment ct curated it"
    assert available_batches(lake, batches, epoch(4, 3), "ingested").later == batches, "stated times ignored"
    assert available_batches(lake, ["legacy"], epoch(1, 0), "event").available == ["legacy"], "no record: always"
    times = available_batches(lake, batches, epoch(4, 3), "event").to_dict()
    assert times["available"]["stated"]["source"] == "event_time"
    assert times["not_yet_available"]["unstated"]["source"] == "ingested"


def test_the_past_champion_follows_the_order_decisions_were_made() -> None:
    from ml.release.history import challenges_at, champion_at

    def record(kind: str, decision: str, version: str, champion: str | None, as_of: float, decided: float) -> dict:
        return {"kind": kind, "decision": decision, "candidate_version": version, "champion_version": champion,
                "run_key": f"{kind}-{version}-{decided}", "as_of": as_of, "decided_at": decided,
                "spending": {"k": 1} if kind == "gate" and champion else None}  # fmt: skip

    hour = 3600.0
    records = [
        record("gate", "promote", "1", None, 1 * hour, 1 * hour),
        record("rollback", "rollback", "2", "1", 5 * hour, 5 * hour),  # v2 is put back at 05:00 ...
        record("gate", "promote", "5", "2", 3 * hour, 6 * hour),  # ... while the 03:00 run trained; it gated at 06:00
        record("gate", "reject", "6", "5", 7 * hour, 7 * hour),
        record("gate", "would-promote", "7", "5", 8 * hour, 8 * hour) | {"backfill": True},
    ]
    assert champion_at(records, 1 * hour)["version"] is None, "nothing before the first move"
    assert champion_at(records, 4 * hour)["version"] == "1"
    late = champion_at(records, 5.5 * hour)
    assert late["version"] == "5" and late["since"] == 5 * hour, "the late gate counts from the rollback it followed"
    assert challenges_at(records, late, 8 * hour) == 1, "v5's reign: the 07:00 reject; a backfill is no challenge"
    assert champion_at(records, 9 * hour)["version"] == "5", "a backfill's would-promote moves nothing"
