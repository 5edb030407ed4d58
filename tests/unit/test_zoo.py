"""Every registered architecture builds for any class count, channel count and input size."""

from __future__ import annotations

import pytest
import torch

from shared.errors import InvalidJob, UnknownArchitecture
from shared.settings import get_settings
from workers.zoo.models import MODELS, create_model, list_models


def test_the_four_architectures_are_registered() -> None:
    assert {"cifar_cnn", "mlp", "resnet18", "mobilenet_v3_small"} <= set(list_models())


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize(("channels", "size"), [(1, 8), (3, 16)])
def test_every_model_maps_inputs_to_class_scores(name: str, channels: int, size: int) -> None:
    model = create_model(name, num_classes=5, in_channels=channels, image_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_models_take_a_large_input_with_their_imagenet_stem(name: str) -> None:
    model = create_model(name, num_classes=3, in_channels=1, image_size=64).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 3)


def test_resnet18_has_resnet18_size_and_a_small_input_stem() -> None:
    model = create_model("resnet18", num_classes=10, in_channels=3, image_size=32)
    parameters = sum(p.numel() for p in model.parameters())
    assert 11_000_000 < parameters < 11_300_000
    assert model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)


def test_an_image_size_the_seed_cnn_cannot_take_is_an_input_error() -> None:
    with pytest.raises(InvalidJob, match="divisible by 4"):
        create_model("cifar_cnn", num_classes=10, in_channels=3, image_size=10)


def test_an_unknown_architecture_names_the_known_ones() -> None:
    with pytest.raises(UnknownArchitecture, match="resnet18"):
        create_model("vgg99")


def test_a_model_of_billions_of_parameters_is_refused_before_it_is_built() -> None:
    # Each argument is within its bound (65,536), the whole is 4.5 billion parameters (18 GB
    # of float32): counted on the meta device, never allocated.
    with pytest.raises(InvalidJob, match="TORCHFLEET_MAX_MODEL_PARAMS") as caught:
        create_model("mlp", hidden=65_536, depth=2)
    assert "4,497,080,330 parameters" in str(caught.value)


def test_the_parameter_limit_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHFLEET_MAX_MODEL_PARAMS", "100000")
    get_settings.cache_clear()
    try:
        create_model("cifar_cnn")  # 60,362 parameters
        with pytest.raises(InvalidJob, match="limit of 100,000"):
            create_model("resnet18")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_a_builder_the_meta_device_cannot_run_is_counted_once_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def reads_values(**kwargs: int) -> torch.nn.Module:
        module = torch.nn.Linear(4, 4)
        module.weight.sum().item()  # a value: NotImplementedError on the meta device
        return module

    monkeypatch.setitem(MODELS._items, "reads_values", reads_values)
    assert sum(p.numel() for p in create_model("reads_values").parameters()) == 20
    monkeypatch.setenv("TORCHFLEET_MAX_MODEL_PARAMS", "10")
    get_settings.cache_clear()
    try:
        with pytest.raises(InvalidJob, match="20 parameters"):
            create_model("reads_values")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
