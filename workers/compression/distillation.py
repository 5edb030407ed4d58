"""Fine-tuning and knowledge distillation: small training loops over the train split.

:func:`distillation_loss` is the pure math (unit-tested against a hand computation);
the loops around it are deliberately plain (a full trainer lives in workers/train).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from shared.errors import CompressionError, TrainingDiverged
from shared.jobs import DistillStep, FinetuneStep
from workers.compression.methods import METHODS
from workers.compression.pruning import weight_tensors
from workers.compression.steps import (
    ModelState,
    Sample,
    StepEnv,
    first_inputs,
    float_copy,
    loader,
)
from workers.zoo.models import create_model

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------ pure math
def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """``alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(s, y)``, with ``p = softmax(z / T)``.

    ``F.kl_div`` takes the student's *log*-probabilities and the teacher's probabilities;
    ``batchmean`` makes it the mean KL per sample, and ``T^2`` keeps the soft-target
    gradients on the same scale as the hard-label ones whatever the temperature.
    """
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.softmax(teacher_logits.detach() / temperature, dim=-1),
        reduction="batchmean",
    )
    hard = F.cross_entropy(student_logits, labels)
    return alpha * temperature**2 * soft + (1 - alpha) * hard


# ------------------------------------------------------------------ loops
def train_epochs(
    module: nn.Module,
    data: Dataset[Sample],
    loss_of: LossFn,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
    after_step: Callable[[], None] | None = None,
) -> float:
    """Train for ``epochs`` epochs; returns the last epoch's mean loss."""
    mean = math.nan
    for epoch in range(epochs):
        module.train()
        total, count = 0.0, 0
        for images, labels in loader(data, batch_size, shuffle=True, seed=seed + epoch):
            images, labels = images.to(device), labels.to(device)
            loss = loss_of(module, images, labels)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"the loss became {loss.item()}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            total += loss.item() * len(labels)
            count += len(labels)
        mean = total / max(count, 1)
    module.eval()
    return mean


def zero_masks(module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, mask of its zeros) for every layer weight that holds zeros."""
    pairs = []
    for weight in weight_tensors(module):
        mask = weight == 0
        if mask.any():
            pairs.append((weight, mask))
    return pairs


def cross_entropy(module: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(module(images), labels)


# ------------------------------------------------------------------ step handlers
@METHODS.step(FinetuneStep, tag="ft")
def finetune_step(step: FinetuneStep, state: ModelState, env: StepEnv) -> ModelState:
    torch.manual_seed(step.seed)
    module = float_copy(state, step.method).to(env.device)
    masks = zero_masks(module) if step.keep_sparsity else []

    def keep_zeros() -> None:
        with torch.no_grad():
            for weight, mask in masks:
                weight.masked_fill_(mask, 0.0)

    optimizer = torch.optim.SGD(
        module.parameters(), lr=step.lr, momentum=step.momentum, weight_decay=step.weight_decay
    )
    loss = train_epochs(
        module,
        env.train,
        cross_entropy,
        optimizer,
        epochs=step.epochs,
        batch_size=step.batch_size,
        device=env.device,
        seed=step.seed,
        after_step=keep_zeros if masks else None,
    )
    note = f"fine-tuned {step.epochs} epoch(s), last train loss {loss:.4f}"
    return state.advance(step.method, module=module, add_notes=(note,))


def build_student(step: DistillStep, state: ModelState, num_classes: int) -> nn.Module:
    """The student, shaped for the teacher's inputs; class counts must match."""
    channels, size = state.manifest.input_shape[0], state.manifest.input_shape[-1]
    kwargs = {"num_classes": num_classes, "in_channels": channels, "image_size": size}
    asked = step.student_kwargs.get("num_classes", num_classes)
    if asked != num_classes:
        raise CompressionError(
            f"distill: the student has {asked} classes but the teacher has {num_classes}"
        )
    return create_model(step.student_arch, **{**kwargs, **step.student_kwargs})


def distill(
    teacher: nn.Module,
    student: nn.Module,
    data: Dataset[Sample],
    step: DistillStep,
    device: torch.device,
) -> float:
    """Train ``student`` in place against ``teacher``; returns the last epoch's mean loss."""
    teacher = teacher.to(device).eval()
    student = student.to(device)
    probe = first_inputs(data, 2).to(device)
    with torch.no_grad():
        t_out, s_out = teacher(probe), student(probe)
    if t_out.shape != s_out.shape:
        raise CompressionError(
            f"distill: teacher outputs {tuple(t_out.shape[1:])} per sample but the student "
            f"outputs {tuple(s_out.shape[1:])}; their class counts must match"
        )

    def loss_of(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(images)
        return distillation_loss(
            model(images), t_logits, labels, temperature=step.temperature, alpha=step.alpha
        )

    optimizer: torch.optim.Optimizer
    if step.optimizer == "adam":
        optimizer = torch.optim.Adam(student.parameters(), lr=step.lr)
    else:
        optimizer = torch.optim.SGD(student.parameters(), lr=step.lr, momentum=0.9)
    return train_epochs(
        student,
        data,
        loss_of,
        optimizer,
        epochs=step.epochs,
        batch_size=step.batch_size,
        device=device,
        seed=step.seed,
    )


@METHODS.step(DistillStep, tag="student")
def distill_step(step: DistillStep, state: ModelState, env: StepEnv) -> ModelState:
    teacher = float_copy(state, step.method)
    torch.manual_seed(step.seed)
    student = build_student(step, state, env.num_classes)
    loss = distill(teacher, student, env.train, step, env.device)
    channels, size = state.manifest.input_shape[0], state.manifest.input_shape[-1]
    kwargs = {
        "num_classes": env.num_classes,
        "in_channels": channels,
        "image_size": size,
        **step.student_kwargs,
    }
    manifest = state.manifest.model_copy(
        update={
            "arch": step.student_arch,
            "arch_kwargs": kwargs,
            "recipe": [],
            "lineage": {**state.manifest.lineage, "teacher_arch": state.manifest.arch},
        }
    )
    note = (
        f"distilled into {step.student_arch} (T={step.temperature}, alpha={step.alpha}, "
        f"{step.epochs} epochs, last loss {loss:.4f})"
    )
    return state.advance(step.method, module=student.eval(), manifest=manifest, add_notes=(note,))
