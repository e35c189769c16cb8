"""The training loop: AdamW or SGD, a per-step schedule, autocast and channels_last on CUDA, checkpoints, resume, DDP.

Fine-tuning: for the first ``freeze_epochs`` only the head (the last ``nn.Linear``) learns, and the
head may have its own learning rate. ``early_stopping_patience`` stops when validation accuracy has
not improved for that many epochs and puts the best epoch's weights back.

A checkpoint holds everything the next step depends on: the weights, the optimizer and scheduler
state, the RNG states, the position in the data (epoch and step, plus the epoch's running loss), the
metrics so far and a fingerprint of the configuration and data. It is written every
``checkpoint_seconds`` (0: after every step) through a :class:`Checkpoints` store, which the train
step backs with the lake. A run that finds a checkpoint with its own fingerprint resumes at the
next step; any other checkpoint is ignored. The augmentation draws from a generator seeded by
``(seed, epoch, step)``, and the data plan is a function of ``(seed, epoch)``, so a resumed run
replays exactly what the uninterrupted run would have done.

Under DDP (``world > 1``), every rank runs this loop on its own part of each batch; rank 0 alone
checkpoints and validates, and the epoch's loss is summed over the ranks.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ml.training.augment import augment
from ml.training.loader import Loader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int
    size: int  # model input side; the loader's images are the stored size
    augment: str = "translate"  # or "resized_crop"
    pad: int = 2
    flip: bool = False
    compile: bool = False
    checkpoint_seconds: float = 600.0
    optimizer: str = "adamw"  # or "sgd"
    momentum: float = 0.9
    scheduler: str = "onecycle"  # cosine, step, constant
    step_epochs: int = 10
    step_gamma: float = 0.1
    label_smoothing: float = 0.0
    head_lr: float | None = None
    freeze_epochs: int = 0
    early_stopping_patience: int | None = None
    mixed_precision: str = "bf16"  # fp16, off (CUDA only)


@dataclass
class FitResult:
    history: list[dict[str, float]]
    resumed_from: tuple[int, int] | None = None  # (epoch, step) of the checkpoint this run resumed from
    best_epoch: int | None = None  # under early stopping: the epoch whose weights the model holds
    stopped_early: bool = False
    init: Any = None  # the weights training started from (ml.learn.warm_start.InitWeights), if any


class Checkpoints(Protocol):
    def load(self) -> bytes | None: ...

    def save(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class Dist:
    world: int = 1
    rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _autocast(device: torch.device, precision: str) -> Any:
    if device.type == "cuda" and precision != "off":
        return torch.autocast("cuda", dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _head_parameters(model: nn.Module) -> set[int]:
    from ml.model.factory import head

    return {id(p) for p in head(model).parameters()}


def optimizer_for(model: nn.Module, cfg: FitConfig) -> torch.optim.Optimizer:
    """Two parameter groups, the backbone's and the head's (which may have its own learning rate)."""
    in_head = _head_parameters(model)
    backbone = [p for p in model.parameters() if id(p) not in in_head]
    heads = [p for p in model.parameters() if id(p) in in_head]
    groups = [{"params": backbone, "lr": cfg.lr}, {"params": heads, "lr": cfg.head_lr or cfg.lr}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)  # fmt: skip
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def scheduler_for(optimizer: torch.optim.Optimizer, cfg: FitConfig, steps: int) -> Any:
    """A per-step learning-rate schedule over the whole run (``steps`` per epoch)."""
    total = max(1, cfg.epochs * steps)
    schedulers = torch.optim.lr_scheduler
    if cfg.scheduler == "onecycle":
        peaks = [group["lr"] for group in optimizer.param_groups]
        return schedulers.OneCycleLR(optimizer, max_lr=peaks, total_steps=total)
    if cfg.scheduler == "cosine":
        return schedulers.CosineAnnealingLR(optimizer, T_max=total)
    if cfg.scheduler == "step":
        return schedulers.StepLR(optimizer, step_size=max(1, cfg.step_epochs * steps), gamma=cfg.step_gamma)
    return schedulers.LambdaLR(optimizer, lambda _: 1.0)


def describe_epoch(record: dict[str, float], epochs: int) -> str:
    """One epoch's record as a log line: ``epoch 4/15: loss 0.4123, val accuracy 0.9530, ...``."""
    left = int(record.get("seconds_left", 0))
    parts = [f"loss {record['train_loss']:.4f}"]
    if "val_accuracy" in record:
        parts.append(f"val accuracy {record['val_accuracy']:.4f}")
    parts += [f"lr {record['lr']:.3g}", f"{record['images_per_s']:,.0f} images/s"]
    if left:
        parts.append(f"about {left // 60} min {left % 60:02d} s left" if left >= 60 else f"about {left} s left")
    return f"epoch {int(record['epoch']) + 1}/{epochs}: {', '.join(parts)}"


