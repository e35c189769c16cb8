"""The training loop: AdamW + one-cycle, bf16 autocast and channels_last on CUDA, checkpoints, resume, DDP.

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


@dataclass
class FitResult:
    history: list[dict[str, float]]
    resumed_from: tuple[int, int] | None = None  # (epoch, step) of the checkpoint this run resumed from


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


def _autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


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
) -> FitResult:
    """Train ``model`` in place; returns one metrics record per epoch, and where it resumed from.

    ``on_step(epoch, step)`` runs after every optimizer step (benchmarks time the loop with it).
    """
    torch.manual_seed(cfg.seed)
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = len(loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(1, cfg.epochs * steps))
    history: list[dict[str, float]] = []
    epoch, start, loss_sum, seen = 0, 0, 0.0, 0
    resumed_from = None
    if checkpoints is not None and (raw := checkpoints.load()) is not None:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"], device)
            epoch, start = int(state["epoch"]), int(state["step"])
            loss_sum, seen, history = float(state["loss_sum"]), int(state["seen"]), list(state["history"])
            resumed_from = (epoch, start)
            log.info("resuming from a checkpoint at epoch %d, step %d of %d", epoch, start, steps)
        else:
            log.warning("ignoring a checkpoint of another configuration or data window")
    train_model: nn.Module = model
    if dist.world > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    forward: Callable[..., torch.Tensor] = torch.compile(train_model) if cfg.compile else train_model
    transform = torch.compile(augment) if cfg.compile else augment
    generator = torch.Generator(device=device)
    last_save = time.monotonic()

    def save(next_epoch: int, next_step: int) -> None:
        nonlocal last_save
        if checkpoints is None or not dist.main:
            return
        state = {"fingerprint": fingerprint, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "rng": _rng_state(device), "epoch": next_epoch,
                 "step": next_step, "loss_sum": loss_sum, "seen": seen, "history": history,
                 "config": asdict(cfg)}  # fmt: skip
        buffer = io.BytesIO()
        torch.save(state, buffer)
        checkpoints.save(buffer.getvalue())
        last_save = time.monotonic()

    while epoch < cfg.epochs:
        train_model.train()
        running = torch.tensor(loss_sum, dtype=torch.float64, device=device)
        for step, (images, labels) in enumerate(loader.epoch(epoch, start), start=start):
            generator.manual_seed(cfg.seed * 1_000_003 + epoch * 10_007 + step)
            x = transform(images, cfg.size, generator, cfg.augment, cfg.pad, cfg.flip)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device):
                loss = nn.functional.cross_entropy(forward(x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.detach().double() * len(labels)  # stays on the device: no sync per step
            seen += len(labels)
            if on_step is not None:
                on_step(epoch, step)
            if time.monotonic() - last_save >= cfg.checkpoint_seconds and step + 1 < steps:
                loss_sum = float(running)
                save(epoch, step + 1)
        totals = torch.stack([running.cpu(), torch.tensor(float(seen), dtype=torch.float64)])
        if dist.world > 1:
            torch.distributed.all_reduce(totals)
        record = {"epoch": float(epoch), "train_loss": float(totals[0]) / max(float(totals[1]), 1.0)}
        if validate is not None and dist.main:
            record["val_accuracy"] = validate(model)
        history.append(record)
        log.info("epoch %d: %s", epoch, record)
        epoch, start, loss_sum, seen = epoch + 1, 0, 0.0, 0
        if epoch < cfg.epochs and time.monotonic() - last_save >= cfg.checkpoint_seconds:
            save(epoch, 0)
    return FitResult(history, resumed_from)
