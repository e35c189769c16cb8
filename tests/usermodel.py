"""Networks a user brings (``train.model: tests.usermodel:<function>``): one that works, and ones that must be refused."""

from __future__ import annotations

from torch import nn


class TinyNet(nn.Module):
    """Two convolutions and a head named ``classifier``: a stand-in for someone's own architecture."""

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.classifier(self.body(x))


def build(num_classes: int, channels: int, image_size: int) -> nn.Module:
    return TinyNet(num_classes, channels)


def wrong_outputs(num_classes: int, channels: int, image_size: int) -> nn.Module:
    return TinyNet(num_classes + 1, channels)


def not_a_module(num_classes: int, channels: int, image_size: int) -> object:
    return "a string"
