"""Your data, your model: the network, its starting weights, how it trains, and one preprocessing everywhere."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ml import layout
from ml.config import load_settings
from ml.data.curated import ShardReader, Split, rows_of
from ml.data.ingest import ingest_batch
from ml.learn import warm_start
from ml.learn.train import fit, new_model, to_tensor
from ml.model import artifact
from ml.model.preprocess import Preprocessing, square
from ml.release import registry
from ml.storage import Lake
from ml.training.loader import ShardSet
from ml.training.loop import FitConfig, Loader
from ml.training.loop import fit as run_fit

CPU = torch.device("cpu")


def encoded(pixels: np.ndarray, fmt: str, orientation: int | None = None) -> bytes:
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(buffer, format=fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def scene(height: int, width: int, seed: int) -> np.ndarray:
    """An RGB picture with structure in both directions, so that a rotation or a crop shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 64 * 4], axis=-1)
    return (pixels + rng.integers(0, 8, pixels.shape)).clip(0, 255).astype(np.uint8)


@pytest.fixture
def photo_settings(ct_home: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    for name, value in {"CT_LABELS": "a,b", "CT_IMAGE__CHANNELS": "3", "CT_IMAGE__SIZE": "24",
                        "CT_IMAGE__STORE_SIZE": "32", "CT_INGEST__MIN_ROWS": "1",
                        "CT_INGEST__MAX_CLASS_SHARE": "1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    return load_settings()


def land_files(lake: Lake, batch_id: str, files: dict[str, bytes]) -> None:
    for relpath, data in files.items():
        lake.write_bytes(layout.join(layout.landing(batch_id), relpath), data)
    lake.write_bytes(layout.commit_marker(batch_id), b"")


def test_one_file_gives_the_same_tensor_to_ingest_evaluation_and_serving(photo_settings) -> None:
    lake = Lake.from_uri(photo_settings.lake_uri)
    files = {
        "images/a/wide.jpg": encoded(scene(30, 70, 0), "JPEG"),
        "images/b/tall.png": encoded(scene(90, 40, 1), "PNG"),
    }
    land_files(lake, "p1", files)
    assert ingest_batch(lake, "p1", photo_settings)["status"] == "curated"
    pipeline = Preprocessing.from_settings(photo_settings.image)
    with ShardReader(lake) as reader:
        rows = rows_of(reader, ["p1"], None, photo_settings.labels, size=photo_settings.image.size)
        evaluated = torch.cat([to_tensor(batch, CPU) for batch in rows.batches()]).numpy()  # what evaluate feeds
    by_hash = {sha: i for i, sha in enumerate(rows.frame["sha256"])}
    for data in files.values():
        served = pipeline.from_bytes(data)  # what a serving path computes from the file alone
        np.testing.assert_array_equal(served, evaluated[by_hash[hashlib.sha256(data).hexdigest()]])
        assert served.shape == (3, 24, 24)


def test_an_exif_rotated_photo_is_stored_upright_with_its_upright_size(photo_settings) -> None:
    lake = Lake.from_uri(photo_settings.lake_uri)
    upright = scene(60, 20, 2)  # tall, as the camera's user saw it
    stored_sideways = np.ascontiguousarray(np.rot90(upright, k=1))  # the sensor's rows: wide
    files = {"images/a/rotated.png": encoded(stored_sideways, "PNG", orientation=6),
             "images/b/plain.png": encoded(upright, "PNG")}  # fmt: skip
    land_files(lake, "p2", files)
    assert ingest_batch(lake, "p2", photo_settings)["status"] == "curated"
    manifest = load_manifest(lake, "p2")
    row = manifest[manifest["uri"].str.endswith("rotated.png")].iloc[0]
    assert (row["width"], row["height"]) == (20, 60), "the manifest records the size as the photo is seen"
    with ShardReader(lake) as reader:
        stored = reader.gather(manifest, layout.CURATED, dataset="p2")
    expected = square(Image.fromarray(upright), 32, "letterbox")
    np.testing.assert_array_equal(stored[int(row["row"])], expected)
    assert not np.array_equal(stored[int(row["row"])], square(Image.fromarray(stored_sideways), 32, "letterbox"))


def load_manifest(lake: Lake, batch_id: str):  # type: ignore[no-untyped-def]
    from ml.data.ingest import read_manifest

    return read_manifest(lake, batch_id)


def test_resize_policies_keep_the_whole_picture_or_say_what_they_lose() -> None:
    white = Image.fromarray(np.full((20, 40, 3), 255, np.uint8))  # twice as wide as high
    letterbox = square(white, 32, "letterbox")
    assert letterbox[8:24].min() == 255 and letterbox[:8].max() == 0 and letterbox[24:].max() == 0
    assert square(white, 32, "crop").min() == 255  # the centre square: all picture, edges cut
    assert square(white, 32, "squash").min() == 255  # stretched to fill
    ramp = Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) * 6, (20, 1)))  # grey rising left to right
    cropped, letterboxed = square(ramp, 32, "crop")[:, :, 0], square(ramp, 32, "letterbox")[:, :, 0]
    assert cropped[16, 0] > letterboxed[16, 0], "crop loses the left edge that letterbox keeps"


