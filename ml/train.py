"""Train a candidate on the run's data window and register it in MLflow, once per run key."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ml import registry
from ml.config import Settings
from ml.data import Split, load_split
from ml.errors import CtError
from ml.storage import Lake
from ml.window import Window, load_window, window_key

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

    batch = torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True)
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


def _augment(x: Any, generator: Any, pad: int = 2) -> Any:
    """Random translation by up to ``pad`` pixels, done on the device. No flips: digits are not symmetric."""
    import torch
    import torch.nn.functional as F

    _n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (1,), generator=generator).item()
    dx = torch.randint(0, 2 * pad + 1, (1,), generator=generator).item()
    return padded[:, :, dy : dy + h, dx : dx + w]


def predict(model: Any, images: np.ndarray, device: Any, batch_size: int = 512) -> np.ndarray:
    """Class index per row, in row order."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            logits = model(to_tensor(images[start : start + batch_size], device))
            out.append(logits.argmax(dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def fit(model: Any, train: Split, val: Split, settings: Settings, device: Any) -> list[dict[str, float]]:
    """Plain supervised training; returns one record of metrics per epoch."""
    import torch

    cfg = settings.train
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, cfg.epochs * ((len(train) + cfg.batch_size - 1) // cfg.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps)
    images = to_tensor(train.images, device)
    labels = torch.from_numpy(train.labels).to(device)
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator).to(device)
        total, seen = 0.0, 0
        for start in range(0, len(train), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            loss = torch.nn.functional.cross_entropy(model(_augment(images[idx], generator)), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        record = {"epoch": float(epoch), "train_loss": total / max(seen, 1)}
        if len(val):
            record["val_accuracy"] = float((predict(model, val.images, device) == val.labels).mean())
        history.append(record)
        log.info("epoch %d: %s", epoch, record)
    return history


def data_digest(window: Window) -> str:
    """One hash for the training data: the sorted batch ids with their manifest hashes."""
    payload = json.dumps({b: window.manifest_hashes[b] for b in window.train_batches}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def log_model(mlflow_client: Any, exp_id: str, run_id: str, run_key: str, model: Any, spec: Any) -> str:
    """Store weights + spec + ONNX as an MLflow logged model of ``run_id``; returns its id.

    The logged model carries the run-key tag from its creation, so that a rerun after a kill before
    registration finds it and deletes it (:func:`ml.registry.delete_orphan_models`).
    """
    from ml.model import artifact

    logged = mlflow_client.create_logged_model(
        exp_id, name="model", source_run_id=run_id, tags={registry.RUN_KEY_TAG: run_key}, model_type=artifact.FORMAT
    )
    with tempfile.TemporaryDirectory(prefix="ct-model-") as tmp:
        artifact.save(model, spec, Path(tmp))
        mlflow_client.log_model_artifacts(logged.model_id, tmp)
    mlflow_client.finalize_logged_model(logged.model_id, "READY")
    return str(logged.model_id)


def train(lake: Lake, settings: Settings, run_key: str) -> dict[str, Any]:
    """Train and register a candidate for ``run_key``; a second call returns the same version.

    Registration (``create_model_version`` with the run-key tag) is the commit point. A rerun first
    cleans up after a killed attempt: its MLflow run is marked FAILED, and a logged model that never
    got registered is deleted, so neither lingers as RUNNING or as an orphan.
    """
    mlflow_client = registry.client(settings)
    exp_id = registry.experiment_id(settings, mlflow_client)
    registry.fail_abandoned_runs(mlflow_client, exp_id, run_key)
    existing = registry.version_by_run_key(mlflow_client, settings.model_name, run_key)
    if existing is not None:
        log.info("run %s already registered version %s; not training again", run_key, existing.version)
        return {"model_version": existing.version, "run_id": existing.run_id, "already_done": True}
    registry.delete_orphan_models(mlflow_client, exp_id, run_key)

    import mlflow
    import torch

    from ml.model import artifact, build_model
    from ml.model.artifact import ModelSpec

    window = load_window(lake, run_key)
    if settings.train.num_threads:
        torch.set_num_threads(settings.train.num_threads)
    train_split = load_split(lake, window.train_batches, "train", settings.labels)
    val_split = load_split(lake, window.train_batches, "val", settings.labels)
    if len(train_split) == 0:
        raise CtError(f"window {run_key} has no training rows in {window.train_batches}")
    device = pick_device(settings.train.device)
    torch.manual_seed(settings.train.seed)  # weight init draws from the global generator
    model = build_model(settings.train.arch, settings.image.channels, len(settings.labels))

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
                "image.channels": settings.image.channels,
                "labels": ",".join(settings.labels),
                "device": str(device),
                "train_rows": len(train_split),
                "val_rows": len(val_split),
                "data.digest": data_digest(window),
            }
        )
        mlflow.set_tags({"ct.code_version": code_version(), "ct.train_batches": ",".join(window.train_batches)[:4000]})
        mlflow.log_dict(window.to_dict(), "data_window.json")
        history = fit(model, train_split, val_split, settings, device)
        for record in history:
            step = int(record["epoch"])
            mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=step)
        seconds = time.perf_counter() - started
        mlflow.log_metrics({"train_seconds": seconds, "train_images_per_s": len(train_split) * len(history) / seconds})

        spec = ModelSpec(
            arch=settings.train.arch,
            channels=settings.image.channels,
            num_classes=len(settings.labels),
            image_size=settings.image.size,
            labels=settings.labels,
        )
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
            },
            description=f"ct candidate for run {run_key}",
        )
    final = history[-1]
    return {
        "model_version": str(version.version),
        "run_id": run.info.run_id,
        "already_done": False,
        "train_rows": len(train_split),
        "val_accuracy": final.get("val_accuracy"),
        "train_loss": final["train_loss"],
        "device": str(device),
        "seconds": round(seconds, 2),
    }
