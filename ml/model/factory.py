"""Model factory: a small CNN for CPU demos and torchvision architectures built with ``weights=None``.

Every model takes ``float32`` NCHW input in [0, 1] and normalises inside itself, so the champion
and a candidate are always fed identical tensors by the evaluator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "efficientnet_b0")
ARCHS = ("digits_cnn", *TORCHVISION_ARCHS)


class Normalize(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, channels, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, channels, 1, 1), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class DigitsCNN(nn.Module):
    """Three conv blocks and a linear head: trains to >95% on load_digits in seconds on a CPU."""

    def __init__(self, channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
            )

        self.features = nn.Sequential(
            block(channels, width), nn.MaxPool2d(2),
            block(width, width * 2), nn.MaxPool2d(2),
            block(width * 2, width * 4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _replace_stem(stem: nn.Module, channels: int) -> nn.Conv2d:
    if not isinstance(stem, nn.Conv2d):
        raise TypeError(f"expected a Conv2d stem, got {type(stem).__name__}")
    return nn.Conv2d(channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False)  # type: ignore[arg-type]


def _torchvision(arch: str, channels: int, num_classes: int) -> nn.Module:
    import torchvision

    factory: Callable[..., nn.Module] = getattr(torchvision.models, arch)
    model: Any = factory(weights=None, num_classes=num_classes)
    if channels != 3:
        # Swap the stem for one with the right input channels; everything else stays stock.
        if hasattr(model, "conv1"):
            model.conv1 = _replace_stem(model.conv1, channels)
        else:
            model.features[0][0] = _replace_stem(model.features[0][0], channels)
    return cast(nn.Module, model)


def build_model(arch: str, channels: int, num_classes: int) -> nn.Module:
    backbone: nn.Module
    if arch == "digits_cnn":
        backbone = DigitsCNN(channels, num_classes)
    elif arch in TORCHVISION_ARCHS:
        backbone = _torchvision(arch, channels, num_classes)
    else:
        raise ValueError(f"unknown model {arch!r}; choose one of {sorted(ARCHS)}")
    return nn.Sequential(Normalize(channels), backbone)
