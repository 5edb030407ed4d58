"""One batch of lane requests from read to outbox: resolve each model group through the
registry (per batch, so an alias move is seen by the next batch), take the model from the
worker's cache, run one forward per group through the micro-batcher's fast paths, and
answer every request: a result, or a clear error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from shared.errors import DeviceFault, TorchfleetError
from shared.jobs import ModelRef
from shared.lane import encode_error, encode_result_json, result_meta_json
from shared.registry import Resolved
from shared.stats import stats_entry
from workers import metrics
from workers.batching import timed_forward
from workers.cache import LoadedModel
from workers.devices import describe
from workers.lane.answers import GroupAnswers, GroupRun, queued_ms, top_k_rows
from workers.lane.batch import (
    Entry,
    Pending,
    Refusal,
    decode_group,
    group_by_model,
    invalid_ref,
    parse_entries,
    refusal,
)
from workers.lane.faults import is_fatal
from workers.lane.outbox import Outbox
from workers.runtime import Runtime

log = logging.getLogger("torchfleet.lane")
FetchHashes = Callable[[list[str]], Mapping[str, Any]]


@dataclass
class Served:
    """A batch's outcome: the writes, the stats records, and whether the device broke."""

    outbox: Outbox = field(default_factory=Outbox)
    records: list[dict[str, str]] = field(default_factory=list)
    unanswerable: list[Refusal] = field(default_factory=list)  # no reply key: dead-lettered
    models: set[str] = field(default_factory=set)  # the model names this batch served
    answered: int = 0
    fatal: BaseException | None = None


def serve_batch(
    rt: Runtime,
    entries: Sequence[Entry],
    hashes: Mapping[str, Any],
    fetch: FetchHashes,
    *,
    lane: str,
) -> Served:
    """Answer every entry of a read. ``hashes``: registry hashes by model name, read with
    the entries; ``fetch`` reads those of other names (one round trip for all)."""
    read_at, read_perf = time.time(), time.perf_counter()
    parsed = parse_entries(entries, rt.settings.max_payload_bytes, read_at)
    served = Served()
    for entry in parsed.deleted:
        served.outbox.ack(entry.stream, entry.entry_id)
    refused = list(parsed.refused)
    groups = group_by_model(parsed.pending)
    names = _names(groups, refused)
    served.models.update(names.values())
    missing = [n for n in set(names.values()) if n not in hashes]
    if missing:
        hashes = {**hashes, **fetch(missing)}
    for key, group in groups.items():
        if key not in names:
            continue
        context = _Clock(read_at, read_perf)
        try:
            refused += _serve_group(rt, group, hashes.get(names[key]), served, context, lane)
        except DeviceFault as e:  # the device is gone: answer, then the worker is replaced
            served.fatal = e
            refused += [refusal(p, e) for p in group]
    for item in refused:
        _refuse(rt, item, served, lane)
    for record in served.records:
        rt.count(f"lane_{record['outcome']}")
    fleet = metrics.current()  # Prometheus, when the worker serves it
    if fleet is not None:
        fleet.observe_lane(served.records)
    return served


@dataclass
class _Clock:
    read_at: float
    read_perf: float


def _names(
    groups: Mapping[tuple[str, str | None], list[Pending]], refused: list[Refusal]
) -> dict[tuple[str, str | None], str]:
    names = {}
    for key, group in groups.items():
        try:
            names[key] = ModelRef.parse(key[0]).name
        except ValueError as e:
            refused += invalid_ref(group, e)
    return names


def _serve_group(
    rt: Runtime,
    group: list[Pending],
    registry_hash: Any,
    served: Served,
    clock: _Clock,
    lane: str,
) -> list[Refusal]:
    """One model group: resolve, load, decode, forward, answer; the requests it refused."""
    ref, backend = group[0].request.model, group[0].request.backend
    try:
        resolved = rt.registry.resolve(ref, registry_hash or {})
        model, cache_hit, load_ms = rt.cache.get(resolved.record.digest, backend)
    except TorchfleetError as e:  # unknown model or variant, a broken artifact...
        return [refusal(p, e) for p in group]
    decode_start = time.perf_counter()
    batch, kept, counts, refused = decode_group(
        group, model.manifest, rt.settings.max_inputs_per_job
    )
    if batch is None:
        return refused
    preprocess_ms = (time.perf_counter() - decode_start) * 1000
    forward_start = time.perf_counter()
    outcome = _forward(model, batch, kept, counts)
    if isinstance(outcome, list):  # the merged forward failed: one request at a time
        return refused + outcome + _one_by_one(rt, resolved, model, kept, served, clock, lane)
    logits, compute_ms = outcome
    run = GroupRun(
        model=resolved.name,
        version=resolved.version,
        variant=resolved.variant,
        digest=resolved.record.digest,
        worker=rt.worker,
        device=describe(model.device),
        cache_hit=cache_hit,
        batch_size=len(batch),
        load_ms=load_ms,
        preprocess_ms=preprocess_ms,
        compute_ms=compute_ms,
    )
    wait_ms = (forward_start - clock.read_perf) * 1000 - preprocess_ms - load_ms
    _answer(run, model, kept, counts, logits, served, clock, wait_ms, lane)
    return refused


