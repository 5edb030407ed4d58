"""The wire contract: task names, queue names and Redis key prefixes, all in one place."""

from __future__ import annotations

from typing import Final

APP_NAME: Final = "torchfleet"

TASK_TRAIN: Final = "torchfleet.train"
TASK_COMPRESS: Final = "torchfleet.compress"
TASK_INFER: Final = "torchfleet.infer"
TASK_NOOP: Final = "torchfleet.noop"
TASK_NAIVE_INFER: Final = "torchfleet.naive_infer"

QUEUE_TRAIN: Final = "train"
QUEUE_COMPRESS: Final = "compress"
QUEUE_INFER: Final = "infer"
ALL_QUEUES: Final = (QUEUE_TRAIN, QUEUE_COMPRESS, QUEUE_INFER)

TASK_QUEUES: Final = {
    TASK_TRAIN: QUEUE_TRAIN,
    TASK_COMPRESS: QUEUE_COMPRESS,
    TASK_INFER: QUEUE_INFER,
    TASK_NOOP: QUEUE_INFER,
    TASK_NAIVE_INFER: QUEUE_INFER,
}

KEY_PREFIX: Final = "torchfleet:"
KEY_MODEL: Final = KEY_PREFIX + "model:"  # model:{name} -> hash of versions and aliases
KEY_MODELS: Final = KEY_PREFIX + "models"  # set of model names
KEY_STATS: Final = KEY_PREFIX + "stats"  # stream: one record per finished job
KEY_WORKER: Final = KEY_PREFIX + "worker:"  # worker:{hostname} -> heartbeat record
KEY_GPU_LEASE: Final = KEY_PREFIX + "gpu-lease:"  # gpu-lease:{uuid} -> worker hostname
KEY_DEADLETTER: Final = KEY_PREFIX + "deadletter"
KEY_DELIVERIES: Final = KEY_PREFIX + "deliveries:"  # deliveries:{job_id} -> count


def model_key(name: str) -> str:
    return f"{KEY_MODEL}{name}"
