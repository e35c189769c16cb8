"""The realistic profile (3-channel ResNet-18 on random-resized crops of larger shards), end to end at a small size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ml import layout
from ml.config import load_settings
from ml.data import synthetic
from ml.data.ingest import read_manifest
from ml.demo import write_batch
from ml.storage import Lake

PROFILE = Path(__file__).resolve().parents[2] / "ml" / "profiles" / "resnet18_224.yaml"


def test_the_profile_loads_as_shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CT_CONFIG", str(PROFILE))
    settings = load_settings()
    assert (settings.image.size, settings.image.stored, settings.image.channels) == (224, 256, 3)
    assert settings.train.arch == "resnet18" and settings.train.augment == "resized_crop" and settings.train.flip


def test_the_realistic_profile_ingests_trains_and_serves_at_a_small_size(
    ct_home: Path, run_step, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shipped file, shrunk: 32 px crops of 40 px shards, one short epoch, no compile on a CPU.
    for key, value in {"CT_CONFIG": str(PROFILE), "CT_IMAGE__SIZE": "32", "CT_IMAGE__STORE_SIZE": "40",
                       "CT_TRAIN__EPOCHS": "2", "CT_TRAIN__BATCH_SIZE": "32", "CT_TRAIN__COMPILE": "false",
                       "CT_INGEST__WORKERS": "2", "CT_GATE__FLOOR_ACCURACY": "0"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    settings = load_settings()
    lake = Lake.from_uri(settings.lake_uri)
    images, labels = synthetic.images(300, 48, seed=3)
    write_batch(lake, "photos-1", images, [str(label) for label in labels])

    assert run_step("ingest")["batches"][0]["status"] == "curated"
    manifest = read_manifest(lake, "photos-1")
    assert (manifest["channels"] == 3).all() and (manifest["width"] == 48).all()
    shard = lake.path(layout.shard("photos-1", manifest["shard"].iloc[0]))  # type: ignore[attr-defined]
    assert np.load(shard, mmap_mode="r").shape[1:] == (40, 40, 3), "stored at image.store_size"

    for step in ("drift", "decide"):
        run_step(step, "--run-key", "r1", *(["--force"] if step == "decide" else []))
    trained = run_step("train", "--run-key", "r1")
    assert trained["train_rows"] > 150 and not trained["already_done"]
    evaluated = run_step("evaluate", "--run-key", "r1")
    record = json.loads(lake.read_bytes(layout.report(layout.RETRAIN_DAG, "r1", "eval.json")))
    parity = record["candidate"]["onnx"]
    assert parity["passed"] and parity["rows"] == evaluated["rows"], parity
    gate = run_step("gate", "--run-key", "r1")
    assert gate["decision"] == "promote", gate  # the first model, floor 0
