"""Paired accuracy (issue 13 item 16): a compressed model is compared with its float source
image by image on the same inputs, so a one-image difference shows as what it is."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from workers.compression.evaluation import Candidate, accuracy, flips, predictions


def candidate_from(answers: torch.Tensor) -> Candidate:
    """A 'model' whose answer for input ``i`` (the input is its own index) is ``answers[i]``."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(answers[batch.long().flatten()], 3).float()

    return Candidate(run, torch.device("cpu"))


def test_predictions_keep_the_order_of_the_data_across_batches() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    data = TensorDataset(torch.arange(7).float().unsqueeze(1), labels)
    answers = torch.tensor([0, 1, 1, 0, 2, 2, 0])

    predicted, seen = predictions(candidate_from(answers), data, batch_size=3)

    assert torch.equal(predicted, answers) and torch.equal(seen, labels)
    assert accuracy(candidate_from(answers), data, batch_size=3) == 100.0 * 5 / 7


def test_flips_count_images_fixed_and_broken_not_just_the_net_change() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    source = torch.tensor([0, 1, 0, 0, 2, 2])  # wrong on 2 and 4
    other = torch.tensor([0, 0, 2, 0, 1, 2])  # fixes 2 and 4, breaks 1

    change = flips(source, other, labels)

    assert (change.fixed, change.broken, change.total, change.net) == (2, 1, 6, 1)
    assert flips(source, source, labels).net == 0
