"""Pipeline jobs: train -> compress -> gate -> promote -> warm, as a Celery chain of real tasks.

The entry task (``torchfleet.pipeline``, id = the job id) validates the job, checks that its
source exists, and replaces itself with the chain; the last stage inherits the job id, so
waiting on the job waits for the whole chain without any task blocking on another.

Each stage takes the report so far (a :class:`PipelineResult`) and returns it with its own
:class:`StageReport` appended; every stage's return value is kept in the result backend
under ``{job_id}:{stage}``. A stage that fails (bad input, a gate no variant passes) marks the
report and the later stages only append ``skipped``: the alias moves only in the promote
stage, so a failed gate leaves ``production`` where it was. Progress goes to the job id.
The task that runs a stage (admission, time limit, report) is in :mod:`workers.stages`.
"""

from __future__ import annotations

import json
from typing import Any

from celery import chain

from shared.errors import GateFailed, InvalidJob, ModelNotFound
from shared.jobs import (
    CompressJob,
    CompressResult,
    PipelineJob,
    PipelineResult,
    PipelineStage,
    TrainResult,
    VariantReport,
)
from shared.names import (
    CONTROL_WARM,
    QUEUE_INFER,
    TASK_PIPELINE,
    TASK_QUEUES,
    WORKER_KEYS,
    device_queue,
)
from shared.promotion import stage_verdict
from workers.admission import Admission
from workers.app import FleetTask, app
from workers.compression.variants import best
from workers.jobs import compression, training
from workers.runtime import Runtime
from workers.stages import STAGES, StageFn, StageTask, TrainStageTask

WARM_TIMEOUT_S = 30.0


# ------------------------------------------------------------------ the chain
def stage_chain(job: PipelineJob, job_id: str, report: PipelineResult) -> Any:
    """The chain of stage signatures; the last one carries the pipeline's own id."""
    payload = job.model_dump(mode="json", exclude_none=True)
    signatures: list[Any] = []
    for i, (stage, task_name) in enumerate(STAGES):
        if stage == "train" and job.train is None:
            continue
        options: dict[str, Any] = {}
        if job.device in ("cpu", "cuda"):
            options["queue"] = device_queue(TASK_QUEUES[task_name], job.device)
        args = (report.model_dump(mode="json"), payload) if not signatures else (payload,)
        stage_id = job_id if i == len(STAGES) - 1 else f"{job_id}:{stage}"
        signatures.append(app.signature(task_name, args=args, task_id=stage_id, **options))
    return chain(*signatures)


def start(job: PipelineJob, rt: Runtime, task: FleetTask, _: Admission) -> dict[str, Any]:
    """Check what can be checked before any work, then hand over to the chain."""
    report = PipelineResult(job_id=task.request.id, model=job.model_name, alias=job.promote)
    if job.source is not None:
        resolved = rt.registry.resolve(job.source)
        report.version = resolved.version
    elif job.train is not None and job.train.aliases and job.promote in job.train.aliases:
        raise InvalidJob(
            f"train.aliases sets {job.promote!r} before any gate ran; leave it to the pipeline"
        )
    raise task.replace(stage_chain(job, task.request.id, report))


@app.task(name=TASK_PIPELINE, bind=True, base=FleetTask, kind="pipeline")
def pipeline(self: FleetTask, payload: Any) -> dict[str, Any]:
    return self.run_job(payload, start)


# ------------------------------------------------------------------ the stages
def train_stage(
    job: PipelineJob, report: PipelineResult, rt: Runtime, task: StageTask
) -> dict[str, Any]:
    if job.train is None:
        raise InvalidJob("the pipeline has no train stage")
    ctx = task.stage_context(rt, report.job_id, "train")
    result: TrainResult = training.execute(job.train, ctx)
    report.train, report.version = result, result.version
    return {
        "ref": f"{result.model}:{result.version}",
        "best_val_accuracy": result.best_val_accuracy,
        "epochs": len(result.history),
    }


def compress_stage(
    job: PipelineJob, report: PipelineResult, rt: Runtime, task: StageTask
) -> dict[str, Any]:
    source = f"{report.model}:{report.version}" if report.version else str(job.source)
    compress_job = CompressJob(
        source=source,
        steps=job.steps,
        eval_dataset=job.compress_dataset(),
        gates=job.gates,
        compare_alias=job.promote,
        device=job.device,
        latency_iters=job.latency_iters,
        warmup_iters=job.warmup_iters,
    )
    ctx = task.stage_context(rt, report.job_id, "compress")
    result: CompressResult = compression.execute(compress_job, ctx)
    report.compress, report.version = result, result.version
    return {"source": result.source, "variants": [v.variant for v in result.variants]}