def test_spec_json_records_the_whole_preprocessing(tmp_path: Path, photo_settings) -> None:
    from ml.learn.train import model_spec

    folder = tmp_path / "m"
    artifact.save(new_model(photo_settings), model_spec(photo_settings), folder, onnx=False)
    recorded = json.loads((folder / artifact.SPEC).read_text())["preprocessing"]
    assert recorded["resize"] == "letterbox" and recorded["store_size"] == 32 and recorded["size"] == 24
    assert recorded["color"] == "RGB" and recorded["mean"] == [0.5] and recorded["exif_orientation"] is True
    _, spec = artifact.load(folder)
    assert spec.pipeline == Preprocessing.from_settings(photo_settings.image)


def test_your_own_network_trains_registers_and_reloads_from_its_spec(run_step, write_batch, monkeypatch) -> None:
    monkeypatch.setenv("CT_TRAIN__MODEL", "tests.usermodel:build")
    monkeypatch.setenv("CT_TRAIN__EPOCHS", "2")
    monkeypatch.setenv("CT_GATE__FLOOR_ACCURACY", "0")
    settings = load_settings()
    write_batch("b1", 0, 300)
    run_step("ingest")
    gate = run_step("retrain", "--run-key", "r1")
    assert gate["decision"] == "promote", gate
    version = registry.get_version(registry.client(settings), settings.model_name, gate["candidate_version"])
    with registry.downloaded(settings, version) as folder:
        files = artifact.locate(folder)
        assert files is not None and (folder / "MLmodel").is_file()
        spec = json.loads((files / artifact.SPEC).read_text())
        model, _ = artifact.load(files)  # rebuilt through the entry point the spec names, weights only
    assert spec["arch"] == "tests.usermodel:build"
    assert type(model[1]).__name__ == "TinyNet"
    from ml.model.factory import head

    assert head(model) is model[1].classifier
    # The champion as the next run's starting point: init_weights from MLflow's registry, hash in the lineage.
    init = warm_start.resolve(settings, f"models:/{settings.model_name}@champion")
    assert init.sha256 == spec["files"]["weights.pt"]
    loaded = warm_start.apply(new_model(settings), init)
    assert loaded["loaded"] == loaded["tensors"] and loaded["fresh"] == []


def digits_split(start: int, stop: int, digits, invert: bool = False) -> Split:  # type: ignore[no-untyped-def]
    import pandas as pd

    images, labels = digits
    chosen = images[start:stop, ..., None]
    return Split(
        255 - chosen if invert else chosen, labels[start:stop].astype(np.int64), pd.DataFrame(index=range(start, stop))
    )


