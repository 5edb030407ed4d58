"""The online lane's arms: requests through ``Client.infer``, and the drain.

* ``lane_batched`` / ``lane_unbatched``: single-input requests from producer threads, on a
  worker that batches (up to its lane batch) or reads one request at a time;
* ``lane_drain``: N requests added while the worker's lane consumer is paused (the
  ``torchfleet_lane`` control command), then the worker alone empties the lane; its own busy
  time from resume to its last batch gives the inputs/s (no producer shares its cores).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from producers.bench.plan import RESULT_TIMEOUT_S, Row, summarise
from producers.encoding import tensor_bytes
from producers.lane import SEND_SCRIPT
from shared.lane import encode_request
from shared.names import CONTROL_LANE, lane_reply_key, lane_streams

FILL_CHUNK = 200  # requests per pipelined round trip while filling
DRAIN_TIMEOUT_S = 600.0
DRAIN_POLL_S = 0.05  # XLEN polls: they cost Redis a microsecond, the worker nothing
NO_BACKLOG_LIMIT = 10**9  # the fill ignores lane_max_backlog: it is the bench's own lane


def lane_call(client: Any, ref: str, array: Any) -> Callable[[], float]:
    """One lane request, sent and awaited as any producer does; its latency in ms."""

    def one() -> float:
        start = time.perf_counter()
        client.infer(ref, array, timeout=RESULT_TIMEOUT_S)
        return (time.perf_counter() - start) * 1000

    return one


def lane_control(client: Any, worker: str, action: str) -> dict[str, Any]:
    """Pause, resume or read the status of ``worker``'s lane consumer."""
    replies = client.app.control.broadcast(
        CONTROL_LANE, arguments={"action": action}, destination=[worker], reply=True, timeout=20
    )
    if not replies:
        raise RuntimeError(f"worker {worker} did not answer {CONTROL_LANE} {action}")
    answer: dict[str, Any] = next(iter(replies[0].values()))
    if "error" in answer or "skipped" in answer:
        raise RuntimeError(f"{CONTROL_LANE} {action}: {answer}")
    return answer


def fill(client: Any, ref: str, array: Any, n: int, reply_key: str, lane: str = "cpu") -> None:
    """``n`` requests added to ``lane`` in pipelined chunks, replies sent to a key nobody
    reads (no listener shares the cores while the worker drains)."""
    raw, dtype, shape = tensor_bytes(array)
    script = client.redis.register_script(SEND_SCRIPT)
    keys = list(lane_streams(lane))[::-1]  # the normal stream first
    for start in range(0, n, FILL_CHUNK):
        with client.redis.pipeline(transaction=False) as pipe:
            for _ in range(min(FILL_CHUNK, n - start)):
                fields = encode_request(
                    request_id=uuid.uuid4().hex, reply_to=reply_key, model=ref, data=raw,
                    dtype=dtype, shape=shape, submitted_at=time.time(),
                )  # fmt: skip
                args: list[Any] = [NO_BACKLOG_LIMIT]
                for name, value in fields.items():
                    args += [name, value]
                script(keys=keys, args=args, client=pipe)
            pipe.execute()


def wait_empty(client: Any, lane: str, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    """Until the lane's streams hold no entry (answered entries are deleted)."""
    deadline = time.monotonic() + timeout_s
    while sum(int(client.redis.xlen(s)) for s in lane_streams(lane)) > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the lane was not emptied in {timeout_s:.0f} s")
        time.sleep(DRAIN_POLL_S)


def drain(
    client: Any, worker: str, arch: str, ref: str, array: Any, n: int, lane: str = "cpu"
) -> Row:
    """Fill ``lane`` while ``worker``'s consumer is paused, resume, and take its busy time."""
    reply_key = lane_reply_key(f"drain-{uuid.uuid4().hex}")
    lane_control(client, worker, "pause")
    try:
        fill(client, ref, array, n, reply_key, lane)
    finally:
        lane_control(client, worker, "resume")
    wait_empty(client, lane)
    status = lane_control(client, worker, "status")
    client.redis.delete(reply_key)
    answered = int(status["answered_since_resume"])
    if answered < n:
        raise RuntimeError(f"the drain answered {answered} of {n} requests")
    busy = float(status["busy_s_since_resume"])
    mean_ms = busy * 1000 / answered  # a drain has no per-request latency: its mean cost
    return summarise("lane_drain", arch, 1, 1, [mean_ms] * answered, busy, busy_s=busy)
