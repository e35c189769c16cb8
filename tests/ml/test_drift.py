"""Drift on constructed batches of real digits: a resampled control stays quiet; real shifts are caught."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ml.config import Settings, load_settings
from ml.data import Split
from ml.demo import drift as camera_shift
from ml.drift import compare, embedding_drift, summarise
from ml.embed import embed_and_predict
from ml.ingest import describe
from ml.model import build_model
from ml.train import fit

REFERENCE = slice(0, 700)  # the champion's batch
POOL = slice(700, None)  # where new batches come from


def frame(images: np.ndarray, labels: np.ndarray, settings: Settings) -> tuple[pd.DataFrame, np.ndarray]:
    """Manifest-like rows (the stats ingest computes) and model-sized arrays for a set of 8x8 digits."""
    rows, arrays = [], []
    for image, label in zip(images, labels, strict=True):
        stats, array = describe(Image.fromarray(image, mode="L"), settings)
        rows.append({**stats, "label": str(label)})
        arrays.append(array)
    return pd.DataFrame(rows), np.stack(arrays)


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:  # type: ignore[override]
    return load_settings({"CT_HOME": str(tmp_path_factory.mktemp("drift"))})


@pytest.fixture(scope="module")
def champion(digits, settings):  # type: ignore[no-untyped-def]
    """A champion trained on the reference batch's train rows, plus that batch's frames."""
    images, labels = digits
    ref_frame, ref_arrays = frame(images[REFERENCE], labels[REFERENCE], settings)
    is_train = np.random.default_rng(0).random(len(ref_frame)) < 0.7
    torch.manual_seed(0)
    model = build_model("digits_cnn", 1, 10)
    train = Split(ref_arrays[is_train], labels[REFERENCE][is_train].astype(np.int64), pd.DataFrame())
    fit(model, train, Split(ref_arrays[:0], train.labels[:0], pd.DataFrame()), settings, torch.device("cpu"))
    held_out_embeddings = embed_and_predict(model, ref_arrays[~is_train], "cpu")[0]
    return model, ref_frame[is_train], held_out_embeddings


def verdict(champion, images, labels, settings) -> dict:  # type: ignore[no-untyped-def]
    model, reference, reference_embeddings = champion
    current, arrays = frame(images, labels, settings)
    result, _ = compare(current, reference, settings.drift)
    result["features"]["embeddings"] = embedding_drift(
        embed_and_predict(model, arrays, "cpu")[0], reference_embeddings, settings.drift
    )
    return summarise(result["features"], settings.drift, len(current), len(reference))


def test_resampled_control_raises_no_alarm_across_20_seeds(champion, digits, settings) -> None:
    images, labels = digits[0][POOL], digits[1][POOL]
    alarms = []
    for seed in range(20):
        pick = np.random.default_rng(seed).choice(len(images), 300, replace=False)
        result = verdict(champion, images[pick], labels[pick], settings)
        if result["drift_detected"]:
            alarms.append((seed, result["drifted_features"]))
    assert len(alarms) <= 1, f"false alarms: {alarms}"


def rotate(images: np.ndarray, degrees: float = 30) -> np.ndarray:
    return np.stack(
        [np.asarray(Image.fromarray(i).rotate(degrees, resample=Image.Resampling.BILINEAR)) for i in images]
    )


@pytest.mark.parametrize(
    ("shift", "expect"),
    [
        (lambda im: np.clip(im.astype(int) + 60, 0, 255).astype(np.uint8), {"mean"}),
        (rotate, {"embeddings"}),
        (lambda im: camera_shift(im, brightness=0, noise=35), {"embeddings"}),
    ],
    ids=["brightness", "rotation", "noise"],
)
def test_image_shifts_are_detected(champion, digits, settings, shift, expect: set[str]) -> None:
    images, labels = digits[0][POOL][:300], digits[1][POOL][:300]
    result = verdict(champion, shift(images), labels, settings)
    assert result["drift_detected"] and expect <= set(result["drifted_features"]), result["drifted_features"]


def test_class_prior_shift_is_detected(champion, digits, settings) -> None:
    images, labels = digits[0][POOL], digits[1][POOL]
    low_digits = np.flatnonzero(labels < 5)[:300]  # only 0-4 arrive
    result = verdict(champion, images[low_digits], labels[low_digits], settings)
    assert result["drift_detected"] and "label" in result["drifted_features"]
    assert result["features"]["label"]["score"] > settings.drift.cat_threshold
    assert result["groups"]["label"]["drifted"]


def test_raw_scores_are_kept_when_below_threshold(champion, digits, settings) -> None:
    images, labels = digits[0][POOL][:300], digits[1][POOL][:300]
    result = verdict(champion, images, labels, settings)
    assert not result["drift_detected"]
    for name in ("mean", "std", "bright", "label", "embeddings"):
        feature = result["features"][name]
        assert 0 < feature["score"] < feature["threshold"], (name, feature)
        assert feature["drifted"] is False