def _forward(
    model: LoadedModel, batch: torch.Tensor, kept: list[Pending], counts: list[int]
) -> tuple[torch.Tensor, float] | list[Refusal]:
    """Logits and compute ms; on failure of a merged batch, an empty list (retry one by one);
    a lone request's failure, its refusal. A fatal device error raises :class:`DeviceFault`."""
    try:
        return timed_forward(model, batch)
    except Exception as e:
        if is_fatal(e):
            raise DeviceFault(f"unrecoverable device error, the worker is replaced: {e}") from e
        if len(kept) > 1:
            return []
        error = e if isinstance(e, TorchfleetError) else TorchfleetError(f"forward failed: {e}")
        log.warning("lane forward failed for %s: %s", kept[0].request.request_id, e)
        return [refusal(kept[0], error)]


def _one_by_one(
    rt: Runtime,
    resolved: Resolved,
    model: LoadedModel,
    kept: list[Pending],
    served: Served,
    clock: _Clock,
    lane: str,
) -> list[Refusal]:
    refused: list[Refusal] = []
    for item in kept:
        batch, alone, counts, bad = decode_group([item], model.manifest, 1 << 30)
        if batch is None:
            refused += bad
            continue
        outcome = _forward(model, batch, alone, counts)
        if isinstance(outcome, list):
            refused += outcome
            continue
        logits, compute_ms = outcome
        run = GroupRun(
            resolved.name, resolved.version, resolved.variant, resolved.record.digest,
            rt.worker, describe(model.device), True, len(batch), 0.0, 0.0, compute_ms,
        )  # fmt: skip
        _answer(run, model, alone, counts, logits, served, clock, 0.0, lane)
    return refused


def _answer(
    run: GroupRun,
    model: LoadedModel,
    kept: list[Pending],
    counts: list[int],
    logits: torch.Tensor,
    served: Served,
    clock: _Clock,
    wait_ms: float,
    lane: str,
) -> None:
    post_start = time.perf_counter()
    scores, labels = top_k_rows(logits, max(p.request.top_k for p in kept))
    done = time.perf_counter()
    answers = GroupAnswers(
        run, model.manifest.class_names, wait_ms=wait_ms, lane=lane,
        post_ms=(done - post_start) * 1000, total_ms=(done - clock.read_perf) * 1000,
    )  # fmt: skip
    offset = 0
    for item, count in zip(kept, counts, strict=True):
        request = item.request
        rows = slice(offset, offset + count)
        offset += count
        queued = queued_ms(request, clock.read_at)
        preds = answers.predictions(scores[rows], labels[rows], request.top_k)
        result = answers.result(request, preds, queued)
        served.outbox.reply(request.reply_to, encode_result_json(request.request_id, result))
        if request.store:
            served.outbox.store(request.request_id, result_meta_json(request.request_id, result))
        served.outbox.ack(item.entry.stream, item.entry.entry_id)
        served.records.append(answers.stats_record(request, queued, count))
        served.answered += 1


def _refuse(rt: Runtime, item: Refusal, served: Served, lane: str) -> None:
    """An error answer where there is a reply key; else a log line (the entry is acked)."""
    served.outbox.ack(item.entry.stream, item.entry.entry_id)
    record = stats_entry(
        kind="infer",
        job_id=item.request_id or item.entry.entry_id.decode(),
        outcome=item.code,
        error=item.message[:200],
        worker=rt.worker,
        lane=lane,
    )
    served.records.append(record)
    if item.reply_to is None or item.request_id is None:
        served.unanswerable.append(item)
        return
    served.outbox.reply(item.reply_to, encode_error(item.request_id, item.code, item.message))
    if item.store:
        served.outbox.store_error(item.request_id, item.code, item.message)
    served.answered += 1