def freeze_backbone(model: nn.Module, frozen: bool) -> None:
    """Let only the head learn (``frozen``), or everything; frozen tensors get no gradient and no update."""
    in_head = _head_parameters(model)
    for parameter in model.parameters():
        if id(parameter) not in in_head:
            parameter.requires_grad_(not frozen)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def fit(
    model: nn.Module,
    loader: Loader,
    cfg: FitConfig,
    device: torch.device,
    fingerprint: str,
    checkpoints: Checkpoints | None = None,
    validate: Callable[[nn.Module], float] | None = None,
    dist: Dist = Dist(),
    on_step: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``model`` in place; returns one metrics record per epoch, and where it resumed from.

    ``on_step(epoch, step)`` runs after every optimizer step (benchmarks time the loop with it);
    ``on_epoch(record)`` after every epoch, on rank 0, with the epoch's loss, validation accuracy,
    learning rate, images per second and an estimate of the seconds left (the train step logs it to MLflow).
    """
    torch.manual_seed(cfg.seed)
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = optimizer_for(model, cfg)
    steps = len(loader)
    scheduler = scheduler_for(optimizer, cfg, steps)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.mixed_precision == "fp16")
    history: list[dict[str, float]] = []
    epoch, start, loss_sum, seen = 0, 0, 0.0, 0
    best: dict[str, Any] = {"accuracy": -1.0, "epoch": None, "state": None}  # early stopping's best epoch
    resumed_from = None
    if checkpoints is not None and (raw := checkpoints.load()) is not None:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state.get("scaler") or {})
            _set_rng_state(state["rng"], device)
            epoch, start = int(state["epoch"]), int(state["step"])
            loss_sum, seen, history = float(state["loss_sum"]), int(state["seen"]), list(state["history"])
            best = dict(state.get("best") or best)
            resumed_from = (epoch, start)
            log.info("resuming from a checkpoint at epoch %d, step %d of %d", epoch, start, steps)
        else:
            log.warning("ignoring a checkpoint of another configuration or data window")
    freeze_backbone(model, epoch < cfg.freeze_epochs)
    train_model: nn.Module = model
    if dist.world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=cfg.freeze_epochs > 0
        )
    forward: Callable[..., torch.Tensor] = torch.compile(train_model) if cfg.compile else train_model
    transform = torch.compile(augment) if cfg.compile else augment
    generator = torch.Generator(device=device)
    last_save = time.monotonic()
    epoch_seconds: list[float] = []

    def save(next_epoch: int, next_step: int) -> None:
        nonlocal last_save
        if checkpoints is None or not dist.main:
            return
        state = {"fingerprint": fingerprint, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(device),
                 "epoch": next_epoch, "step": next_step, "loss_sum": loss_sum, "seen": seen, "history": history,
                 "best": best, "config": asdict(cfg)}  # fmt: skip
        buffer = io.BytesIO()
        torch.save(state, buffer)
        checkpoints.save(buffer.getvalue())
        last_save = time.monotonic()

    stopped_early = False
    while epoch < cfg.epochs:
        if epoch == cfg.freeze_epochs and cfg.freeze_epochs:
            freeze_backbone(model, False)
            log.info("epoch %d: the backbone learns from now on (it was frozen for %d epochs)", epoch, epoch)
        train_model.train()
        started, images = time.monotonic(), 0
        running = torch.tensor(loss_sum, dtype=torch.float64, device=device)
        for step, (batch, labels) in enumerate(loader.epoch(epoch, start), start=start):
            generator.manual_seed(cfg.seed * 1_000_003 + epoch * 10_007 + step)
            x = transform(batch, cfg.size, generator, cfg.augment, cfg.pad, cfg.flip)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, cfg.mixed_precision):
                loss = nn.functional.cross_entropy(forward(x), labels, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            running += loss.detach().double() * len(labels)  # stays on the device: no sync per step
            seen += len(labels)
            images += len(labels)
            if on_step is not None:
                on_step(epoch, step)
            if time.monotonic() - last_save >= cfg.checkpoint_seconds and step + 1 < steps:
                loss_sum = float(running)
                save(epoch, step + 1)
        totals = torch.stack([running.cpu(), torch.tensor(float(seen), dtype=torch.float64)])
        if dist.world > 1:
            torch.distributed.all_reduce(totals)
        took = time.monotonic() - started
        epoch_seconds.append(took)
        record = {"epoch": float(epoch), "train_loss": float(totals[0]) / max(float(totals[1]), 1.0),
                  "lr": float(optimizer.param_groups[0]["lr"]), "images_per_s": images * dist.world / max(took, 1e-9)}  # fmt: skip
        stop = False
        if validate is not None and dist.main:
            record["val_accuracy"] = accuracy = validate(model)
            if cfg.early_stopping_patience is not None:
                if accuracy > best["accuracy"]:
                    best = {"accuracy": accuracy, "epoch": epoch,
                            "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}  # fmt: skip
                stop = epoch - int(best["epoch"]) >= cfg.early_stopping_patience and epoch + 1 < cfg.epochs
        if cfg.early_stopping_patience is not None and dist.world > 1:
            flag = torch.tensor([int(stop)], device=device)
            torch.distributed.broadcast(flag, 0)
            stop = bool(flag.item())
        record["seconds_left"] = 0.0 if stop else sum(epoch_seconds) / len(epoch_seconds) * (cfg.epochs - epoch - 1)
        history.append(record)
        log.info("%s", describe_epoch(record, cfg.epochs))
        if on_epoch is not None and dist.main:
            on_epoch(record)
        epoch, start, loss_sum, seen = epoch + 1, 0, 0.0, 0
        if stop:
            log.info("early stopping after epoch %d: no better validation accuracy than epoch %d's %.4f for %d epochs",
                     epoch - 1, best["epoch"], best["accuracy"], cfg.early_stopping_patience)  # fmt: skip
            stopped_early = True
            break
        if epoch < cfg.epochs and time.monotonic() - last_save >= cfg.checkpoint_seconds:
            save(epoch, 0)
    if best["state"] is not None and dist.main:
        model.load_state_dict(best["state"])  # the best epoch's weights, not the last one's
    return FitResult(history, resumed_from, best["epoch"], stopped_early)
