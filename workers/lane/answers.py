"""A model group's answers as JSON text, built from pieces encoded once per group.

Every request of a group shares its model, worker, device, batch and most of its latency
breakdown; only its id, its predictions and its time in the queue differ. Those three are
formatted per request into a template the group encodes once, so the hot path calls no
JSON encoder per request. The text is exactly an :class:`~shared.jobs.InferResult`'s JSON
(the unit tests validate it with the model), and so is each stats record's content.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as json_string

import torch

from shared.lane import LaneRequest

ITEM = '{"label":%d,"name":%s,"score":%r}'


@dataclass(frozen=True, slots=True)
class GroupRun:
    """What one model group's forward shares across its requests."""

    model: str
    version: int
    variant: str
    digest: str
    worker: str
    device: str
    cache_hit: bool
    batch_size: int
    load_ms: float
    preprocess_ms: float
    compute_ms: float


def top_k_rows(logits: torch.Tensor, k: int) -> tuple[list[list[float]], list[list[int]]]:
    """Softmax scores and labels of the ``k`` most likely classes, per input (plain lists)."""
    probs = torch.softmax(logits.float(), dim=1)
    scores, labels = probs.topk(min(k, probs.shape[1]), dim=1)
    return scores.tolist(), labels.tolist()


class GroupAnswers:
    """JSON answers and stats records of one model group."""

    def __init__(
        self,
        run: GroupRun,
        class_names: Sequence[str],
        *,
        wait_ms: float,
        post_ms: float,
        total_ms: float,
        lane: str,
    ) -> None:
        shared = {
            "kind": "infer",
            "schema_version": 1,
            "model": run.model,
            "version": run.version,
            "variant": run.variant,
            "model_digest": run.digest,
            "accuracy": None,
            "cache_hit": run.cache_hit,
            "batch_size": run.batch_size,
            "worker": run.worker,
            "device": run.device,
        }
        latency = {
            "batch_wait_ms": round(max(0.0, wait_ms), 3),
            "load_ms": round(run.load_ms, 3),
            "preprocess_ms": round(run.preprocess_ms, 3),
            "compute_ms": round(run.compute_ms, 3),
            "postprocess_ms": round(post_ms, 3),
            "total_worker_ms": round(total_ms, 3),
        }
        self.head = json.dumps(shared, separators=(",", ":"))[1:-1]
        self.latency_tail = json.dumps(latency, separators=(",", ":"))[1:]
        self.names = [json_string(n) for n in class_names]
        self.record = {
            "kind": "infer",
            "outcome": "success",
            "lane": lane,
            **{k: str(shared[k]) for k in ("model", "variant", "device", "worker", "batch_size")},
            **{k: str(v) for k, v in latency.items()},
        }

    def predictions(self, scores: list[list[float]], labels: list[list[int]], k: int) -> str:
        """The ``predictions`` JSON of one request's rows, its ``k`` best classes each."""
        names, known = self.names, len(self.names)
        rows = (
            ",".join(
                ITEM % (c, names[c] if c < known else "null", round(s, 6))
                for s, c in zip(row_s[:k], row_c[:k], strict=True)
            )
            for row_s, row_c in zip(scores, labels, strict=True)
        )
        return "[[" + "],[".join(rows) + "]]"

    def result(self, request: LaneRequest, predictions: str, queued_ms: float) -> str:
        """The InferResult JSON of one request."""
        return (
            f'{{{self.head},"job_id":{json_string(request.request_id)},"predictions":'
            f'{predictions},"latency":{{"queued_ms":{round(queued_ms, 3)!r},{self.latency_tail}}}'
        )

    def stats_record(self, request: LaneRequest, queued_ms: float, inputs: int) -> dict[str, str]:
        """The request's stats-stream record (the fields a Celery inference job's has)."""
        record = dict(self.record)
        record["job_id"] = request.request_id
        record["ts"] = f"{time.time():.6f}"
        record["queued_ms"] = str(round(queued_ms, 3))
        record["inputs"] = str(inputs)
        return record


def queued_ms(request: LaneRequest, read_at: float) -> float:
    """Milliseconds from the producer's send to the worker's read (0 without a send time)."""
    if not request.submitted_at:
        return 0.0
    return max(0.0, (read_at - request.submitted_at) * 1000)
