"""Test-only architecture for fault injection, loaded by chaos workers through settings.plugins.

A worker imports this module only when ``TORCHFLEET_PLUGINS`` names it, so none of this is
reachable in production. ``chaos_net`` is a tiny linear classifier whose forward misbehaves
on request, chosen by the first value of an input (inference: any input of the batch, as
a poisoned input breaks the whole batch it is merged into) or by builder arguments
(training and compression):

* ``MODE_KILL`` (1.0): SIGKILL its own process, like the kernel's OOM killer (poison job);
* ``MODE_OOM`` (2.0): raise CUDA out-of-memory while the batch holds more than one input;
* ``MODE_FATAL`` (3.0): raise an unrecoverable CUDA error;
* ``MODE_HOLD`` (4.0): write ``holding-<pid>-<n>`` into ``$TF_CHAOS_DIR`` and wait there
  until a ``release`` file appears, so that a test can kill the worker mid-job for sure;
* ``MODE_BLOCK`` (5.0): open and read the named pipe ``$TF_CHAOS_DIR/block``, a call that
  blocks in the kernel, where no stop sent to a Python thread lands, until the test opens
  the pipe's other end and closes it (a job stuck in I/O).

``hold_train_after`` / ``hold_eval_after`` hold the same way after that many train-mode or
eval-mode forwards (a training job mid-epoch, a compression job mid-evaluation).
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workers.zoo.models import register_model

MODE_KILL = 1.0
MODE_OOM = 2.0
MODE_FATAL = 3.0
MODE_HOLD = 4.0
MODE_BLOCK = 5.0
HOLD_LIMIT_S = 120.0
_holds = itertools.count()


def chaos_dir() -> Path:
    return Path(os.environ.get("TF_CHAOS_DIR", "/tmp"))


def hold() -> None:
    """Announce the hold, then wait for the test's release file (bounded, never forever)."""
    folder = chaos_dir()
    (folder / f"holding-{os.getpid()}-{next(_holds)}").touch()
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not (folder / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # test hook: polls the release file the test writes


def block() -> None:
    """Block in the kernel until the test opens ``block``'s write end and closes it."""
    reader = os.open(chaos_dir() / "block", os.O_RDONLY)  # waits for a writer to open it
    try:
        os.read(reader, 1)  # waits for a byte or for the writer to close
    finally:
        os.close(reader)


class ChaosNet(nn.Module):
    def __init__(
        self, num_classes: int, features: int, hold_train_after: int, hold_eval_after: int
    ) -> None:
        super().__init__()
        self.fc = nn.Linear(features, num_classes)
        self.hold_train_after = hold_train_after
        self.hold_eval_after = hold_eval_after
        self.calls = {True: 0, False: 0}

    def forward(self, x: Any) -> Any:
        self.calls[self.training] += 1
        limit = self.hold_train_after if self.training else self.hold_eval_after
        if limit and self.calls[self.training] > limit:
            hold()
        modes = set(x.reshape(len(x), -1)[:, 0].tolist()) if x.numel() else set()
        if MODE_KILL in modes:
            os.kill(os.getpid(), signal.SIGKILL)
        if MODE_OOM in modes and len(x) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by chaos_net)")
        if MODE_FATAL in modes:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        if MODE_HOLD in modes:
            hold()
        if MODE_BLOCK in modes:
            block()
        return self.fc(x.flatten(1))


@register_model()
def chaos_net(
    num_classes: int = 2,
    in_channels: int = 1,
    image_size: int = 4,
    hold_train_after: int = 0,
    hold_eval_after: int = 0,
) -> nn.Module:
    """A linear classifier over ``in_channels * image_size**2`` features, with fault modes."""
    features = in_channels * image_size * image_size
    return ChaosNet(num_classes, features, hold_train_after, hold_eval_after)