def choose_variant(job: PipelineJob, variants: list[VariantReport]) -> VariantReport:
    """The variant to promote: the one the job names (it must pass) or the best that passes.

    Raises :class:`GateFailed` with every variant's reasons when there is none to promote.
    """
    failed = {v.variant: [n for n in v.notes if n.startswith("gate failed")] for v in variants}
    if job.variant is not None:
        named = [v for v in variants if v.variant == job.variant]
        if not named:
            raise InvalidJob(f"the compress stage produced no variant {job.variant!r}")
        if not named[0].passed:
            raise GateFailed(
                f"variant {job.variant!r} failed its gates ({'; '.join(failed[job.variant])}); "
                f"not promoted to {job.promote!r}"
            )
        return named[0]
    chosen = best(variants)
    if chosen is None:
        reasons = "; ".join(f"{name}: {', '.join(r) or 'failed'}" for name, r in failed.items())
        raise GateFailed(f"no variant passed the gates ({reasons}); {job.promote!r} unchanged")
    return chosen


def gate_stage(
    job: PipelineJob, report: PipelineResult, rt: Runtime, task: StageTask
) -> dict[str, Any]:
    if report.compress is None:
        raise InvalidJob("the gate stage has no compression result to judge")
    chosen = choose_variant(job, report.compress.variants)
    return {
        "chosen": chosen.variant,
        "passed": [v.variant for v in report.compress.variants if v.passed],
        "failed": [v.variant for v in report.compress.variants if not v.passed],
        "speedup": chosen.speedup,
        "accuracy_delta": chosen.accuracy_delta,
    }


def promote_stage(
    job: PipelineJob, report: PipelineResult, rt: Runtime, task: StageTask
) -> dict[str, Any]:
    chosen = _stage_detail(report, "gate")["chosen"]
    if report.version is None:
        raise InvalidJob("the promote stage has no model version")
    try:
        before = rt.registry.resolve(f"{report.model}@{job.promote}")
        report.previous = before.ref
    except ModelNotFound:
        before, report.previous = None, None
    verdict = stage_verdict(job, report, chosen)
    if not verdict.promote:
        raise GateFailed(verdict.reason)
    expected = (before.version, before.variant) if before is not None else None
    fenced = task.job_registry(rt, f"{report.job_id}-promote", report.job_id)
    fenced.set_alias(report.model, job.promote, report.version, chosen, expected=expected)
    report.promoted = f"{report.model}:{report.version}:{chosen}"
    return {
        "alias": f"{report.model}@{job.promote}",
        "to": report.promoted,
        "from": report.previous,
    }


def warm_stage(
    job: PipelineJob, report: PipelineResult, rt: Runtime, task: StageTask
) -> dict[str, Any]:
    if not job.warm or report.promoted is None or report.version is None:
        return {"warm": False}
    variant = report.promoted.rsplit(":", 1)[1]
    digest = rt.registry.get(report.model, report.version, variant).digest
    expected = inference_workers(rt)
    replies = task.app.control.broadcast(
        CONTROL_WARM,
        arguments={"digests": [digest]},
        reply=True,
        timeout=WARM_TIMEOUT_S,
        limit=len(expected) or None,
    )
    warmed = sorted(
        name
        for reply in replies or []
        for name, answer in reply.items()
        if isinstance(answer, dict) and digest in answer.get("loaded", {})
    )
    report.warmed = warmed
    return {"digest": digest, "expected": expected, "warmed": warmed}


def inference_workers(rt: Runtime) -> list[str]:
    """Live workers (by heartbeat) that consume an inference queue."""
    names = []
    for key in rt.client.scan_iter(match=WORKER_KEYS, count=500):
        raw = rt.client.get(key)
        if raw:
            record = json.loads(raw)
            if any(str(q).split(".")[0] == QUEUE_INFER for q in record.get("queues", [])):
                names.append(str(record["name"]))
    return sorted(names)


def _stage_detail(report: PipelineResult, stage: str) -> dict[str, Any]:
    for entry in report.stages:
        if entry.stage == stage and entry.status == "done":
            return entry.detail
    raise InvalidJob(f"the {stage} stage did not finish")


STAGE_FUNCTIONS: dict[PipelineStage, StageFn] = {
    "train": train_stage,
    "compress": compress_stage,
    "gate": gate_stage,
    "promote": promote_stage,
    "warm": warm_stage,
}


def _stage_task(stage: PipelineStage, task_name: str) -> StageTask:
    """The Celery task of one stage (a link of the pipeline's chain)."""

    def run(self: StageTask, report: Any, payload: Any) -> Any:
        return self.run_stage(stage, report, payload, STAGE_FUNCTIONS[stage])

    run.__name__ = run.__qualname__ = f"{stage}_stage_task"
    base = TrainStageTask if stage == "train" else StageTask
    task: StageTask = app.task(name=task_name, bind=True, base=base)(run)
    return task


STAGE_TASKS = {stage: _stage_task(stage, task_name) for stage, task_name in STAGES}
