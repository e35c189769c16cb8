"""What the model sees: penultimate-layer embeddings and class probabilities of a registered model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from ml.model.factory import head


def embed_and_score(
    model: nn.Module, images: np.ndarray | Iterable[np.ndarray], device: Any, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (inputs of the head) and softmax probabilities, in row order, of an array or a stream of batches.

    The predicted class of a row is its probabilities' argmax.
    """
    from ml.data.curated import batched
    from ml.learn.train import to_tensor

    batches = batched(images, batch_size) if isinstance(images, np.ndarray) else images
    captured: list[torch.Tensor] = []
    hook = head(model).register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].detach()))
    model.eval().to(device)
    probabilities = []
    try:
        with torch.inference_mode():
            for batch in batches:
                logits = model(to_tensor(batch, device)).float()
                probabilities.append(torch.softmax(logits, dim=1).cpu().numpy())
    finally:
        hook.remove()
    if not probabilities:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return torch.cat(captured).flatten(1).float().cpu().numpy(), np.concatenate(probabilities)


def top_class(model: nn.Module, batches: Iterable[np.ndarray], device: Any) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class and its probability (the model's confidence) per row, streamed one batch at a time."""
    from ml.learn.train import to_tensor

    model.eval().to(device)
    classes, confidence = [], []
    with torch.inference_mode():
        for batch in batches:
            top = torch.softmax(model(to_tensor(batch, device)).float(), dim=1).max(dim=1)
            classes.append(top.indices.cpu().numpy())
            confidence.append(top.values.cpu().numpy())
    if not classes:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(classes), np.concatenate(confidence)
