"""Drift on constructed windows of real digits, and the calibration behind it.

Each detector must stand on its own: one image statistic far past its threshold fires, a constant
column neither dilutes nor fires unless it moves, a class surge fires the label detector, and a
resample of the reference fires nothing. Thresholds come from the reference, seeded.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ml.config import DriftConfig, Settings, load_settings
from ml.data.curated import Split
from ml.data.ingest import describe
from ml.decide.drift import (
    compare,
    embedding_calibration,
    embedding_drift,
    mmd2_unbiased,
    summarise,
    tabular_features,
    tabular_thresholds,
)
from ml.demo import drift as camera_shift
from ml.learn.embed import embed_and_predict
from ml.learn.train import fit
from ml.model.factory import build_model

REFERENCE = slice(0, 700)  # the champion's batch
POOL = slice(700, None)  # where new batches come from
WINDOW = 300
NO_EMBEDDINGS = DriftConfig(embeddings=False)


def frame(images: np.ndarray, labels: np.ndarray, settings: Settings) -> tuple[pd.DataFrame, np.ndarray]:
    """Manifest-like rows (the stats ingest computes) and model-sized arrays for a set of 8x8 digits."""
    rows, arrays = [], []
    for image, label in zip(images, labels, strict=True):
        stats, array = describe(Image.fromarray(image, mode="L"), settings)
        rows.append({**stats, "label": str(label)})
        arrays.append(array)
    return pd.DataFrame(rows), np.stack(arrays)


def strict_json(verdict: dict) -> dict:
    """What drift.json holds: the verdict must survive a strict round trip (no NaN or infinity)."""
    return json.loads(json.dumps(verdict, allow_nan=False))


def invert(images: np.ndarray) -> np.ndarray:
    return 255 - images


def half_contrast(images: np.ndarray) -> np.ndarray:
    flat = images.astype(np.float32)
    means = flat.mean(axis=(1, 2), keepdims=True)
    return np.clip(np.rint(means + 0.5 * (flat - means)), 0, 255).astype(np.uint8)


def rotate(images: np.ndarray, degrees: float = 30) -> np.ndarray:
    return np.stack(
        [np.asarray(Image.fromarray(i).rotate(degrees, resample=Image.Resampling.BILINEAR)) for i in images]
    )


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:  # type: ignore[override]
    return load_settings({"CT_HOME": str(tmp_path_factory.mktemp("drift"))})


@pytest.fixture(scope="module")
def reference(digits, settings):  # type: ignore[no-untyped-def]
    """The champion's batch: its manifest-like frame (every split, as the drift step reads it) and arrays."""
    images, labels = digits
    return frame(images[REFERENCE], labels[REFERENCE], settings)


@pytest.fixture(scope="module")
def champion(digits, reference, settings):  # type: ignore[no-untyped-def]
    """A champion trained on the reference batch's train rows, and its embeddings of the held-out rows."""
    _, labels = digits
    ref_arrays = reference[1]
    is_train = np.random.default_rng(0).random(len(ref_arrays)) < 0.7
    torch.manual_seed(0)
    model = build_model("digits_cnn", 1, 10)
    train = Split(ref_arrays[is_train], labels[REFERENCE][is_train].astype(np.int64), pd.DataFrame())
    # A few epochs are enough for embeddings that tell digits apart, and keep this file quick.
    quick = settings.model_copy(update={"train": settings.train.model_copy(update={"epochs": 5})})
    fit(model, train, Split(ref_arrays[:0], train.labels[:0], pd.DataFrame()), quick, torch.device("cpu"))
    return model, embed_and_predict(model, ref_arrays[~is_train], "cpu")[0]