def test_fine_tuning_from_init_weights_beats_training_from_scratch(digits, tmp_path, monkeypatch) -> None:
    """A network ct trained on other data (900 digits) starts one for a new camera (inverted digits): on the same
    50 rows and the same 6 epochs, it ends far more accurate than one trained from scratch."""
    for name, value in {"CT_IMAGE__SIZE": "8", "CT_TRAIN__PAD": "1", "CT_TRAIN__BATCH_SIZE": "8",
                        "CT_TRAIN__EPOCHS": "10"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    source = load_settings()
    torch.manual_seed(0)
    other = new_model(source)
    fit(other, digits_split(0, 900, digits), digits_split(900, 1000, digits), source, CPU)
    torch.save(other.state_dict(), tmp_path / "digits.pt")

    small, held_out = digits_split(1000, 1050, digits, invert=True), digits_split(1300, 1797, digits, invert=True)
    scores = {}
    for name, extra in (("scratch", {}), ("fine-tuned", {"CT_TRAIN__INIT_WEIGHTS": str(tmp_path / "digits.pt"),
                                                         "CT_TRAIN__FREEZE_EPOCHS": "1"})):  # fmt: skip
        settings = load_settings({**os.environ, "CT_TRAIN__EPOCHS": "6", **extra})
        torch.manual_seed(0)
        model = new_model(settings)
        if settings.train.init_weights:
            loaded = warm_start.apply(model, warm_start.resolve(settings, settings.train.init_weights))
            assert loaded["fresh"] == [] and loaded["loaded"] == loaded["tensors"]
        fit(model, small, held_out, settings, CPU)
        with torch.inference_mode():
            predicted = model.eval()(to_tensor(held_out.images, CPU)).argmax(1).numpy()
        scores[name] = float((predicted == held_out.labels).mean())
    assert scores["fine-tuned"] > scores["scratch"] + 0.08, scores


def test_a_new_head_is_initialised_fresh_and_a_foreign_file_is_refused(tmp_path, monkeypatch) -> None:
    five = load_settings({"CT_LABELS": "a,b,c,d,e"})
    torch.save(new_model(five).state_dict(), tmp_path / "five.pt")
    three = load_settings({"CT_LABELS": "x,y,z", "CT_TRAIN__INIT_WEIGHTS": str(tmp_path / "five.pt")})
    loaded = warm_start.apply(new_model(three), warm_start.resolve(three, str(tmp_path / "five.pt")))
    assert loaded["fresh"] == ["1.head.bias", "1.head.weight"] and loaded["loaded"] == loaded["tensors"] - 2
    torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "foreign.pt")
    with pytest.raises(warm_start.ConfigError, match="matches none of the network's tensors"):
        warm_start.apply(new_model(three), warm_start.resolve(three, str(tmp_path / "foreign.pt")))
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04\x95not a state dict")
    with pytest.raises(warm_start.ConfigError, match="not a weights-only state dict"):
        warm_start.resolve(three, str(tmp_path / "pickle.pt"))


def _loader(rows: int = 64, seed: int = 0) -> tuple[Loader, FitConfig]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (rows, 8, 8, 1), dtype=np.uint8)
    labels = (images.reshape(rows, -1).mean(1) > 127).astype(np.int64)
    path = Path(tempfile.mkdtemp()) / "shard-00000.npy"
    np.save(path, images)
    data = ShardSet((path,), np.zeros(rows, np.int64), np.arange(rows), labels, (8, 8, 1))
    cfg = FitConfig(epochs=4, batch_size=16, lr=0.01, weight_decay=0.0, seed=0, size=8, checkpoint_seconds=1e9)
    return Loader(data, 16, CPU, seed=0, ring=1), cfg


@pytest.mark.parametrize(("optimizer", "scheduler"), [("sgd", "step"), ("adamw", "cosine"), ("sgd", "constant")])
def test_optimizers_and_schedules_follow_the_settings(optimizer: str, scheduler: str) -> None:
    loader, cfg = _loader()
    cfg = FitConfig(**{**cfg.__dict__, "optimizer": optimizer, "scheduler": scheduler, "step_epochs": 2,
                       "step_gamma": 0.5, "label_smoothing": 0.1, "head_lr": 0.05})  # fmt: skip
    torch.manual_seed(0)
    model = new_model(load_settings({"CT_IMAGE__SIZE": "8", "CT_LABELS": "lo,hi"}))
    history = run_fit(model, loader, cfg, CPU, "fp").history
    lrs = [record["lr"] for record in history]  # the backbone's, after each epoch
    if scheduler == "step":
        assert lrs == pytest.approx([0.01, 0.005, 0.005, 0.0025])
    elif scheduler == "constant":
        assert lrs == pytest.approx([0.01] * 4)
    else:
        assert lrs[0] > lrs[1] > lrs[2] > lrs[3] == pytest.approx(0.0, abs=1e-9)
    assert all(record["images_per_s"] > 0 for record in history) and history[-1]["seconds_left"] == 0


