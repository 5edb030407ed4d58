"""The wire contract: task names, queue names and Redis key prefixes, all in one place."""

from __future__ import annotations

from typing import Final

APP_NAME: Final = "torchfleet"

TASK_TRAIN: Final = "torchfleet.train"
TASK_COMPRESS: Final = "torchfleet.compress"
TASK_INFER: Final = "torchfleet.infer"
TASK_NOOP: Final = "torchfleet.noop"
TASK_NAIVE_INFER: Final = "torchfleet.naive_infer"
TASK_PIPELINE: Final = "torchfleet.pipeline"
TASK_PIPELINE_TRAIN: Final = "torchfleet.pipeline.train"
TASK_PIPELINE_COMPRESS: Final = "torchfleet.pipeline.compress"
TASK_PIPELINE_GATE: Final = "torchfleet.pipeline.gate"
TASK_PIPELINE_PROMOTE: Final = "torchfleet.pipeline.promote"
TASK_PIPELINE_WARM: Final = "torchfleet.pipeline.warm"
TASK_AGGREGATE: Final = "torchfleet.aggregate"
CONTROL_WARM: Final = "torchfleet_warm"  # broadcast control command: preload a digest

QUEUE_TRAIN: Final = "train"
QUEUE_COMPRESS: Final = "compress"
QUEUE_INFER: Final = "infer"
ALL_QUEUES: Final = (QUEUE_TRAIN, QUEUE_COMPRESS, QUEUE_INFER)
# The bench's own tasks (a no-op, the naive inference task): only workers started with
# `torchfleet worker --bench` consume it, so production traffic never meets them.
QUEUE_BENCH: Final = "bench"

TASK_QUEUES: Final = {
    TASK_TRAIN: QUEUE_TRAIN,
    TASK_COMPRESS: QUEUE_COMPRESS,
    TASK_INFER: QUEUE_INFER,
    TASK_NOOP: QUEUE_BENCH,
    TASK_NAIVE_INFER: QUEUE_BENCH,
    TASK_PIPELINE: QUEUE_COMPRESS,
    TASK_PIPELINE_TRAIN: QUEUE_TRAIN,
    TASK_PIPELINE_COMPRESS: QUEUE_COMPRESS,
    TASK_PIPELINE_GATE: QUEUE_COMPRESS,
    TASK_PIPELINE_PROMOTE: QUEUE_COMPRESS,
    TASK_PIPELINE_WARM: QUEUE_COMPRESS,
    TASK_AGGREGATE: QUEUE_INFER,
}

KEY_PREFIX: Final = "torchfleet:"
KEY_MODEL: Final = KEY_PREFIX + "model:"  # model:{name} -> hash of versions and aliases
KEY_MODELS: Final = KEY_PREFIX + "models"  # set of model names
KEY_STATS: Final = KEY_PREFIX + "stats"  # stream: one record per finished job
KEY_WORKER: Final = KEY_PREFIX + "worker:"  # worker:{hostname} -> heartbeat record
KEY_GPU_LEASE: Final = KEY_PREFIX + "gpu-lease:"  # gpu-lease:{uuid} -> worker hostname
KEY_DEADLETTER: Final = KEY_PREFIX + "deadletter"
KEY_DEADLETTER_BYTES: Final = KEY_PREFIX + "deadletter-bytes"  # bytes the dead letters hold
KEY_DELIVERIES: Final = KEY_PREFIX + "deliveries:"  # deliveries:{job_id} -> count
# Keys Celery and kombu own (their defaults), read by the fleet's reliability code.
RESULT_PREFIX: Final = "celery-task-meta-"  # celery-task-meta-{id} -> JSON result record
KOMBU_UNACKED: Final = "unacked"  # hash: delivery tag -> [message, exchange, routing key]
KOMBU_UNACKED_INDEX: Final = "unacked_index"  # sorted set: delivery tag -> delivered at


def model_key(name: str) -> str:
    return f"{KEY_MODEL}{name}"


def worker_key(name: str) -> str:
    """A worker's heartbeat record."""
    return f"{KEY_WORKER}{name}"


WORKER_KEYS: Final = f"{KEY_WORKER}*"  # the SCAN pattern of every heartbeat record
# worker-standby:{hostname} -> the heartbeat record as it reads while Redis is full, renamed
# over the record when Redis refuses to write it (RENAME is allowed at maxmemory).
KEY_WORKER_STANDBY: Final = KEY_PREFIX + "worker-standby:"
KEY_MEMORY_PROBE: Final = KEY_PREFIX + "memory-probe"  # a paused worker's test write


def worker_standby_key(name: str) -> str:
    """A worker's heartbeat record as it reads while Redis is full."""
    return f"{KEY_WORKER_STANDBY}{name}"


def lease_key(gpu_uuid: str) -> str:
    """The lease a worker holds on one GPU."""
    return f"{KEY_GPU_LEASE}{gpu_uuid}"


def deliveries_key(job_id: str) -> str:
    """The hash counting a job's deliveries (``delivered``, ``executed``)."""
    return f"{KEY_DELIVERIES}{job_id}"


def result_key(job_id: str) -> str:
    """Where Celery's Redis backend keeps a job's result record."""
    return f"{RESULT_PREFIX}{job_id}"


