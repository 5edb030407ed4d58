"""Data loaders for a training run, and augmentation applied to batches on the fly."""

from __future__ import annotations

import multiprocessing
import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from shared.errors import InvalidJob
from shared.jobs import AugmentSpec
from workers.zoo.datasets import DatasetBundle

MAX_LOADER_WORKERS = 4
Loader = DataLoader[tuple[torch.Tensor, torch.Tensor]]


def loader_workers(bundle: DatasetBundle) -> int:
    """Worker processes for decoding: none for tensors in memory, or inside a daemon process."""
    if bundle.in_memory or multiprocessing.current_process().daemon:
        return 0
    return min(MAX_LOADER_WORKERS, max(0, (os.cpu_count() or 1) - 1))


def check_batch_size(batch_size: int, bundle: DatasetBundle) -> None:
    """Refuse a batch larger than the training set: not one full step would fit."""
    n_train = len(bundle.train)  # type: ignore[arg-type]
    if batch_size > n_train:
        raise InvalidJob(
            f"batch_size {batch_size} is larger than the training set ({n_train} samples); "
            "use a smaller batch or more data"
        )


def build_loaders(
    bundle: DatasetBundle, batch_size: int, device: torch.device, generator: torch.Generator
) -> tuple[Loader, Loader]:
    """Shuffled training batches (order drawn from ``generator``) and in-order validation ones.

    A final training batch of one sample is dropped: batch-norm cannot train on it.

    Loader processes are started afresh every epoch, never kept: a loader draws its
    processes' seed from ``generator`` whenever it starts them, so a kept set would draw once
    at the run's first epoch and shift every later shuffle, and a run resumed at epoch k
    would take that draw at epoch k instead of 1 (not bit-identical). Started per epoch, the
    draws match those of in-process loading, so the order does not depend on the number of
    processes either.
    """
    workers = loader_workers(bundle)
    pin = device.type == "cuda"
    n_train = len(bundle.train)  # type: ignore[arg-type]
    train = DataLoader(
        bundle.train,
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        drop_last=n_train % batch_size == 1,
        num_workers=workers,
        pin_memory=pin,
    )
    val = DataLoader(
        bundle.val,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=pin,
    )
    return train, val


def random_crop(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad each image by ``padding`` and crop it back at a random offset (per image)."""
    if padding == 0:
        return images
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (n, 1)).to(images.device)
    left = torch.randint(0, 2 * padding + 1, (n, 1)).to(images.device)
    rows = top + torch.arange(h, device=images.device)  # (n, h)
    cols = left + torch.arange(w, device=images.device)  # (n, w)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chans = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def random_hflip(images: torch.Tensor) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = (torch.rand(images.shape[0]) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def augment(images: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    """The augmentations the spec turns on, for a training batch (random draws on the CPU)."""
    if spec.random_crop:
        images = random_crop(images, spec.crop_padding)
    if spec.hflip:
        images = random_hflip(images)
    return images
