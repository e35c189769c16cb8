"""Per-sample augmentation on the device: random crop (translation or random-resized), optional flip.

Each image in a batch gets its own crop window and flip, drawn from a ``torch.Generator`` on the
device, so a seed fixes the whole batch and no two samples share a draw. One ``affine_grid`` plus
``grid_sample`` does the crop, the resize and the flip for the whole batch at once; it compiles
(``train.compile``). A translation by whole pixels samples exactly at pixel centres, so it copies
pixels rather than blending them. Normalisation happens inside the model (:mod:`ml.model.factory`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC to float NCHW in [0, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The central window of uint8 NHWC images: what evaluation sees."""
    height, width = images.shape[1:3]
    top, left = (height - size) // 2, (width - size) // 2
    return images[:, top : top + size, left : left + size]


def crop_windows(
    n: int, store: int, size: int, mode: str, pad: int, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample: the crop's side (pixels of the stored image) and its top-left corner (may lie in the padding)."""
    draws = torch.rand(n, 4, generator=generator, device=device)
    if mode == "resized_crop":
        area = store * store * (0.35 + 0.65 * draws[:, 0])
        log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * draws[:, 1]
        side_w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=store)
        side_h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=store)
        left = (store - side_w) * draws[:, 2]
        top = (store - side_h) * draws[:, 3]
        return torch.stack([side_w, side_h], 1), left, top
    # Translation: a size x size window anywhere in the stored image grown by ``pad`` on each side.
    room = store - size + 2 * pad
    left = torch.floor(draws[:, 2] * (room + 1)).clamp(max=room) - pad
    top = torch.floor(draws[:, 3] * (room + 1)).clamp(max=room) - pad
    sides = torch.full((n, 2), float(size), device=device)
    return sides, left, top


def augment(
    images: torch.Tensor,
    size: int,
    generator: torch.Generator,
    mode: str = "translate",
    pad: int = 2,
    flip: bool = False,
) -> torch.Tensor:
    """uint8 NHWC stored images to augmented float NCHW model inputs of ``size`` x ``size``."""
    x = to_float(images)
    n, _c, store, _w = x.shape
    sides, left, top = crop_windows(n, store, size, mode, pad, generator, x.device)
    scale_x, scale_y = sides[:, 0] / store, sides[:, 1] / store
    if flip:
        mirror = torch.rand(n, generator=generator, device=x.device) < 0.5
        scale_x = torch.where(mirror, -scale_x, scale_x)
    # Output pixel centre u in [-1, 1] reads input x = scale * u + (2 * left + side) / store - 1.
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = scale_x
    theta[:, 0, 2] = (2 * left + sides[:, 0]) / store - 1
    theta[:, 1, 1] = scale_y
    theta[:, 1, 2] = (2 * top + sides[:, 1]) / store - 1
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
