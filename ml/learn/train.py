"""Train a candidate on the run's data window and register it in MLflow, once per run key."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ml import layout
from ml.config import Settings
from ml.data.curated import Split
from ml.data.window import Window, load_window, window_key
from ml.errors import CtError
from ml.release import registry
from ml.storage import Lake

log = logging.getLogger(__name__)


def code_version() -> str:
    """The code that trained a model: the image's build arg, else the checkout's git commit."""
    if os.environ.get("CT_CODE_VERSION"):
        return os.environ["CT_CODE_VERSION"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pick_device(preference: str) -> Any:
    import torch

    if preference == "cuda" and not torch.cuda.is_available():
        raise CtError("train.device=cuda but no CUDA device is visible; use auto or cpu")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def to_tensor(images: np.ndarray, device: Any) -> Any:
    """uint8 NHWC on the host to float NCHW in [0, 1] on ``device``; the conversion runs on the device."""
    import torch

    from ml.training.augment import to_float

    return to_float(torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True))


def predict(model: Any, batches: Iterable[np.ndarray], device: Any) -> np.ndarray:
    """Class index per row, in row order, over uint8 NHWC batches (streamed: one batch in memory at a time)."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for images in batches:
            out.append(model(to_tensor(images, device)).argmax(dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def fit_config(settings: Settings) -> Any:
    from ml.training.loop import FitConfig

    cfg = settings.train
    return FitConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed,
        size=settings.image.size, augment=cfg.augment, pad=cfg.pad, flip=cfg.flip, compile=cfg.compile,
        checkpoint_seconds=cfg.checkpoint_minutes * 60, optimizer=cfg.optimizer, momentum=cfg.momentum,
        scheduler=cfg.scheduler, step_epochs=cfg.step_epochs, step_gamma=cfg.step_gamma,
        label_smoothing=cfg.label_smoothing, head_lr=cfg.head_lr, freeze_epochs=cfg.freeze_epochs,
        early_stopping_patience=cfg.early_stopping_patience, mixed_precision=cfg.mixed_precision,
    )  # fmt: skip


def new_model(settings: Settings) -> Any:
    """The configured network with fresh weights, checked to give one logit per label (else ModelBuildError, exit 2)."""
    from ml.model.factory import build_model, check_outputs, head

    image, classes = settings.image, len(settings.labels)
    model = build_model(settings.train.network, image.channels, classes, image.size, image.mean, image.std)
    check_outputs(model, image.channels, classes, image.size)
    head(model)  # fine-tuning and the drift embeddings need one
    return model


def model_spec(settings: Settings) -> Any:
    """What spec.json records of the configured network: how to rebuild it and how its input is made."""
    from ml.model.artifact import ModelSpec
    from ml.model.preprocess import Preprocessing

    return ModelSpec(
        arch=settings.train.network,
        channels=settings.image.channels,
        num_classes=len(settings.labels),
        image_size=settings.image.size,
        labels=settings.labels,
        preprocessing=Preprocessing.from_settings(settings.image),
    )


def loader_for(data: Any, settings: Settings, device: Any, world: int = 1, rank: int = 0) -> Any:
    from ml.training.loader import Loader

    cfg = settings.train
    return Loader(
        data, cfg.batch_size, device, cfg.seed, ring=cfg.ring_shards, threads=cfg.loader_threads,
        resident_bytes=cfg.resident_mb * 2**20, world=world, rank=rank,
    )  # fmt: skip


def fit(model: Any, train: Split, val: Split, settings: Settings, device: Any) -> list[dict[str, float]]:
    """Train on in-memory arrays (drift experiments, tests): they go through one shard and the same loop."""
    from ml.training.loader import ShardSet
    from ml.training.loop import fit as run

    with tempfile.TemporaryDirectory(prefix="ct-fit-") as tmp:
        path = Path(tmp) / "shard-00000.npy"
        np.save(path, np.ascontiguousarray(train.images))
        data = ShardSet((path,), np.zeros(len(train), np.int64), np.arange(len(train)), train.labels,
                        tuple(train.images.shape[1:]))  # fmt: skip
        validate = _validator(val, device)
        return run(model, loader_for(data, settings, device), fit_config(settings), device, "in-memory",
                   validate=validate).history  # fmt: skip


def _validator(val: Any, device: Any) -> Any:
    """Accuracy on the validation rows (:class:`ml.data.curated.Split` or streamed :class:`ml.data.curated.Rows`) after each epoch."""
    if not len(val):
        return None
    return lambda model: float((predict(model, val.batches(), device) == val.labels).mean())


class LakeCheckpoints:
    """A run's training checkpoint in the lake (``checkpoints/<run_key>/latest.pt``), written atomically."""

    def __init__(self, lake: Lake, run_key: str) -> None:
        self.lake, self.key = lake, layout.checkpoint(run_key)

    def load(self) -> bytes | None:
        return self.lake.read_bytes(self.key) if self.lake.exists(self.key) else None

    def save(self, data: bytes) -> None:
        self.lake.write_bytes(self.key, data)


#: Settings that do not change what training computes: a checkpoint stays valid when only these change.
_RUNTIME_ONLY = ("device", "num_threads", "loader_threads", "resident_mb", "checkpoint_minutes")


def fingerprint(settings: Settings, window: Window, init_sha256: str | None = None) -> str:
    """What a checkpoint must match to be resumed: the training settings, the image setup, the starting weights and the data."""
    payload = {
        "train": {k: v for k, v in settings.train.model_dump().items() if k not in _RUNTIME_ONLY},
        "image": settings.image.model_dump(mode="json", exclude={"max_pixels", "shard_mb"}),
        "labels": list(settings.labels),
        "data": data_digest(window),
        **({"init": init_sha256} if init_sha256 else {}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def data_digest(window: Window) -> str:
    """One hash for the training data: the sorted batch ids with their manifest hashes."""
    payload = json.dumps({b: window.manifest_hashes[b] for b in window.train_batches}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def log_model(mlflow_client: Any, exp_id: str, run_id: str, run_key: str, model: Any, spec: Any) -> str:
    """Store the model as an MLflow logged model of ``run_id``; returns its id.

    What is stored is a standard MLflow model (:mod:`ml.learn.mlmodel`): ``MLmodel`` with the
    python_function flavor that serves it, and ct's weights + spec + ONNX under ``artifacts/ct``.

    The logged model carries the run-key tag from its creation, so that a rerun after a kill before
    registration finds it and deletes it (:func:`ml.release.registry.delete_orphan_models`).
    """
    from ml.learn import mlmodel
    from ml.model import artifact

    logged = mlflow_client.create_logged_model(
        exp_id, name="model", source_run_id=run_id, tags={registry.RUN_KEY_TAG: run_key}, model_type=artifact.FORMAT
    )
    with tempfile.TemporaryDirectory(prefix="ct-model-") as tmp:
        artifact.save(model, spec, Path(tmp) / "ct")
        mlmodel.save(Path(tmp) / "ct", Path(tmp) / "model")
        mlflow_client.log_model_artifacts(logged.model_id, str(Path(tmp) / "model"))
    mlflow_client.finalize_logged_model(logged.model_id, "READY")
    return str(logged.model_id)


def train(lake: Lake, settings: Settings, run_key: str) -> dict[str, Any]:
    """Train and register a candidate for ``run_key``; a second call returns the same version.

    Registration (``create_model_version`` with the run-key tag) is the commit point. A rerun first
    cleans up after a killed attempt: its MLflow run is marked FAILED, and a logged model that never
    got registered is deleted, so neither lingers as RUNNING or as an orphan. Training resumes from
    the run's last checkpoint when there is one. Under ``torchrun`` every rank trains its part and
    rank 0 alone does the MLflow work (:mod:`ml.training.distributed`).
    """
    import torch

    from ml.training import distributed

    dist = distributed.from_env()
    device = distributed.device_for(dist, pick_device(settings.train.device))
    distributed.start(dist, device)
    try:
        existing = None
        if dist.main:
            mlflow_client = registry.client(settings)
            exp_id = registry.experiment_id(settings, mlflow_client)
            registry.fail_abandoned_runs(mlflow_client, exp_id, run_key)
            found = registry.version_by_run_key(mlflow_client, settings.model_name, run_key)
            if found is None:
                registry.delete_orphan_models(mlflow_client, exp_id, run_key)
            else:
                existing = {"model_version": found.version, "run_id": found.run_id, "already_done": True}
        existing = distributed.share(dist, existing)
        if existing is not None:
            log.info("run %s already registered version %s; not training again", run_key, existing["model_version"])
            return existing
        if settings.train.num_threads:
            torch.set_num_threads(settings.train.num_threads)
        window = load_window(lake, run_key)
        if not dist.main:
            _fit_window(lake, settings, window, device, dist)
            return {"rank": dist.rank, "trained": True}
        return _train_and_register(lake, settings, window, device, dist, mlflow_client, exp_id)
    finally:
        distributed.stop(dist)


def _fit_window(
    lake: Lake, settings: Settings, window: Window, device: Any, dist: Any, on_epoch: Any = None
) -> tuple[Any, Any, int, int]:
    """Build the model and train it on the window's train rows: (model, fit result, train rows, val rows)."""
    import torch

    from ml.data.curated import ShardReader, rows_of, shard_set
    from ml.learn import warm_start
    from ml.training.loop import fit as run_fit

    torch.manual_seed(settings.train.seed)  # weight init draws from the global generator: the same on every rank
    model = new_model(settings)
    init = None
    if settings.train.init_weights:
        init = warm_start.resolve(settings, settings.train.init_weights)
        warm_start.apply(model, init)
    with ShardReader(lake) as reader:
        train_rows = shard_set(reader, window.train_batches, "train", settings.labels)
        if len(train_rows) == 0:
            raise CtError(f"window {window.run_key} has no training rows in {window.train_batches}")
        val_split = rows_of(reader, window.train_batches, "val", settings.labels, size=settings.image.size)
        loader = loader_for(train_rows, settings, device, world=dist.world, rank=dist.rank)
        log.info("training %s on %d rows (%d for validation) on %s, up to %d epochs%s", settings.train.network,
                 len(train_rows), len(val_split), device, settings.train.epochs,
                 f", from {init.source}" if init else "")  # fmt: skip
        result = run_fit(
            model, loader, fit_config(settings), device, fingerprint(settings, window, init.sha256 if init else None),
            checkpoints=LakeCheckpoints(lake, window.run_key), validate=_validator(val_split, device), dist=dist,
            on_epoch=on_epoch,
        )  # fmt: skip
    result.init = init
    return model, result, len(train_rows), len(val_split)


def _train_and_register(
    lake: Lake, settings: Settings, window: Window, device: Any, dist: Any, mlflow_client: Any, exp_id: str
) -> dict[str, Any]:
    import mlflow

    from ml.model import artifact

    run_key = window.run_key
    started = time.perf_counter()
    with mlflow.start_run(
        experiment_id=exp_id,
        run_name=f"train-{run_key}",
        tags={registry.RUN_KEY_TAG: run_key, **registry.process_tags()},
    ) as run:
        mlflow.log_params(
            {
                **{f"train.{k}": v for k, v in settings.train.model_dump().items()},
                "image.size": settings.image.size,
                "image.store_size": settings.image.stored,
                "image.channels": settings.image.channels,
                "labels": ",".join(settings.labels),
                "device": str(device),
                "processes": dist.world,
                "data.digest": data_digest(window),
            }
        )
        mlflow.set_tags({"ct.code_version": code_version(), "ct.train_batches": ",".join(window.train_batches)[:4000]})
        mlflow.log_dict(window.to_dict(), "data_window.json")
        model, result, train_rows, val_rows = _fit_window(lake, settings, window, device, dist, _log_epoch)
        history = result.history
        seconds = time.perf_counter() - started
        lineage = result.init.lineage() if result.init else {}
        mlflow.set_tags(lineage)
        mlflow.log_params({"train_rows": train_rows, "val_rows": val_rows})
        mlflow.log_metrics({"train_seconds": seconds, "train_images_per_s": train_rows * len(history) / seconds})
        if result.best_epoch is not None:
            mlflow.log_params({"best_epoch": result.best_epoch, "stopped_early": result.stopped_early})

        spec = model_spec(settings)
        model_id = log_model(mlflow_client, exp_id, run.info.run_id, run_key, model, spec)
        registry.ensure_registered_model(mlflow_client, settings.model_name)
        version = mlflow_client.create_model_version(
            settings.model_name,
            source=f"models:/{model_id}",
            run_id=run.info.run_id,
            model_id=model_id,
            tags={
                registry.RUN_KEY_TAG: run_key,
                registry.WINDOW_TAG: lake.uri(window_key(run_key)),
                registry.FORMAT_TAG: artifact.FORMAT,
                **lineage,
                **({registry.AS_OF_TAG: f"{window.as_of:.6f}"} if window.as_of is not None else {}),
            },
            description=f"ct candidate for run {run_key}",
        )
    lake.delete_prefix(layout.join(layout.CHECKPOINTS, run_key))  # registered: nothing left to resume
    final = history[-1]
    resumed = result.resumed_from
    return {
        "model_version": str(version.version),
        "run_id": run.info.run_id,
        "already_done": False,
        "train_rows": train_rows,
        "val_accuracy": final.get("val_accuracy"),
        "train_loss": final["train_loss"],
        "device": str(device),
        "processes": dist.world,
        "seconds": round(seconds, 2),
        "resumed_from": {"epoch": resumed[0], "step": resumed[1]} if resumed else None,
        "epochs": len(history),
        **({"init_weights_sha256": result.init.sha256} if result.init else {}),
    }


def _log_epoch(record: dict[str, float]) -> None:
    """Log one epoch's metrics to the active MLflow run as it finishes, so progress shows while training runs."""
    import mlflow

    mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))
