"""An inference job from request to answer, with every millisecond accounted for."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import torch

from shared.errors import TorchfleetError
from shared.jobs import InferJob, InferResult, Latency
from workers import metrics
from workers.devices import describe
from workers.inference import accuracy, decode_inputs, top_k
from workers.runtime import Runtime

log = logging.getLogger("torchfleet.worker")


def prepare_serving(rt: Runtime) -> None:
    """Worker start-up: cache options from settings, the metrics endpoint, the preload list."""
    rt.cache.channels_last = rt.settings.channels_last
    rt.cache.threads = rt.settings.torch_threads
    rt.batcher.parallel = batch_parallel(rt.settings.batch_parallel, rt.device)
    if rt.settings.metrics_port is not None:
        gpu = rt.device if rt.device.type == "cuda" else None
        fleet = metrics.start_metrics(
            describe(rt.device),
            rt.cache.used_bytes,
            port=rt.settings.metrics_port,
            addr=rt.settings.metrics_addr,
            gpu=gpu,
        )
        rt.cache.listeners.append(fleet.on_cache_event)
    for ref in rt.settings.preload:
        try:
            resolved = rt.registry.resolve(ref)
            rt.cache.get(resolved.record.digest)
        except TorchfleetError as e:  # a stale preload entry must not keep the worker down
            log.error("preload of %s failed (%s): %s", ref, e.code, e)
            continue
        log.info("preloaded %s (%s)", ref, resolved.record.digest[:12])


def batch_parallel(choice: int | None, device: torch.device) -> int:
    """Micro-batches run at once: as chosen; else 1 on a GPU (one stream), and on a CPU one
    per group of torch threads, so single-threaded forwards still use every core."""
    if choice is not None:
        return choice
    if device.type == "cuda":
        return 1
    return max(1, (os.cpu_count() or 1) // max(1, torch.get_num_threads()))


def serve(
    job: InferJob,
    rt: Runtime,
    job_id: str,
    registry_fields: Mapping[Any, Any] | None = None,
    stored_inputs: bytes | None = None,
) -> InferResult:
    """Resolve the model, decode the inputs, run them (micro-batched), and build the result.

    ``registry_fields``: the model's registry hash, if the caller read it already;
    ``stored_inputs``: the bytes a tensor payload's key names, read by the caller."""
    try:
        result = _serve(job, rt, job_id, registry_fields, stored_inputs)
    except TorchfleetError as e:
        fleet = metrics.current()
        if fleet is not None:
            fleet.failed(e.code)
        raise
    fleet = metrics.current()
    if fleet is not None:
        fleet.observe(result)
    return result


def _serve(
    job: InferJob,
    rt: Runtime,
    job_id: str,
    registry_fields: Mapping[Any, Any] | None,
    stored_inputs: bytes | None,
) -> InferResult:
    received = time.time()  # the deadline was checked on admission (workers.app)
    start = time.perf_counter()
    with rt.batcher.slot() as slot:
        resolved = rt.registry.resolve(job.model, registry_fields)
        model, cache_hit, load_ms = rt.cache.get(resolved.record.digest, job.backend)
        decode_start = time.perf_counter()
        batch = decode_inputs(
            job.inputs, model.manifest, rt.settings.max_inputs_per_job, stored_inputs
        )
        preprocess_ms = (time.perf_counter() - decode_start) * 1000
        output = rt.batcher.run(model, batch, slot)
    post_start = time.perf_counter()
    predictions = top_k(output.logits, job.top_k, model.manifest.class_names)
    acc = accuracy(predictions, job.labels) if job.labels is not None else None
    done = time.perf_counter()
    latency = Latency(
        queued_ms=max(0.0, (received - job.submitted_at) * 1000) if job.submitted_at else 0.0,
        batch_wait_ms=round(max(0.0, output.batch_wait_ms), 3),
        load_ms=round(load_ms, 3),
        preprocess_ms=round(preprocess_ms, 3),
        compute_ms=round(output.compute_ms, 3),
        postprocess_ms=round((done - post_start) * 1000, 3),
        total_worker_ms=round((done - start) * 1000, 3),
    )
    return InferResult(
        job_id=job_id,
        model=resolved.name,
        version=resolved.version,
        variant=resolved.variant,
        model_digest=resolved.record.digest,
        predictions=predictions,
        accuracy=acc,
        latency=latency,
        cache_hit=cache_hit,
        batch_size=output.batch_size,
        worker=rt.worker,
        device=describe(model.device),
    )
