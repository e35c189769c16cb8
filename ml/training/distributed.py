"""Several processes, one model: PyTorch DDP under ``torchrun`` (NCCL on GPUs, gloo on CPUs).

``torchrun --standalone --nproc_per_node=N -m ml train ...`` starts N copies of the train step with
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` set. Each copy trains on its own part of every batch
(:func:`ml.training.loader.rank_batches`) and DDP averages the gradients, so N processes take the
steps one process would take with the same global batch. Rank 0 alone talks to MLflow, checkpoints
and prints the step's JSON line.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ml.training.loop import Dist


def from_env() -> Dist:
    """This process's place in a torchrun job (world 1, rank 0 when not started by torchrun)."""
    return Dist(world=int(os.environ.get("WORLD_SIZE", "1")), rank=int(os.environ.get("RANK", "0")))


def device_for(dist: Dist, device: torch.device) -> torch.device:
    """Each rank drives its own GPU (``LOCAL_RANK``); CPU ranks share the CPU."""
    if device.type == "cuda" and dist.world > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def start(dist: Dist, device: torch.device) -> None:
    if dist.world > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")


def stop(dist: Dist) -> None:
    if dist.world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def share(dist: Dist, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (other ranks pass anything)."""
    if dist.world == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
