"""Architectures by name: ``@register_model`` on a builder, ``create_model(name, **kw)`` to build.

Every builder takes ``num_classes``, ``in_channels`` and ``image_size`` so that the dataset
decides the shape of the model's ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from shared.errors import InvalidJob, UnknownArchitecture
from shared.settings import get_settings
from workers.catalog import Registry

ModelBuilder = Callable[..., nn.Module]
MODELS: Registry[ModelBuilder] = Registry("architecture", UnknownArchitecture)
register_model = MODELS.register


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered architecture; bad arguments are input errors, not crashes, and so
    is a model over ``settings.max_model_params`` (counted before any memory is taken)."""
    builder = MODELS.get(name)
    try:
        counted = meta_parameters(builder, kwargs)
        if counted is not None:
            check_size(name, kwargs, counted)
        module = builder(**kwargs)
    except (TypeError, ValueError) as e:
        raise InvalidJob(f"cannot build {name!r} with {kwargs}: {e}") from e
    if counted is None:  # a builder the meta device cannot run: counted once it is built
        check_size(name, kwargs, sum(p.numel() for p in module.parameters()))
    return module


def meta_parameters(builder: ModelBuilder, kwargs: dict[str, Any]) -> int | None:
    """The model's parameter count, built on the meta device (no memory taken): every
    argument can be within its own bounds while the whole is billions of parameters. None
    when the builder needs real tensors (a plugin that reads values while it builds)."""
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in builder(**kwargs).parameters())
    except (NotImplementedError, RuntimeError):
        return None


def check_size(name: str, kwargs: dict[str, Any], params: int) -> None:
    """Refuse a model with more parameters than the worker allows."""
    limit = get_settings().max_model_params
    if params > limit:
        raise InvalidJob(
            f"{name!r} with {kwargs} has {params:,} parameters, over this worker's limit of "
            f"{limit:,} (TORCHFLEET_MAX_MODEL_PARAMS): choose smaller arch_kwargs"
        )


def list_models() -> list[str]:
    return MODELS.names()


class CifarCNN(nn.Module):
    """The seed CNN: two conv-ReLU-maxpool blocks and one linear classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        if image_size % 4 != 0 or image_size < 4:
            raise ValueError(f"cifar_cnn needs an image size divisible by 4, got {image_size}")
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2, 2)
        self.fc = nn.Linear(64 * (image_size // 4) ** 2, num_classes)

    def forward(self, x: Any) -> Any:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc(x.flatten(1))


@register_model()
def cifar_cnn(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    return CifarCNN(num_classes=num_classes, in_channels=in_channels, image_size=image_size)


@register_model()
def mlp(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    hidden: int = 256,
    depth: int = 2,
) -> nn.Module:
    """Flatten, then ``depth`` Linear-ReLU layers of width ``hidden``, then the classifier."""
    if depth < 1 or hidden < 1:
        raise ValueError("mlp needs depth >= 1 and hidden >= 1")
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_channels * image_size * image_size
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _small_input(image_size: int) -> bool:
    """CIFAR-sized inputs lose too much to an ImageNet stem's early downsampling."""
    return image_size < 64


@register_model()
def resnet18(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    """torchvision's ResNet-18 (no downloaded weights); a 3x3 stem without max-pool below 64 px."""
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=num_classes)
    if _small_input(image_size):
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


@register_model()
def mobilenet_v3_small(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32
) -> nn.Module:
    """torchvision's MobileNetV3-Small (no downloaded weights); a stride-1 stem below 64 px."""
    from torchvision.models import mobilenet_v3_small as tv_mobilenet_v3_small

    model = tv_mobilenet_v3_small(weights=None, num_classes=num_classes)
    stem = model.features[0][0]
    if not isinstance(stem, nn.Conv2d):
        raise TypeError("unexpected mobilenet_v3_small layout: no stem convolution")
    stride = 1 if _small_input(image_size) else 2
    if in_channels != 3 or stride != stem.stride[0]:
        model.features[0][0] = nn.Conv2d(
            in_channels, stem.out_channels, kernel_size=3, stride=stride, padding=1, bias=False
        )
    return model
