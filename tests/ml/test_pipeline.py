"""The ml steps end to end against a real MLflow store (SQLite) and a real lake, without Airflow."""

from __future__ import annotations

import json

from ml import layout
from ml.config import load_settings
from ml.release import registry


def retrain(run_step, run_key: str, *, force: bool = False) -> dict:  # type: ignore[no-untyped-def]
    run_step("drift", "--run-key", run_key)
    decided = run_step("decide", "--run-key", run_key, *(["--force"] if force else []))
    if "skip" in decided:
        return decided
    run_step("train", "--run-key", run_key)
    run_step("evaluate", "--run-key", run_key)
    return run_step("gate", "--run-key", run_key)


def champion_version(settings) -> str | None:  # type: ignore[no-untyped-def]
    found = registry.champion(registry.client(settings), settings.model_name)
    return found.version if found else None


def test_bootstrap_promotes_then_worse_candidate_is_rejected(run_step, settings, write_batch, monkeypatch) -> None:
    write_batch("b1", 0, 500)
    assert run_step("ingest")["curated"] == ["b1"]
    first = retrain(run_step, "r1")
    assert first["decision"] == "promote" and first["champion_version"] is None, first
    assert champion_version(settings) == first["candidate_version"] == "1"

    # A crippled trainer: one epoch at a tiny learning rate makes a clearly worse candidate.
    write_batch("b2", 500, 300)
    run_step("ingest")
    monkeypatch.setenv("CT_TRAIN__EPOCHS", "1")
    monkeypatch.setenv("CT_TRAIN__LR", "1e-6")
    second = retrain(run_step, "r2", force=True)
    assert second["decision"] == "reject"
    assert second["candidate_accuracy"] < second["champion_accuracy"]
    assert "vs champion" in second["reasons"][0]
    assert champion_version(load_settings()) == "1", "a worse candidate must leave @champion where it was"
    gate = load_settings()
    record = json.loads((gate.home / "lake" / layout.report(layout.RETRAIN_DAG, "r2", "gate.json")).read_text())
    assert record["champion_version"] == "1" and record["candidate_version"] == "2"
    assert len(record["metrics"]["candidate"]["per_class"]) == 10


def test_rerunning_train_and_gate_creates_nothing_twice(run_step, settings, write_batch) -> None:
    write_batch("b1", 0, 400)
    run_step("ingest")
    first = retrain(run_step, "r1")
    again_train = run_step("train", "--run-key", "r1")
    again_gate = run_step("gate", "--run-key", "r1")
    versions = registry.client(settings).search_model_versions(f"name='{settings.model_name}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert again_train["already_done"] and again_train["model_version"] == "1"
    assert again_gate["already_done"] and again_gate["decision"] == first["decision"]
    assert len(list((settings.home / "lake" / "state" / "decisions").iterdir())) == 1


def test_no_new_data_skips_with_a_reason(run_step, write_batch) -> None:
    write_batch("b1", 0, 500)
    run_step("ingest")
    assert retrain(run_step, "r1")["decision"] == "promote"
    skipped = retrain(run_step, "r2")
    assert skipped["skip"] == "skip: no new data since the last decision"


def test_ingest_with_nothing_pending_is_a_skip(run_step) -> None:
    assert run_step("ingest") == {"skip": "no committed landing batch is waiting to be ingested"}


def drift_on_a_second_batch(run_step, write_batch, count: int, transform=None) -> dict:  # type: ignore[no-untyped-def]
    """A champion from 500 digits (run r1), then ``count`` new ones, ``transform``-ed, judged by run r2's drift step."""
    write_batch("b1", 0, 500)
    run_step("ingest")
    retrain(run_step, "r1")
    write_batch("b2", 500, count, transform=transform)
    run_step("ingest")
    return run_step("drift", "--run-key", "r2")


def test_drift_is_detected_on_a_brighter_noisier_batch(run_step, write_batch) -> None:
    from ml.demo import drift

    verdict = drift_on_a_second_batch(run_step, write_batch, 300, drift)
    assert verdict["drift_detected"] and {"mean", "bright"} <= set(verdict["drifted_features"])
    assert verdict["html_uri"].endswith("drift.html")
    # The champion is hurt: its accuracy on the new rows fell, and its outputs moved.
    assert verdict["harm"].startswith("expected to hurt: champion accuracy on the 300 new rows"), verdict["harm"]
    decision = run_step("decide", "--run-key", "r2")
    assert decision["retrain"] and decision["reasons"][0].startswith("drift on"), decision["reasons"]
    assert ", and it hurts: champion accuracy on the 300 new rows" in decision["reasons"][0]
    assert decision["signals"]["harm"] is True


def test_a_new_camera_size_is_a_finding_and_does_not_retrain_a_champion_it_does_not_hurt(run_step, write_batch) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    from PIL import Image

    def new_camera(images: np.ndarray) -> np.ndarray:  # the same scenes with twice the pixels each way
        return np.stack([np.asarray(Image.fromarray(i).resize((16, 16), Image.Resampling.NEAREST)) for i in images])

    verdict = drift_on_a_second_batch(run_step, write_batch, 150, new_camera)
    assert verdict["findings"] == ["new image size 16\u00d716 from batch b2 (150 of 150 images)"], verdict
    assert not {"width", "height"} & set(verdict["drifted_features"])
    assert verdict["harm"].startswith("no evidence of harm: accuracy on the new rows"), verdict["harm"]
    decision = run_step("decide", "--run-key", "r2")
    # The champion sees the difference (its embeddings and outputs moved), but it is not hurt: no retrain.
    assert verdict["drift_detected"] and not decision["retrain"], decision["reasons"]
    assert decision["reasons"][0].startswith("drift on embeddings, outputs for 1 window, but no evidence of harm")


def test_clean_batch_raises_no_drift(run_step, write_batch) -> None:
    verdict = drift_on_a_second_batch(run_step, write_batch, 400)
    assert not verdict["drift_detected"], verdict


def test_scheduled_run_before_any_data_skips(run_step) -> None:
    run_step("drift", "--run-key", "early")
    assert run_step("decide", "--run-key", "early")["skip"] == "skip: no curated data yet"
