"""The one settings class. Every knob is an environment variable with the TORCHFLEET_ prefix."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlparse

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_ARTIFACTS = str(Path.home() / ".cache" / "torchfleet" / "artifacts")
DEFAULT_DATA_ROOT = str(Path.home() / ".cache" / "torchfleet" / "data")
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
# A Redis reachable from other hosts answers AUTH attempts as fast as it is asked: a password
# shorter than this falls to guessing (`openssl rand -hex 32` gives 64 characters).
MIN_REMOTE_PASSWORD_CHARS = 16
# Short is safe: the visibility keeper renews a live worker's jobs (workers/transport.py), so
# this is how long a dead worker's jobs wait before another worker takes them.
DEFAULT_VISIBILITY_TIMEOUT_S = 30


class Settings(BaseSettings):
    """Fleet configuration; read once per process from the environment (or a .env file)."""

    model_config = SettingsConfigDict(env_prefix="TORCHFLEET_", env_file=".env", extra="ignore")

    redis_url: str = Field(
        default=DEFAULT_REDIS_URL,
        description="Broker, result backend, registry and stats. redis:// or rediss:// (TLS).",
    )
    redis_username: str | None = Field(default=None, description="ACL user, if not in the URL.")
    redis_password: str | None = Field(default=None, description="Password, if not in the URL.")
    redis_tls_ca: str | None = Field(default=None, description="CA bundle for rediss:// URLs.")
    allow_insecure_redis: bool = Field(
        default=False,
        description="Let a worker use a non-loopback Redis with no password.",
    )
    artifacts: str = Field(
        default=DEFAULT_ARTIFACTS,
        description="fsspec URL of the artifact store: a folder, a shared volume or s3://...",
    )
    result_ttl_s: int = Field(default=24 * 3600, gt=0, description="Seconds results are kept.")
    failure_ttl_s: int = Field(
        default=3600,
        gt=0,
        description="Seconds failed, expired, cancelled and dead-lettered jobs' results are kept.",
    )
    visibility_timeout_s: int = Field(
        default=DEFAULT_VISIBILITY_TIMEOUT_S,
        gt=0,
        description="Seconds after its worker's last sign of life before an unacknowledged "
        "job is handed to another worker (live workers renew theirs every quarter of it).",
    )
    max_deliveries: int = Field(
        default=3,
        ge=1,
        description="Deliveries a worker died under (the last one while the job ran alone) "
        "before the job goes to the dead-letter list.",
    )
    isolation_wait_s: float = Field(
        default=60,
        ge=0,
        description="How long a job a worker died under waits for its worker to go quiet so "
        "that it runs alone (past it, it runs beside the others).",
    )
    outage_wait_s: float = Field(
        default=300,
        ge=0,
        description="How long a job that lost Redis waits for it (then runs on in place) "
        "before its delivery is given back to the queue.",
    )
    clock_skew_s: float = Field(
        default=0.0,
        description="Fault injection for tests: the host clock a worker's transport reads is "
        "this many seconds off. Recovery decisions use the Redis server's clock, so they must "
        "not notice.",
    )
    fault_stop_at: Literal["", "registered"] = Field(
        default="",
        description="Fault injection for tests: the point of a job where a worker stops itself "
        "(SIGSTOP) so that a test can kill it exactly there; `registered` is after a training "
        "job's registry writes, before its answer is stored.",
    )
    deadletter_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        gt=0,
        description="Bytes the dead-letter list may hold (entries carry their payloads); the "
        "oldest entries go past it, and an entry larger on its own is kept without payload.",
    )
    restore_interval_s: int = Field(
        default=10,
        ge=1,
        description="Seconds between a worker's sweeps that restore jobs of dead workers.",
    )
    plugins: list[str] = Field(
        default_factory=list,
        description="Python modules a worker imports at start (extra architectures, datasets).",
    )
    max_model_params: int = Field(
        default=500_000_000,
        gt=0,
        description="Most parameters a worker builds a model with (500M: 2 GB of float32 "
        "weights, about four times that to train); a larger one is refused before it is built.",
    )
    max_payload_bytes: int = Field(
        default=16 * 1024 * 1024,
        gt=0,
        description="Largest accepted job: its message and the inputs stored beside it, "
        "checked by the producer and by the worker.",
    )
    max_result_bytes: int = Field(
        default=8 * 1024 * 1024,
        gt=0,
        description="Largest result a worker stores; a larger one fails the job with "
        "result_too_large.",
    )
    inline_input_bytes: int = Field(
        default=4096,
        ge=0,
        description="Producer: tensors larger than this wait beside the message in Redis as "
        "raw bytes instead of riding in it as base64.",
    )
    wait_timeout_s: float = Field(
        default=3600,
        gt=0,
        description="Producer: how long a wait for a job's result lasts when no timeout is given.",
    )
    no_worker_grace_s: float = Field(
        default=60,
        gt=0,
        description="Producer: a wait fails when no live worker has consumed the job's queue "
        "for this long.",
    )
    max_inputs_per_job: int = Field(default=1024, gt=0, description="Most inputs one job may hold.")
    batching: bool = Field(default=True, description="Merge concurrent inference jobs.")
    max_batch: int = Field(default=64, gt=0, description="Largest micro-batch of inputs.")
    max_wait_ms: float = Field(
        default=2.0, ge=0, description="Longest a micro-batch waits for company."
    )
    batch_parallel: int | None = Field(
        default=None,
        ge=1,
        description="Micro-batches a worker runs at once; unset: 1 on a GPU, "
        "CPU cores // torch threads on a CPU.",
    )
    cache_bytes: int = Field(
        default=2 * 1024**3, gt=0, description="Model cache budget per device, in bytes."
    )
    preload: list[str] = Field(default_factory=list, description="Model refs warmed at start.")
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda|cuda:[0-9]{1,2})$",
        description="Where a worker runs: auto, cpu, cuda (claims a free GPU) or cuda:N.",
    )
    gpu_lease_ttl_s: int = Field(default=30, ge=5, description="GPU lease TTL, renewed often.")
    metrics_port: int | None = Field(default=None, description="Prometheus port; off if unset.")
    metrics_addr: str = Field(default="0.0.0.0", description="Address the metrics port binds.")
    channels_last: bool = Field(
        default=True, description="Run CNNs in channels-last memory format (faster on CPU too)."
    )
    torch_threads: int | None = Field(default=None, gt=0, description="torch intra-op threads.")
    stats_maxlen: int = Field(default=100_000, gt=0, description="Cap of the stats stream.")
    checkpoint_ttl_s: int = Field(
        default=7 * 24 * 3600,
        gt=0,
        description="Checkpoints not saved for this long belong to lost jobs and are swept.",
    )
    checkpoint_sweep_s: float = Field(
        default=600,
        gt=0,
        description="Seconds between a worker's sweeps for checkpoints nobody will resume "
        "(jobs failed, dead-lettered or forgotten by Redis); one also runs at start.",
    )
    # ---------------------------------------------------------------- online lane (issue 12)
    lane: bool = Field(
        default=True, description="Workers whose queues include infer also serve the online lane."
    )
    lane_device: str = Field(
        default="cpu",
        pattern=r"^(cpu|cuda)$",
        description="Producer: the lane a request for device 'any' goes to.",
    )
    lane_max_backlog: int = Field(
        default=10_000,
        gt=0,
        description="Requests waiting in a lane (both streams) past which producers are "
        "refused with Overloaded.",
    )
    lane_max_batch: int | None = Field(
        default=None,
        gt=0,
        description="Requests a lane consumer reads (and runs) at once; unset: max_batch on a "
        "GPU, at most 32 on a CPU (larger batches overflow its caches: slower per input).",
    )
    lane_block_ms: int = Field(
        default=500, ge=1, description="How long a consumer's read waits for requests."
    )
    lane_claim_idle_ms: int = Field(
        default=30_000,
        ge=1,
        description="A request pending this long under a consumer whose heartbeat is gone is "
        "taken over by a live one.",
    )
    lane_claim_interval_s: float = Field(
        default=5.0, gt=0, description="Seconds between a consumer's sweeps for such requests."
    )
    lane_heartbeat_s: float = Field(
        default=2.0, gt=0, description="Seconds between a consumer's heartbeats (TTL: 3x)."
    )
    lane_max_deliveries: int = Field(
        default=3, ge=1, description="Deliveries of a lane request before it is dead-lettered."
    )
    lane_reply_ttl_s: int = Field(
        default=300, gt=0, description="Seconds unread replies wait for their client."
    )

    # Limits on the data a job may make a worker read (docs/training.md, "Data roots").
    data_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [DEFAULT_DATA_ROOT],
        description="Folders dataset paths must lie under: a JSON list or PATH-style "
        "(colon-separated) folders. Relative dataset paths are taken under the first.",
    )
    max_dataset_files: int = Field(
        default=1_000_000, gt=0, description="Most folder entries one dataset scan may visit."
    )
    max_image_pixels: int = Field(
        default=40_000_000,
        gt=0,
        description="Largest image (width x height) decoded, for training data and inference.",
    )

    # Hard time limits per job kind (docs/reliability.md, "Time limits"), per delivery: a
    # job's own time_limit_s may lower its kind's limit, never raise it.
    time_limit_train_s: float = Field(
        default=24 * 3600, gt=0, description="Longest a train job (or pipeline train stage) runs."
    )
    time_limit_compress_s: float = Field(
        default=6 * 3600,
        gt=0,
        description="Longest a compress job (or pipeline compress stage) runs.",
    )
    time_limit_infer_s: float = Field(
        default=600, gt=0, description="Longest an inference job (a Celery task) runs."
    )
    time_limit_pipeline_s: float = Field(
        default=1800,
        gt=0,
        description="Longest a pipeline's own task or its gate, promote or warm stage runs.",
    )
    time_limit_grace_s: float = Field(
        default=10,
        gt=0,
        description="How long a job stopped by its limit or a cancel has to unwind before the "
        "worker answers for it and leaves its thread behind (stuck in a call that cannot be "
        "interrupted).",
    )
    max_stuck_jobs: int = Field(
        default=8,
        ge=1,
        description="Threads left behind by stuck jobs before the worker asks to be replaced "
        "(exit code 75).",
    )

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part]
        return value

    def is_loopback(self) -> bool:
        host = urlparse(self.redis_url).hostname or ""
        return host in LOOPBACK_HOSTS

    def has_password(self) -> bool:
        return bool(urlparse(self.redis_url).password or self.redis_password)

    def password_source(self) -> tuple[str, str]:
        """The Redis password in use and the setting it comes from (the URL's wins)."""
        in_url = urlparse(self.redis_url).password
        if in_url:
            return unquote(in_url), "TORCHFLEET_REDIS_URL"
        return self.redis_password or "", "TORCHFLEET_REDIS_PASSWORD"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests clear with ``get_settings.cache_clear()``)."""
    return Settings()
