"""Failures that are not the job's fault: a lost Redis, and device faults that need a new process.

An unrecoverable device error fails the job and asks the worker to shut down warmly with
:data:`EXIT_DEVICE_FAULT`, so that its supervisor starts a fresh process.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys

import redis
from celery.worker import state
from kombu.exceptions import OperationalError

from shared.errors import TorchfleetError

EXIT_DEVICE_FAULT = 75  # EX_TEMPFAIL: "replace me"; compose's restart policy starts a new one
FATAL_DEVICE_MARKERS = (
    "cuda error",
    "device-side assert",
    "illegal memory access",
    "unspecified launch failure",
    "cublas_status",
    "cudnn_status",
    "cudnn error",
    "nccl error",
    "ecc error",
    "cuda driver",
)

_exit_code: int | None = None


def is_fatal_device_error(error: BaseException) -> bool:
    """An accelerator error the process cannot recover from (not an out-of-memory)."""
    if isinstance(error, TorchfleetError):
        return False
    text = str(error).lower()
    if "out of memory" in text:
        return False
    if type(error).__name__ == "AcceleratorError":
        return True
    return isinstance(error, RuntimeError) and any(m in text for m in FATAL_DEVICE_MARKERS)


def is_connection_error(error: BaseException) -> bool:
    """Redis (broker, backend or registry) unreachable: the job is fine, the world is not."""
    seen: BaseException | None = error
    for _ in range(5):  # the error itself and the ones it was raised from
        if seen is None:
            return False
        if isinstance(seen, (redis.ConnectionError, redis.TimeoutError, OperationalError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def request_replacement(exit_code: int = EXIT_DEVICE_FAULT) -> None:
    """Ask the Celery worker for a warm shutdown that exits with ``exit_code``.

    Running jobs finish and are acknowledged (this one's failure included); then the
    process exits and its supervisor (compose ``restart: unless-stopped``) starts another.
    """
    global _exit_code
    _exit_code = exit_code
    state.should_stop = exit_code


def exit_with_requested_code() -> None:
    """Worker shutdown: `torchfleet worker` drops Celery's exit code, so a replacement asked
    for by :func:`request_replacement` exits with its code once everything else has run."""
    if _exit_code is not None:
        atexit.register(_exit_now, _exit_code)


def _exit_now(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
