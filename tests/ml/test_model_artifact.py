"""The stored model: weights + spec, never unpickled; its ONNX twin agrees with it; old pickles need a flag."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.config import load_settings
from ml.errors import ChampionUnavailable
from ml.model import artifact
from ml.model.artifact import ModelFileError, ModelSpec
from ml.model.factory import build_model
from ml.release import registry

DIGITS = ModelSpec(arch="digits_cnn", channels=1, num_classes=10, image_size=8, labels=tuple("0123456789"))


def _images(rng: np.random.Generator, rows: int, spec: ModelSpec) -> np.ndarray:
    shape = (rows, spec.image_size, spec.image_size, spec.channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _stored(tmp_path: Path, spec: ModelSpec = DIGITS, onnx: bool = True) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = spec.build().eval()
    folder = tmp_path / "model"
    artifact.save(model, spec, folder, onnx=onnx)
    return model, folder


class Payload:
    """Unpickling this touches a file: the proof that a loader ran code it was handed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_weights_and_spec_round_trip_to_the_same_logits(tmp_path: Path) -> None:
    model, folder = _stored(tmp_path)
    loaded, spec = artifact.load(folder)
    x = torch.from_numpy(artifact.to_input(_images(np.random.default_rng(0), 16, DIGITS)))
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    assert spec == DIGITS
    record = json.loads((folder / artifact.SPEC).read_text())
    assert record["format"] == artifact.FORMAT and set(record["files"]) == {artifact.WEIGHTS, artifact.ONNX}


def test_a_crafted_pickle_in_the_weights_file_is_refused_and_never_run(tmp_path: Path) -> None:
    _model, folder = _stored(tmp_path, onnx=False)
    marker = tmp_path / "pwned"
    # The attacker controls the artifact store: they swap the weights and fix up the spec's hash too.
    (folder / artifact.WEIGHTS).write_bytes(pickle.dumps({"conv.weight": Payload(marker)}))
    record = json.loads((folder / artifact.SPEC).read_text())
    record["files"][artifact.WEIGHTS] = artifact.sha256_file(folder / artifact.WEIGHTS)
    (folder / artifact.SPEC).write_text(json.dumps(record))
    with pytest.raises(ModelFileError, match="holds more than tensors"):
        artifact.load(folder)
    assert not marker.exists()


def test_weights_that_are_not_the_ones_the_spec_names_are_refused(tmp_path: Path) -> None:
    _model, folder = _stored(tmp_path, onnx=False)
    other = build_model("digits_cnn", 1, 10)
    torch.save(other.state_dict(), folder / artifact.WEIGHTS)
    with pytest.raises(ModelFileError, match="SHA-256 differs"):
        artifact.load(folder)


def test_a_folder_without_a_spec_or_of_another_format_is_not_a_ct_model(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"no spec\.json"):
        artifact.load(tmp_path)
    (tmp_path / artifact.SPEC).write_text(json.dumps({"format": "pickle"}))
    with pytest.raises(ModelFileError, match="format 'pickle'"):
        artifact.load(tmp_path)


@pytest.mark.parametrize(
    "spec",
    [DIGITS, ModelSpec(arch="resnet18", channels=3, num_classes=4, image_size=32, labels=("a", "b", "c", "d"))],
    ids=["digits_cnn", "resnet18"],
)
def test_the_onnx_export_gives_the_torch_logits_within_tolerance(tmp_path: Path, spec: ModelSpec) -> None:
    model, folder = _stored(tmp_path, spec)
    rng = np.random.default_rng(1)
    parity = artifact.onnx_parity(folder, model, (_images(rng, rows, spec) for rows in (7, 64)))
    assert parity["passed"], parity
    assert parity["rows"] == 71 and parity["argmax_disagreements"] == 0
    # What it measured is far inside the tolerance (printed with -s for the closing note).
    assert parity["max_abs_logit_diff"] < parity["tolerance"] / 10, parity
    print(
        f"{spec.arch}: max |logit diff| {parity['max_abs_logit_diff']:.2e}, max |logit| {parity['max_abs_logit']:.2f}"
    )


def test_an_onnx_file_that_is_not_this_model_fails_parity(tmp_path: Path) -> None:
    model, folder = _stored(tmp_path)
    with torch.no_grad():  # the weights moved after the export: the serving file no longer matches
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    parity = artifact.onnx_parity(folder, model, [_images(np.random.default_rng(2), 64, DIGITS)])
    assert not parity["passed"]
    assert parity["max_abs_logit_diff"] > parity["tolerance"]


def _legacy_version(settings, tmp_path: Path, marker: Path | None = None):  # type: ignore[no-untyped-def]
    """Register a version the way ct did before weights: a pickled MLflow PyTorch model."""
    import mlflow
    import mlflow.pytorch

    mlflow_client = registry.client(settings)
    exp_id = registry.experiment_id(settings, mlflow_client)
    model = build_model("digits_cnn", 1, 10).eval()
    if marker is not None:
        model.payload = Payload(marker)  # type: ignore[assignment]
    with mlflow.start_run(experiment_id=exp_id) as run:
        info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle")
    registry.ensure_registered_model(mlflow_client, settings.model_name)
    mv = mlflow_client.create_model_version(
        settings.model_name, source=info.model_uri, run_id=run.info.run_id, model_id=info.model_id
    )
    return registry.get_version(mlflow_client, settings.model_name, str(mv.version))


def test_a_pickled_version_in_the_registry_is_refused_unless_allowed(
    ct_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "pwned"
    settings = load_settings()
    version = _legacy_version(settings, tmp_path, marker)
    marker.unlink(missing_ok=True)  # MLflow itself loads the model back while logging it
    with pytest.raises(ChampionUnavailable, match=r"pickled model .* CT_ALLOW_PICKLED_MODELS=true"):
        registry.load_model(settings, version)
    assert not marker.exists()

    monkeypatch.setenv("CT_ALLOW_PICKLED_MODELS", "true")
    with caplog.at_level(logging.WARNING, logger="ml.release.registry"):
        model = registry.load_model(load_settings(), version)
    assert isinstance(model, torch.nn.Module)
    assert marker.exists()  # it did run the pickle's code: exactly why it takes a flag
    assert "is a pickled model: loading it because allow_pickled_models is on" in caplog.text