def test_freezing_trains_only_the_head_and_early_stopping_keeps_the_best_epoch() -> None:
    loader, cfg = _loader()
    settings = load_settings({"CT_IMAGE__SIZE": "8", "CT_LABELS": "lo,hi"})
    torch.manual_seed(0)
    model = new_model(settings)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    after_first: dict[str, torch.Tensor] = {}

    def snapshot(record: dict[str, float]) -> None:
        if record["epoch"] == 0:
            after_first.update({k: v.clone() for k, v in model.state_dict().items()})

    scores = iter([0.5, 0.9, 0.6, 0.7, 0.8, 0.4])  # the best epoch is 1; patience 2 stops after epoch 3
    cfg = FitConfig(**{**cfg.__dict__, "epochs": 6, "freeze_epochs": 1, "early_stopping_patience": 2})
    best: dict[str, torch.Tensor] = {}

    def validate(trained: torch.nn.Module) -> float:
        score = next(scores)
        if score == 0.9:
            best.update({k: v.clone() for k, v in trained.state_dict().items()})
        return score

    result = run_fit(model, loader, cfg, CPU, "fp", validate=validate, on_epoch=snapshot)
    conv = "1.features.0.0.weight"
    assert torch.equal(after_first[conv], before[conv]), "the backbone stayed frozen for the first epoch"
    assert not torch.equal(after_first["1.head.weight"], before["1.head.weight"]), "the head learned"
    assert [r["epoch"] for r in result.history] == [0, 1, 2, 3] and result.stopped_early and result.best_epoch == 1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in best.items()), "the best epoch's weights are kept"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CT_TRAIN__ARCH": "resnet-18"}, "did you mean 'resnet18'"),
        ({"CT_TRAIN__OPTIMIZER": "adamx"}, "train.optimizer: Input should be 'adamw' or 'sgd'"),
        ({"CT_TRAIN__MODEL": "nosuchpackage.models:build"}, "cannot be found on this Python path"),
        ({"CT_TRAIN__MODEL": "tests.usermodel build"}, "is not an entry point like"),
        ({"CT_TRAIN__MODEL": "tests.usermodel:missing"}, "has no function 'missing'"),
        ({"CT_TRAIN__MODEL": "tests.usermodel:wrong_outputs"}, "ct needs (2, 10): one logit per label"),
        ({"CT_TRAIN__MODEL": "tests.usermodel:not_a_module"}, "returned str, not a torch nn.Module"),
        ({"CT_TRAIN__INIT_WEIGHTS": "/nowhere/resnet18.pth"}, "no such file. Bring the weights file"),
        ({"CT_TRAIN__FREEZE_EPOCHS": "20"}, "must be below train.epochs"),
    ],
)
def test_config_check_refuses_what_training_would_fail_on(run_step, monkeypatch, env, message) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run_step("config", "check")  # run_step asserts the exit code: 2 for a ConfigError
    assert result["error_type"] in ("ConfigError", "ModelBuildError") and message in result["error"], result


def test_a_missing_init_weights_file_is_a_refused_train_step(run_step, write_batch, monkeypatch) -> None:
    write_batch("b1", 0, 200)
    run_step("ingest")
    run_step("drift", "--run-key", "r1")
    run_step("decide", "--run-key", "r1")
    monkeypatch.setenv("CT_TRAIN__INIT_WEIGHTS", "/nowhere/weights.pt")
    result = run_step("train", "--run-key", "r1")
    assert (
        result["error_type"] == "ConfigError" and not result["retryable"] and "/nowhere/weights.pt" in result["error"]
    )
    settings = load_settings()
    assert registry.client(settings).search_model_versions(f"name='{settings.model_name}'") == []


def test_config_show_names_each_settings_source(run_step, tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "ct.yaml").write_text("labels: [cat, dog]\ntrain:\n  epochs: 4\n  batch_size: 32\n")
    monkeypatch.setenv("CT_CONFIG", str(tmp_path / "ct.yaml"))
    monkeypatch.delenv("CT_TRAIN__EPOCHS")  # the test session's own override
    monkeypatch.setenv("CT_TRAIN__LR", "0.003")
    from ml.cli import main

    assert main(["config", "show"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shown = {line.split()[0]: line for line in lines[:-1]}
    assert shown["labels"].endswith('["cat", "dog"]  (file)')
    assert shown["train.epochs"].endswith("4  (file)") and shown["train.lr"].endswith("0.003  (environment)")
    assert shown["gate.margin"].endswith("(default)")
    assert shown["train.batch_size"].endswith("32  (file)")
    changed = [name for name, line in shown.items() if not line.endswith("(default)")]
    assert json.loads(lines[-1])["settings_changed"] == len(changed) >= 4
