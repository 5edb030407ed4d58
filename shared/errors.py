"""One error root with two subtrees.

``InputError`` and its children mean the job itself is wrong: they fail fast and are never
retried. ``TransientError`` and its children mean the world was briefly unkind (a broker
hiccup, an out-of-memory): they are retried with backoff.
"""

from __future__ import annotations


class TorchfleetError(Exception):
    """Root of every error torchfleet raises on purpose."""

    code = "error"


class InputError(TorchfleetError):
    """The job is invalid; retrying it cannot help."""

    code = "invalid_input"


class InvalidJob(InputError):
    code = "invalid_job"


class ModelNotFound(InputError):
    code = "model_not_found"


class UnknownArchitecture(InputError):
    code = "unknown_architecture"


class UnknownDataset(InputError):
    code = "unknown_dataset"


class DatasetNotFound(InputError):
    code = "dataset_not_found"


class BadTensor(InputError):
    """An input tensor with the wrong shape, dtype, size or values."""

    code = "bad_tensor"


class IntegrityError(InputError):
    """An artifact whose bytes do not match the digest it was registered with."""

    code = "integrity_error"


class UnsafeArtifact(InputError):
    """An artifact that would need unpickling (code execution) to load."""

    code = "unsafe_artifact"


class TrainingDiverged(InputError):
    """The loss became NaN or infinite; the hyper-parameters need changing."""

    code = "training_diverged"


class CompressionError(InputError):
    """A compression step could not be applied to this model."""

    code = "compression_error"


class GateFailed(InputError):
    code = "gate_failed"


class ResultTooLarge(InputError):
    """A job's result is over ``max_result_bytes``: it fails instead of filling Redis."""

    code = "result_too_large"


class JobExpired(InputError):
    code = "expired"


class DeadLettered(InputError):
    """The job was delivered too often without finishing; it now waits in the dead letters."""

    code = "dead_lettered"


class RefusedMessage(InputError):
    """A message the worker would not decode (pickle, another content type, a broken body):
    its job never ran. Send it again through the client, which sends JSON."""

    code = "refused_message"


class DeviceFault(TorchfleetError):
    """An unrecoverable accelerator error: the job fails and the worker process is replaced."""

    code = "device_fault"


class TransientError(TorchfleetError):
    """A passing fault; the job is retried with backoff."""

    code = "transient"


class BrokerUnavailable(TransientError):
    code = "broker_unavailable"


class ResourceExhausted(TransientError):
    """Out of (GPU) memory, even after shrinking the batch."""

    code = "resource_exhausted"


class Overloaded(TransientError):
    """The online lane's backlog is past ``lane_max_backlog``: the request was refused, not
    queued. Retry later, add workers, or raise TORCHFLEET_LANE_MAX_BACKLOG."""

    code = "overloaded"


class RedisFull(TransientError):
    """Redis is at ``maxmemory`` (policy ``noeviction``) and refused a write: nothing was
    queued. Submit again once memory frees."""

    code = "redis_full"


class JobFailed(TorchfleetError):
    """Raised on the producer side when a job finished with an error result."""

    code = "job_failed"

    def __init__(self, job_id: str, error_code: str, message: str) -> None:
        super().__init__(f"job {job_id} failed ({error_code}): {message}")
        self.job_id = job_id
        self.error_code = error_code
        self.message = message


class JobTimeout(TorchfleetError):
    code = "timeout"


class JobCancelled(TorchfleetError):
    """Raised inside a running job whose cancel flag is set; the task ends as REVOKED.

    The registry raises it too: a registry or alias write of a cancelled job is refused in the
    same transaction that would have made it (cancel is a fence, not a hint).
    """

    code = "cancelled"


class StaleDelivery(TorchfleetError):
    """A newer delivery of the same job holds the fence: this (older) one may not write.

    Its worker was frozen or cut off past the visibility timeout while the job ran again
    elsewhere; the task ends without storing anything, leaving the live delivery's answer.
    """

    code = "stale_delivery"


class VariantExists(InvalidJob):
    """Another job already registered this variant name at this version."""

    code = "variant_exists"


class AliasMoved(InputError):
    """An alias moved between the moment a job compared against it and its own move."""

    code = "alias_moved"


class JobIdReused(InvalidJob):
    """A job id submitted again with a different payload."""

    code = "job_id_reused"


ERRORS_BY_CODE: dict[str, type[TorchfleetError]] = {
    cls.code: cls
    for cls in (
        InputError,
        InvalidJob,
        ModelNotFound,
        UnknownArchitecture,
        UnknownDataset,
        DatasetNotFound,
        BadTensor,
        IntegrityError,
        UnsafeArtifact,
        TrainingDiverged,
        CompressionError,
        GateFailed,
        JobExpired,
        DeadLettered,
        DeviceFault,
        TransientError,
        BrokerUnavailable,
        ResourceExhausted,
        JobCancelled,
        StaleDelivery,
        VariantExists,
        AliasMoved,
        JobIdReused,
        Overloaded,
    )
}


class PathNotAllowed(InputError):
    """A dataset path outside the worker's data roots (or leading out of them by a link)."""

    code = "path_not_allowed"


ERRORS_BY_CODE[PathNotAllowed.code] = PathNotAllowed


class TimeLimitExceeded(InputError):
    """A job ran past its hard time limit: it was stopped, and nothing more is registered.

    Never retried (the job would only run out of time again): give it a larger
    ``time_limit_s`` (up to the worker's maximum for its kind) or make it smaller.
    """

    code = "time_limit"


ERRORS_BY_CODE[TimeLimitExceeded.code] = TimeLimitExceeded
