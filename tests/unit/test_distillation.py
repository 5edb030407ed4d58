"""The distillation loss against a hand computation, and its properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from workers.compression.distillation import distillation_loss


def softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def by_hand(
    student: list[list[float]],
    teacher: list[list[float]],
    labels: list[int],
    t: float,
    alpha: float,
) -> float:
    """alpha * T^2 * mean_i KL(p_t,i || p_s,i) + (1 - alpha) * mean_i -log softmax(s_i)[y_i]."""
    kl = ce = 0.0
    for s_row, t_row, y in zip(student, teacher, labels, strict=True):
        p_s, p_t = softmax(s_row, t), softmax(t_row, t)
        kl += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s, strict=True))
        ce += -math.log(softmax(s_row, 1.0)[y])
    n = len(labels)
    return alpha * t * t * kl / n + (1 - alpha) * ce / n


STUDENT = [[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]]
TEACHER = [[3.0, 1.0, -2.0], [-1.0, 0.0, 2.5]]
LABELS = [0, 2]


@pytest.mark.parametrize(("t", "alpha"), [(1.0, 0.5), (4.0, 0.7), (2.5, 1.0), (3.0, 0.0)])
def test_matches_the_hand_computation(t: float, alpha: float) -> None:
    loss = distillation_loss(
        torch.tensor(STUDENT),
        torch.tensor(TEACHER),
        torch.tensor(LABELS),
        temperature=t,
        alpha=alpha,
    )
    assert loss.item() == pytest.approx(by_hand(STUDENT, TEACHER, LABELS, t, alpha), rel=1e-5)


def test_known_value_for_two_classes() -> None:
    # s = [0, 0] -> p_s = [1/2, 1/2]; t = [ln 3, 0] at T=1 -> p_t = [3/4, 1/4].
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308...; CE(s, 0) = ln 2.
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.5 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5)) + 0.5 * math.log(2.0)
    loss = distillation_loss(s, t, torch.tensor([0]), temperature=1.0, alpha=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_alpha_zero_is_plain_cross_entropy() -> None:
    s, t, y = torch.randn(5, 4), torch.randn(5, 4), torch.randint(0, 4, (5,))
    loss = distillation_loss(s, t, y, temperature=3.0, alpha=0.0)
    assert loss.item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)


def test_soft_term_vanishes_when_student_equals_teacher() -> None:
    logits = torch.randn(6, 10)
    loss = distillation_loss(
        logits, logits, torch.zeros(6, dtype=torch.long), temperature=5.0, alpha=1.0
    )
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_gradient_flows_to_the_student_only() -> None:
    s = torch.randn(3, 5, requires_grad=True)
    t = torch.randn(3, 5, requires_grad=True)
    distillation_loss(s, t, torch.tensor([0, 1, 2]), temperature=2.0, alpha=0.9).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
