"""What the model sees: penultimate-layer embeddings and predictions of a registered model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from ml.model.factory import head


def embed_and_predict(
    model: nn.Module, images: np.ndarray | Iterable[np.ndarray], device: Any, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (inputs of the head) and predicted classes, in row order, of an array or a stream of batches."""
    from ml.data.curated import batched
    from ml.learn.train import to_tensor

    batches = batched(images, batch_size) if isinstance(images, np.ndarray) else images
    captured: list[torch.Tensor] = []
    hook = head(model).register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].detach()))
    model.eval().to(device)
    preds = []
    try:
        with torch.inference_mode():
            for batch in batches:
                preds.append(model(to_tensor(batch, device)).argmax(dim=1).cpu().numpy())
    finally:
        hook.remove()
    if not preds:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return torch.cat(captured).flatten(1).float().cpu().numpy(), np.concatenate(preds)
