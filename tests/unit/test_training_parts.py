"""The pure pieces of a training run, one at a time: no broker, no store."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from shared.errors import InvalidJob
from shared.jobs import AugmentSpec, LossSpec, OptimizerSpec, ScheduleSpec
from shared.manifest import Preprocessing
from workers.train.checkpoint import optimizer_from_flat, optimizer_to_flat
from workers.train.data import (
    augment,
    build_loaders,
    check_batch_size,
    loader_workers,
    random_crop,
    random_hflip,
)
from workers.train.init import init_weights
from workers.train.loop import EarlyStopping, ProgressReporter, amp_dtype_for, make_scaler
from workers.train.losses import build_loss, l2_penalty, one_hot_targets
from workers.train.optim import build_optimizer, build_scheduler, lr_factor
from workers.zoo.datasets import DatasetBundle
from workers.zoo.models import create_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ schedules
def factors(spec: ScheduleSpec, steps_per_epoch: int = 2, epochs: int = 10) -> list[float]:
    return [lr_factor(s, spec, steps_per_epoch, epochs) for s in range(steps_per_epoch * epochs)]


def test_warmup_rises_linearly_to_the_base_rate() -> None:
    f = factors(ScheduleSpec(name="none", warmup_epochs=2))
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert set(f[4:]) == {1.0}


def test_step_schedule_multiplies_by_gamma_every_step_size_epochs() -> None:
    f = factors(ScheduleSpec(name="step", step_size=3, gamma=0.5))
    assert f[0:6] == [1.0] * 6
    assert f[6:12] == [0.5] * 6
    assert f[18:20] == [0.125] * 2


def test_cosine_falls_from_one_towards_zero_after_warmup() -> None:
    f = factors(ScheduleSpec(name="cosine", warmup_epochs=1))
    assert f[:2] == pytest.approx([0.5, 1.0])
    after = f[2:]
    assert after[0] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(after))
    assert after[-1] < 0.01


def test_onecycle_rises_then_anneals_far_below_its_start() -> None:
    f = factors(ScheduleSpec(name="onecycle"), steps_per_epoch=10)
    peak = f.index(max(f))
    assert f[0] == pytest.approx(1 / 25)
    assert max(f) == pytest.approx(1.0)
    assert 25 <= peak <= 35  # 30% of 100 steps
    assert f[-1] < 1e-3


def test_the_scheduler_applies_the_factor_to_the_optimizer() -> None:
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, OptimizerSpec(name="sgd", lr=0.1))
    scheduler = build_scheduler(optimizer, ScheduleSpec(name="step", step_size=1, gamma=0.1), 2, 3)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    json.dumps(scheduler.state_dict())  # checkpoint meta is JSON


# ------------------------------------------------------------------ optimizers
def test_sgd_carries_momentum_nesterov_and_weight_decay() -> None:
    spec = OptimizerSpec(name="sgd", lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-4)
    group = build_optimizer(nn.Linear(2, 2), spec).param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.05, 0.8, True)
    assert group["weight_decay"] == 1e-4


@pytest.mark.parametrize(
    ("name", "cls"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_adam_family(name: str, cls: type) -> None:
    optimizer = build_optimizer(nn.Linear(2, 2), OptimizerSpec(name=name, weight_decay=0.01))  # type: ignore[arg-type]
    assert type(optimizer) is cls
    assert optimizer.param_groups[0]["weight_decay"] == 0.01


def test_nesterov_without_sgd_momentum_is_refused_by_the_spec() -> None:
    with pytest.raises(ValueError, match="nesterov"):
        OptimizerSpec(name="adam", nesterov=True)


@pytest.mark.parametrize("lr", [0.0, -0.1])
def test_a_learning_rate_at_or_below_zero_is_refused_by_the_spec(lr: float) -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        OptimizerSpec(lr=lr)


def test_adam_state_survives_the_flat_round_trip() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = build_optimizer(model, OptimizerSpec(name="adam", lr=0.01))
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
    tensors, meta = optimizer_to_flat(optimizer)
    meta = json.loads(json.dumps(meta))  # what the checkpoint stores
    fresh = build_optimizer(model, OptimizerSpec(name="adam", lr=0.01))
    optimizer_from_flat(fresh, tensors, meta)
    before, after = optimizer.state_dict(), fresh.state_dict()
    for index, state in before["state"].items():
        for key, value in state.items():
            assert torch.equal(after["state"][index][key], value)
    assert after["param_groups"][0]["lr"] == 0.01


# ------------------------------------------------------------------ losses
def test_cross_entropy_label_smoothing_raises_the_loss_of_a_confident_hit() -> None:
    logits, target = torch.tensor([[10.0, 0.0, 0.0]]), torch.tensor([0])
    plain = build_loss(LossSpec(name="cross_entropy"), 3)(logits, target)
    smoothed = build_loss(LossSpec(name="cross_entropy", label_smoothing=0.1), 3)(logits, target)
    assert smoothed > plain


def test_bce_and_mse_compare_against_one_hot_targets() -> None:
    logits, target = torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([2])
    hot = torch.tensor([[0.0, 0.0, 1.0]])
    bce = build_loss(LossSpec(name="bce"), 3)(logits, target)
    mse = build_loss(LossSpec(name="mse"), 3)(logits, target)
    assert bce == pytest.approx(nn.functional.binary_cross_entropy_with_logits(logits, hot).item())
    assert mse == pytest.approx(((logits - hot) ** 2).mean().item())


def test_one_hot_smoothing_keeps_rows_summing_to_one() -> None:
    targets = one_hot_targets(torch.tensor([0, 3]), 4, 0.2)
    assert targets.sum(1).tolist() == pytest.approx([1.0, 1.0])
    assert targets[0].tolist() == pytest.approx([0.85, 0.05, 0.05, 0.05])


def test_l2_penalty_is_lambda_times_the_sum_of_squared_weights() -> None:
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.fill_(3.0)
    assert l2_penalty(model, 0.1).item() == pytest.approx(0.1 * (1 + 4 + 9))


# ------------------------------------------------------------------ init
def test_source_init_follows_the_source() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_channels=3, image_size=32)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(0.3)
    init_weights(model, "source")
    fc = model.fc
    assert fc.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert fc.bias.abs().sum() == 0
    bn = model.bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    conv = model.layer1[0].conv1  # 64 -> 64, 3x3: fan_out = 576
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.1)


def test_default_init_leaves_the_weights_alone() -> None:
    model = nn.Linear(4, 4)
    before = model.weight.clone()
    init_weights(model, "default")
    assert torch.equal(model.weight, before)


def test_an_unknown_init_is_an_input_error() -> None:
    with pytest.raises(InvalidJob, match="weight init"):
        init_weights(nn.Linear(1, 1), "xavier")


# ------------------------------------------------------------------ augmentation
def test_random_crop_keeps_the_shape_and_takes_a_shifted_window() -> None:
    torch.manual_seed(0)
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    out = random_crop(images, 2)
    assert out.shape == images.shape
    for original, cropped in zip(images, out, strict=True):
        padded = nn.functional.pad(original, (2, 2, 2, 2))
        windows = [padded[:, y : y + 6, x : x + 6] for y in range(5) for x in range(5)]
        assert any(torch.equal(cropped, w) for w in windows)
    assert torch.equal(random_crop(images, 0), images)


def test_hflip_mirrors_some_images_and_keeps_the_others() -> None:
    torch.manual_seed(0)
    images = torch.randn(64, 3, 4, 4)
    out = random_hflip(images)
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54


def test_augment_off_is_the_identity() -> None:
    images = torch.randn(4, 3, 8, 8)
    assert augment(images, AugmentSpec()) is images


# ------------------------------------------------------------------ loaders
def bundle(n_train: int, in_memory: bool = True) -> DatasetBundle:
    data = TensorDataset(torch.randn(n_train, 1, 4, 4), torch.zeros(n_train, dtype=torch.long))
    return DatasetBundle(
        train=data,
        val=data,
        num_classes=2,
        input_shape=(1, 4, 4),
        preprocessing=Preprocessing(),
        in_memory=in_memory,
    )


def test_in_memory_data_loads_in_process_without_pinning_on_the_cpu() -> None:
    train, val = build_loaders(bundle(10), 4, torch.device("cpu"), torch.Generator())
    assert train.num_workers == 0 and not train.pin_memory and not val.pin_memory
    assert len(train) == 3 and not train.drop_last


def test_a_final_batch_of_one_is_dropped() -> None:
    train, _ = build_loaders(bundle(9), 4, torch.device("cpu"), torch.Generator())
    assert train.drop_last and len(train) == 2


def test_file_data_gets_worker_processes_when_cores_allow() -> None:
    workers = loader_workers(bundle(4, in_memory=False))
    assert 0 <= workers <= 4
    assert loader_workers(bundle(4)) == 0


def test_a_batch_larger_than_the_training_set_is_refused() -> None:
    check_batch_size(10, bundle(10))
    with pytest.raises(InvalidJob, match="larger than the training set"):
        check_batch_size(11, bundle(10))


# ------------------------------------------------------------------ loop helpers
def test_early_stopping_waits_patience_epochs_without_improvement() -> None:
    stopper = EarlyStopping(patience=2, min_delta=0.01)
    assert [stopper.update(v) for v in [1.0, 0.9, 0.895, 0.89, 0.5, 0.6, 0.7]] == [
        False,
        False,
        False,
        True,
        False,
        False,
        True,
    ]


def test_progress_is_throttled_but_every_epoch_end_is_sent() -> None:
    now = [0.0]
    sent: list[dict[str, object]] = []
    reporter = ProgressReporter(sent.append, epochs=2, steps=10, interval=0.5, clock=lambda: now[0])
    for step in range(1, 11):
        now[0] += 0.1
        reporter.step(1, step, 1.0, 0.5)
    assert [m["step"] for m in sent] == [1, 6]
    assert sent[-1]["eta_s"] == pytest.approx(0.6 / 6 * 14, abs=0.01)
    assert set(sent[0]) == {
        "stage",
        "epoch",
        "epochs",
        "step",
        "steps",
        "loss",
        "accuracy",
        "eta_s",
    }


def test_mixed_precision_only_on_cuda() -> None:
    assert amp_dtype_for(torch.device("cpu"), enabled=True) is None
    assert amp_dtype_for(torch.device("cuda"), enabled=False) is None
    assert not make_scaler(None).is_enabled()