def pool_window(digits, seed: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    images, labels = digits[0][POOL], digits[1][POOL]
    pick = np.random.default_rng(seed).choice(len(images), WINDOW, replace=False)
    return images[pick], labels[pick]


def full_verdict(champion, reference, images, labels, settings) -> dict:  # type: ignore[no-untyped-def]
    """All three detectors, as the drift step combines them (tabular scores computed directly)."""
    model, reference_embeddings = champion
    current, arrays = frame(images, labels, settings)
    features = tabular_features(current, reference[0], settings.drift)
    features["embeddings"] = embedding_drift(
        embed_and_predict(model, arrays, "cpu")[0], reference_embeddings, settings.drift
    )
    return summarise(features, settings.drift, len(current), len(reference[0]))


def synthetic(rows: int, seed: int, mean_shift: float = 0.0) -> pd.DataFrame:
    """Two varying statistics and a constant width/height, as a uniform source would give."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "mean": rng.normal(70 + mean_shift, 8, rows), "std": rng.normal(76, 6, rows),
        "width": np.full(rows, 32), "height": np.full(rows, 32),
    })  # fmt: skip


STATS_ONLY = DriftConfig(features=("mean", "std", "width", "height"), embeddings=False)


def test_a_constant_column_neither_dilutes_nor_fires() -> None:
    reference = synthetic(1000, seed=1)
    # Half a reference SD on one statistic of four: the old share rule (half of them) never fired.
    result = summarise(tabular_features(synthetic(WINDOW, 2, mean_shift=4.0), reference, STATS_ONLY), STATS_ONLY,
                       WINDOW, len(reference))  # fmt: skip
    image_stats = result["detectors"]["image_stats"]
    assert image_stats["fired"] and image_stats["features_fired"] == ["mean"], image_stats
    assert image_stats["constant"] == ["height", "width"]
    for name in ("width", "height"):
        assert result["features"][name]["drifted"] is False and result["features"][name]["constant"] == "both"
    assert result["drifted_share"] == 0.5  # of the two statistics that can vary
    quiet = summarise(tabular_features(synthetic(WINDOW, 3), reference, STATS_ONLY), STATS_ONLY, WINDOW, 1000)
    assert not quiet["drift_detected"], quiet["detectors"]


def test_a_constant_reference_column_that_changes_fires() -> None:
    reference = synthetic(1000, seed=1)
    current = synthetic(WINDOW, seed=2)
    current.loc[:9, "width"] = 64  # ten images from a new camera
    result = strict_json(summarise(tabular_features(current, reference, STATS_ONLY), STATS_ONLY, WINDOW, 1000))
    assert result["detectors"]["image_stats"]["features_fired"] == ["width"]
    assert result["detectors"]["image_stats"]["feature"] == "width"
    assert result["detectors"]["image_stats"]["constant_moved"] == ["width"]
    assert result["features"]["width"]["constant"] == "reference"
    assert result["features"]["width"]["share_differing"] == pytest.approx(10 / WINDOW)
    assert result["drifted_features"] == ["width"]


@pytest.mark.parametrize(
    ("shift", "expect"), [(invert, {"mean", "bright"}), (half_contrast, {"std"})], ids=["invert", "half-contrast"]
)
def test_image_shifts_fire_the_image_stats_detector_alone(digits, reference, settings, shift, expect) -> None:  # type: ignore[no-untyped-def]
    images, labels = pool_window(digits, seed=0)
    current, _ = frame(shift(images), labels, settings)
    result, _ = compare(current, reference[0], NO_EMBEDDINGS)
    result = strict_json(result)
    image_stats = result["detectors"]["image_stats"]
    assert result["drift_detected"] and image_stats["fired"], image_stats
    assert expect <= set(image_stats["features_fired"]) and expect <= set(result["drifted_features"])
    for name in expect:  # far past the threshold, not at its edge
        assert result["features"][name]["ratio"] > 5, result["features"][name]
    assert image_stats["feature"] in image_stats["features_fired"] and image_stats["ratio"] > 5, image_stats
    assert {"width", "height"} <= set(image_stats["constant"])  # 8x8 everywhere: set aside, not counted
    assert "embeddings" not in result["detectors"]


def test_a_3x_prior_shift_fires_the_label_detector(digits, reference, settings) -> None:
    images, labels = digits[0][POOL], digits[1][POOL]
    rng = np.random.default_rng(0)
    # Class 3 at three times its share (10% -> 30%), the others scaled down.
    shares = np.full(10, 0.7 / 9)
    shares[3] = 0.3
    pick = np.concatenate([
        rng.choice(np.flatnonzero(labels == d), n, replace=False) for d, n in enumerate(rng.multinomial(WINDOW, shares))
    ])  # fmt: skip
    current, _ = frame(images[pick], labels[pick], settings)
    result, _ = compare(current, reference[0], NO_EMBEDDINGS)
    label = result["detectors"]["label"]
    assert label["fired"] and not result["detectors"]["image_stats"]["fired"], result["detectors"]
    assert result["features"]["class_share"]["class"] == "3" and result["features"]["class_share"]["drifted"]
    assert result["features"]["label"]["score"] > result["features"]["label"]["threshold"]


def test_direct_scores_match_evidently(digits, reference, settings) -> None:
    images, labels = pool_window(digits, seed=1)
    current, _ = frame(camera_shift(images, brightness=10, noise=10), labels, settings)
    result, snapshot = compare(current, reference[0], NO_EMBEDDINGS)
    varying = [f for f in NO_EMBEDDINGS.features if result["features"][f].get("constant") != "both"]
    assert {"mean", "std", "bright", "label"} <= set(varying)
    for name in varying:
        feature = result["features"][name]
        assert feature["evidently_score"] == pytest.approx(feature["score"], rel=1e-9, abs=1e-12), name
    # Evidently's HTML judges each column with our calibrated threshold.
    tests = {
        m["config"]["column"]: m["config"]["threshold"] for m in snapshot.dict()["metrics"] if "column" in m["config"]
    }
    assert tests["mean"] == pytest.approx(result["features"]["mean"]["threshold"])


def test_resampled_controls_raise_no_alarm(champion, digits, reference, settings) -> None:
    alarms, mmd = [], []
    for seed in range(20):
        result = full_verdict(champion, reference, *pool_window(digits, seed), settings)
        mmd.append(result["features"]["embeddings"]["score"])
        if result["drift_detected"]:
            alarms.append((seed, result["drifted_features"]))
        # Every score is kept, below its threshold too, for the trend plots.
        for name in ("mean", "std", "bright", "label", "class_share", "embeddings"):
            assert {"score", "threshold", "ratio", "drifted"} <= result["features"][name].keys(), name
    assert len(alarms) <= 1, f"false alarms: {alarms}"
    # The unbiased MMD^2 is stored as computed: a quiet window can land below zero.
    assert min(mmd) < 0 < max(mmd), mmd


@pytest.mark.parametrize(
    "shift", [rotate, lambda im: camera_shift(im, brightness=0, noise=35)], ids=["rotation", "noise"]
)
def test_embedding_shifts_fire_the_embedding_detector(champion, digits, reference, settings, shift) -> None:  # type: ignore[no-untyped-def]
    images, labels = pool_window(digits, seed=0)
    result = full_verdict(champion, reference, shift(images), labels, settings)
    assert result["detectors"]["embeddings"]["fired"], result["detectors"]["embeddings"]
    assert "embeddings" in result["fired_detectors"]


def test_tabular_false_alarms_stay_near_the_configured_rate() -> None:
    """300 windows of one distribution: image stats plus labels flag about their share of the budget, no more."""
    rng = np.random.default_rng(5)

    def draw(rows: int) -> pd.DataFrame:
        brightness = rng.gamma(6.0, 12.0, rows)
        return pd.DataFrame({"mean": brightness, "std": rng.normal(76, 6, rows) + 0.3 * brightness,
                             "bright": np.round(rng.beta(3, 8, rows) * 1024) / 1024, "width": 32,
                             "label": rng.choice(list("0123456789"), rows, p=np.r_[np.full(9, 0.09), 0.19])})  # fmt: skip

    # With embeddings off, two of the three detectors run: a budget of 1% per window.
    cfg = DriftConfig(features=("mean", "std", "bright", "width", "label"), embeddings=False, false_alarm_rate=0.015)
    reference = draw(1000)
    thresholds = tabular_thresholds(reference, WINDOW, cfg)
    alarms = sum(
        summarise(tabular_features(draw(WINDOW), reference, cfg, thresholds), cfg, WINDOW, 1000)["drift_detected"]
        for _ in range(300)
    )
    assert alarms <= 9, alarms  # 3 expected; P(more than 9) < 0.1%


def test_calibrated_thresholds_are_deterministic_for_a_seed(reference, champion) -> None:
    cfg = DriftConfig()
    first, again = tabular_thresholds(reference[0], WINDOW, cfg), tabular_thresholds(reference[0], WINDOW, cfg)
    assert first == again
    other = tabular_thresholds(reference[0], WINDOW, DriftConfig(seed=1))
    assert other["mean"]["threshold"] != first["mean"]["threshold"]
    assert other["mean"]["threshold"] == pytest.approx(first["mean"]["threshold"], rel=0.2)
    embeddings = champion[1].astype(np.float64)
    assert embedding_calibration(embeddings, WINDOW, cfg) == embedding_calibration(embeddings, WINDOW, cfg)
    # A bigger window is held to a tighter threshold.
    assert tabular_thresholds(reference[0], 3 * WINDOW, cfg)["mean"]["threshold"] < first["mean"]["threshold"]


def test_unbiased_mmd_matches_its_definition() -> None:
    rng = np.random.default_rng(0)
    current, reference = rng.normal(size=(40, 8)), rng.normal(size=(60, 8))

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * 4.0**2))

    k_cc, k_rr = kernel(current, current), kernel(reference, reference)
    expected = ((k_cc.sum() - np.trace(k_cc)) / (40 * 39) + (k_rr.sum() - np.trace(k_rr)) / (60 * 59)
                - 2 * kernel(current, reference).mean())  # fmt: skip
    assert mmd2_unbiased(current, reference, 4.0) == pytest.approx(expected, rel=1e-9)
