"""Model factory: a small CNN for CPU demos, torchvision architectures built with ``weights=None``, or yours.

A network is named by ``arch`` (a built-in name) or by an entry point ``package.module:function``
(``train.model``), which is called as ``function(num_classes=, channels=, image_size=)`` and must
return an ``nn.Module``. ``spec.json`` records the name or the entry point, and loading rebuilds the
network through it; the weights stay a plain state dict.

Every model takes ``float32`` NCHW input in [0, 1] and normalises inside itself (a first
:class:`Normalize` module with the configured mean and std), so the champion and a candidate are
always fed identical tensors by the evaluator.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import nn

from ml.errors import ConfigError

TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "efficientnet_b0")
#: The configuration lists the same names (``ml.config.BUILTIN_ARCHS``, checked by a test) and refuses
#: any other at load time, without importing torch.
ARCHS = ("digits_cnn", *TORCHVISION_ARCHS)


class ModelBuildError(ConfigError):
    """A network cannot be built: an unknown name, or a user's entry point that fails or returns no module.

    A configuration error wherever it is met (exit 2: a retry cannot help), in train or when a
    stored model is rebuilt by a process that lacks the user's package.
    """


class Normalize(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, channels: int, mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.25,)) -> None:
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).expand(channels).reshape(1, -1, 1, 1).clone()
        )
        self.register_buffer(
            "std", torch.tensor(list(std), dtype=torch.float32).expand(channels).reshape(1, -1, 1, 1).clone()
        )

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


def _entry_point(target: str) -> Callable[..., Any]:
    module_name, _, name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # whatever the module raises on import is the user's to fix
        raise ModelBuildError(
            f"train.model {target!r}: importing {module_name} failed: {type(exc).__name__}: {exc}"
        ) from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise ModelBuildError(f"train.model {target!r}: {module_name} has no function {name!r}")
    return cast(Callable[..., Any], function)


def _user_model(target: str, channels: int, num_classes: int, image_size: int) -> nn.Module:
    try:
        model = _entry_point(target)(num_classes=num_classes, channels=channels, image_size=image_size)
    except ModelBuildError:
        raise
    except Exception as exc:  # a failing builder is a configuration error, said with its cause
        raise ModelBuildError(f"train.model {target!r} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelBuildError(f"train.model {target!r} returned {type(model).__name__}, not a torch nn.Module")
    return model


def is_entry_point(network: str) -> bool:
    return ":" in network


def build_model(
    network: str,
    channels: int,
    num_classes: int,
    image_size: int = 32,
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.25,),
) -> nn.Module:
    """The network named by ``network`` (a built-in arch or ``package.module:function``), normalising inside."""
    backbone: nn.Module
    if is_entry_point(network):
        backbone = _user_model(network, channels, num_classes, image_size)
    elif network == "digits_cnn":
        backbone = DigitsCNN(channels, num_classes)
    elif network in TORCHVISION_ARCHS:
        backbone = _torchvision(network, channels, num_classes)
    else:
        raise ModelBuildError(f"unknown model {network!r}; choose one of {sorted(ARCHS)} or 'package.module:function'")
    return nn.Sequential(Normalize(channels, mean, std), backbone)


def check_outputs(model: nn.Module, channels: int, num_classes: int, image_size: int) -> None:
    """Run two blank images through ``model``: it must return one logit per class for each (else ModelBuildError)."""
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, channels, image_size, image_size))
    except Exception as exc:  # a forward that fails on the configured input: a configuration error
        raise ModelBuildError(f"the network fails on a {channels}x{image_size}x{image_size} input: "
                              f"{type(exc).__name__}: {exc}") from exc  # fmt: skip
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelBuildError(
            f"the network returns {shape} for 2 images; ct needs (2, {num_classes}): one logit per label"
        )


def head(model: nn.Module) -> nn.Linear:
    """The classifier head: the last ``nn.Linear`` (its input is the embedding; fine-tuning trains it first)."""
    heads = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not heads:
        raise ModelBuildError(f"{type(model).__name__} has no Linear layer: ct takes the last one as the head")
    return heads[-1]
