"""Does a shift hurt? The champion's outputs, its measured accuracy and its label-free estimate, as evidence."""

from __future__ import annotations

import numpy as np
import pytest

from ml.config import load_settings
from ml.decide.harm import assess, confidence_fell, ks_critical, output_drift

LABELS = [str(d) for d in range(10)]


def confident(rows: int, rng: np.random.Generator, confidence: tuple[float, float] = (0.9, 0.999)) -> np.ndarray:
    """Class probabilities of a model that is sure of its answers (top class drawn uniformly)."""
    top = rng.uniform(*confidence, rows)
    probabilities = np.tile(((1 - top) / 9)[:, None], (1, 10))
    probabilities[np.arange(rows), rng.integers(0, 10, rows)] = top
    return probabilities


@pytest.fixture
def settings(tmp_path):  # type: ignore[no-untyped-def]
    return load_settings({"CT_HOME": str(tmp_path)})


def right(rows: int, accuracy: float, rng: np.random.Generator) -> np.ndarray:
    correct = np.zeros(rows, bool)
    correct[rng.choice(rows, round(rows * accuracy), replace=False)] = True
    return correct


def test_outputs_fire_when_the_model_grows_unsure_and_not_on_a_fresh_sample() -> None:
    rng = np.random.default_rng(0)
    reference = confident(600, rng)
    same = output_drift(confident(300, rng), reference, LABELS, alpha=0.005, floor=0.1)
    assert not same["drifted"] and same["score"] < same["threshold"], same
    unsure = output_drift(confident(300, rng, (0.4, 0.8)), reference, LABELS, alpha=0.005, floor=0.1)
    assert unsure["drifted"] and unsure["output"] == "confidence" and "confidence" in unsure["outputs_fired"]
    assert unsure["score"] > 0.9 and unsure["ratio"] > 1
    # Improbable but smaller than the floor: not drift.
    slightly = output_drift(confident(300, rng, (0.87, 0.99)), reference, LABELS, alpha=0.005, floor=0.5)
    assert slightly["improbable"] and slightly["score"] < 0.5 and not slightly["drifted"], slightly


def test_ks_critical_distance_matches_the_test_it_stands_for() -> None:
    rng = np.random.default_rng(1)
    exceed = [output_drift(confident(300, rng), confident(300, rng), LABELS, alpha=0.1, floor=0.0)["drifted"]
              for _ in range(200)]  # fmt: skip
    assert np.mean(exceed) <= 0.15  # 11 tests at 0.1/11 each: about 10% of windows, Bonferroni's bound
    assert ks_critical(0.05, 100, 100) == pytest.approx(0.1921, abs=1e-3)  # the textbook value, 1.36 * sqrt(2/100)


def test_a_real_accuracy_drop_is_harm_and_says_so(settings) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(2)
    ref_conf = rng.uniform(0.9, 1.0, 600)
    ref_correct = rng.random(600) < ref_conf  # calibrated by construction
    new_correct = right(300, 0.80, rng)
    harm = assess(new_correct, rng.uniform(0.9, 1.0, 300), ref_correct, ref_conf, settings)
    assert harm["expected"] and harm["measured"]["harmful"] and harm["measured"]["significant"]
    assert harm["measured"]["drop"] > harm["measured"]["drop_low"] > settings.policy.max_accuracy_drop
    assert harm["evidence"][0].startswith("champion accuracy on the 300 new rows 0.800 vs ")
    assert harm["summary"].startswith("expected to hurt: champion accuracy")
    # Same confidences as the reference: the label-free estimate sees no drop (its known blind spot).
    assert not harm["estimated"]["harmful"]


def test_no_drop_or_too_few_rows_is_no_evidence(settings) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    ref_conf = rng.uniform(0.9, 1.0, 600)
    ref_correct = rng.random(600) < ref_conf
    steady = assess(right(300, float(ref_correct.mean()), rng), rng.uniform(0.9, 1.0, 300), ref_correct, ref_conf,
                    settings)  # fmt: skip
    assert steady["expected"] is False and steady["evidence"] == []
    assert steady["summary"].startswith("no evidence of harm: accuracy on the new rows")
    # 10 rows, one wrong: a fall of several points that 10 rows cannot tell from chance.
    few = assess(right(10, 0.9, rng), rng.uniform(0.9, 1.0, 10), ref_correct, ref_conf, settings)
    assert few["measured"]["drop"] > settings.policy.max_accuracy_drop and not few["measured"]["harmful"]
    assert few["measured"]["drop_low"] < 0
    assert assess(np.zeros(0, bool), np.zeros(0), ref_correct, ref_conf, settings)["expected"] is None


def test_an_unsure_champion_is_harm_without_labels(settings) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(4)
    ref_conf = rng.uniform(0.5, 1.0, 1000)
    ref_correct = rng.random(1000) < ref_conf
    new_conf = rng.uniform(0.4, 0.7, 300)
    harm = assess(np.ones(300, bool), new_conf, ref_correct, ref_conf, settings)
    assert harm["estimated"]["reliable"] and harm["estimated"]["harmful"], harm["estimated"]
    estimated = harm["estimated"]
    assert estimated["drop"] > estimated["drop_low"] > settings.policy.max_accuracy_drop
    assert harm["expected"] and harm["evidence"][0] == (
        f"label-free estimate of its accuracy {estimated['accuracy']:.3f} vs {estimated['reference_accuracy']:.3f} "
        f"held-out (at least {100 * estimated['drop_low']:.1f} points lower at 95%)"
    )
    assert harm["evidence"][1].startswith("its confidence fell (KS ") and harm["confidence"]["fell"]


def test_a_fall_in_confidence_is_harm_without_labels_and_a_rise_is_not(settings) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    reference = rng.uniform(0.9, 1.0, 600)
    assert not confidence_fell(rng.uniform(0.9, 1.0, 300), reference, floor=0.15)["fell"]
    fell = confidence_fell(rng.uniform(0.85, 0.97, 300), reference, floor=0.15)
    assert fell["fell"] and fell["distance"] > 0.3 and fell["p_value"] < 0.01, fell
    assert not confidence_fell(rng.uniform(0.95, 1.0, 300), reference, floor=0.15)["fell"]  # surer is no harm
    assert not confidence_fell(rng.uniform(0.85, 0.97, 300), reference, floor=0.9)["fell"]  # under the floor
    # As evidence, with the same accuracy measured on the labels:
    ref_correct = rng.random(600) < reference
    harm = assess(right(300, float(ref_correct.mean()), rng), rng.uniform(0.8, 0.95, 300), ref_correct, reference,
                  settings)  # fmt: skip
    assert harm["expected"] and harm["evidence"][-1].startswith("its confidence fell (KS 0.")