DEVICE_KINDS: Final = ("cpu", "cuda")
# Redis transport priority lanes. kombu pops the lowest step first, so a job's priority
# (0 normal .. 9 most urgent) is sent as 9 - priority: 7-9 -> lane 0, 0 -> lane 9.
PRIORITY_STEPS: Final = (0, 3, 6, 9)
PRIORITY_SEP: Final = "\x06\x16"  # kombu's default separator: queue + SEP + step
MAX_PRIORITY: Final = 9

KEY_JOB: Final = KEY_PREFIX + "job:"  # job:{id} -> kind, set at submit (tells unknown ids)
KEY_CANCEL: Final = KEY_PREFIX + "cancel:"  # cancel:{id} -> flag checked between epochs
KEY_GROUP: Final = KEY_PREFIX + "group:"  # group:{id} -> JSON member ids
KEY_GROUP_SUMMARY: Final = KEY_PREFIX + "group-summary:"  # group-summary:{id} -> JSON
KEY_PIPELINE: Final = KEY_PREFIX + "pipeline:"  # pipeline:{id} -> JSON stage report
KEY_INPUT: Final = KEY_PREFIX + "input:"  # input:{id} -> raw tensor bytes of a large infer job


def device_queue(queue: str, device: str) -> str:
    """The queue only workers on ``device`` (cpu or cuda) consume: ``infer.cuda``."""
    return f"{queue}.{device}"


def every_queue() -> list[str]:
    """Every queue of the fleet: the shared ones, then each device kind's own."""
    return [*ALL_QUEUES, *(device_queue(q, d) for d in DEVICE_KINDS for q in ALL_QUEUES)]


def queues_for(device: str, queues: list[str] | tuple[str, ...]) -> list[str]:
    """Every queue a worker on ``device`` consumes: the shared ones, then its device's own.

    ``device`` is a torch device string (``cpu``, ``cuda``, ``cuda:1``); ``auto`` adds none.
    """
    kind = device.split(":", 1)[0]
    own = [device_queue(q, kind) for q in queues] if kind in DEVICE_KINDS else []
    return [*queues, *own]


def transport_priority(priority: int) -> int:
    """The Redis transport priority for a job priority (higher job priority = popped first)."""
    return MAX_PRIORITY - max(0, min(MAX_PRIORITY, priority))


def queue_keys(queue: str) -> list[str]:
    """The Redis lists holding one queue's messages, one per priority lane."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def input_key(job_id: str) -> str:
    """Where a large inference job's tensor bytes wait beside its message."""
    return f"{KEY_INPUT}{job_id}"


def group_summary_key(group_id: str) -> str:
    return f"{KEY_GROUP_SUMMARY}{group_id}"


def pipeline_key(job_id: str) -> str:
    return f"{KEY_PIPELINE}{job_id}"


def job_key(job_id: str) -> str:
    return f"{KEY_JOB}{job_id}"


def cancel_key(job_id: str) -> str:
    return f"{KEY_CANCEL}{job_id}"


def group_key(group_id: str) -> str:
    return f"{KEY_GROUP}{group_id}"


# ------------------------------------------------------------------ fencing and job records
KEY_FENCE: Final = KEY_PREFIX + "fence:"  # fence:{id} -> token of the job's newest delivery
KEY_JOB_DIGEST: Final = KEY_PREFIX + "job-digest:"  # job-digest:{id} -> sha256 of its payload


def fence_key(job_id: str) -> str:
    return f"{KEY_FENCE}{job_id}"


def job_digest_key(job_id: str) -> str:
    return f"{KEY_JOB_DIGEST}{job_id}"


# ---------------------------------------------------------------- online lane (issue 12)
# The keys of one lane share the hash tag ``{lane.<device kind>}`` so a Redis Cluster keeps
# a lane's streams, consumer group and heartbeats on one node; reply streams are tagged by
# their client instead, spreading the replies of many clients over the nodes.
TASK_LANE: Final = "torchfleet.lane"  # the task name a lane request's dead letter carries
CONTROL_LANE: Final = "torchfleet_lane"  # broadcast control command: pause, resume, status
LANE_GROUP: Final = "workers"  # the consumer group every worker of a device kind joins
KEY_LANE_REPLY: Final = KEY_PREFIX + "lane-reply:"  # lane-reply:{client} -> stream of replies
LANE_HIGH_PRIORITY: Final = 7  # a request of this priority or more takes the high stream


def lane_tag(device: str) -> str:
    """The hash tag of a device kind's lane: ``{lane.cpu}``."""
    return f"{{lane.{device}}}"


def lane_stream(device: str, *, high: bool = False) -> str:
    """The request stream of a device kind (``high``: the one read first)."""
    return f"{KEY_PREFIX}{lane_tag(device)}:{'requests-high' if high else 'requests'}"


def lane_streams(device: str) -> tuple[str, str]:
    """A device kind's request streams in reading order: high priority first."""
    return lane_stream(device, high=True), lane_stream(device)


def lane_alive_key(device: str, consumer: str) -> str:
    """A lane consumer's heartbeat (expires when the consumer stops beating)."""
    return f"{KEY_PREFIX}{lane_tag(device)}:alive:{consumer}"


def lane_reply_key(client_id: str) -> str:
    """The list a client's replies are pushed to."""
    return f"{KEY_LANE_REPLY}{{{client_id}}}"
