"""Pipeline jobs: train -> compress -> gate -> promote -> warm, as a Celery chain of real tasks.

The entry task (``torchfleet.pipeline``, id = the job id) validates the job, checks that its
source exists, and replaces itself with the chain; the last stage inherits the job id, so
waiting on the job waits for the whole chain without any task blocking on another.

Each stage takes the report so far (a :class:`PipelineResult`) and returns it with its own
:class:`StageReport` appended; every stage's return value is kept in the result backend
under ``{job_id}:{stage}``. A stage that fails (bad input, a gate no variant passes) marks the
report and the later stages only append ``skipped``: the alias moves only in the promote
stage, so a failed gate leaves ``production`` where it was. Progress goes to the job id.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from celery import chain

from shared.errors import GateFailed, InputError, InvalidJob, ModelNotFound, TransientError
from shared.jobs import (
    CompressJob,
    CompressResult,
    PipelineJob,
    PipelineResult,
    PipelineStage,
    StageReport,
    TrainResult,
    VariantReport,
)
from shared.names import (
    CONTROL_WARM,
    QUEUE_INFER,
    TASK_PIPELINE,
    TASK_PIPELINE_COMPRESS,
    TASK_PIPELINE_GATE,
    TASK_PIPELINE_PROMOTE,
    TASK_PIPELINE_TRAIN,
    TASK_PIPELINE_WARM,
    TASK_QUEUES,
    WORKER_KEYS,
    device_queue,
    pipeline_key,
)
from shared.promotion import stage_verdict
from workers.admission import Admission
from workers.app import FleetTask, app
from workers.compression.variants import best
from workers.context import JobContext
from workers.control import JobCancelled, is_cancelled
from workers.effects import DropsCheckpoint
from workers.jobs import compression, training
from workers.runtime import Runtime, get_runtime

log = logging.getLogger("torchfleet.worker")

WARM_TIMEOUT_S = 30.0
StageFn = Callable[[PipelineJob, PipelineResult, Runtime, "StageTask"], dict[str, Any]]
STAGES: tuple[tuple[PipelineStage, str], ...] = (
    ("train", TASK_PIPELINE_TRAIN),
    ("compress", TASK_PIPELINE_COMPRESS),
    ("gate", TASK_PIPELINE_GATE),
    ("promote", TASK_PIPELINE_PROMOTE),
    ("warm", TASK_PIPELINE_WARM),
)


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


# ------------------------------------------------------------------ running one stage
class StageTask(FleetTask):
    """A link of the pipeline's chain: runs one stage under the fleet's policy, and turns a
    failure into the report's verdict so that the chain always ends with a report."""

    kind = "pipeline"

    def run_stage(self, stage: PipelineStage, report_json: Any, payload: Any, fn: StageFn) -> Any:
        """Run ``fn`` unless an earlier stage stopped the pipeline; append its report."""
        report = PipelineResult.model_validate(report_json)
        job = PipelineJob.model_validate(payload)
        rt = get_runtime()
        if report.status != "running":
            report.stages.append(StageReport(stage=stage, status="skipped"))
            return self.finish(rt, report) if stage == STAGES[-1][0] else _dump(report)
        started = time.perf_counter()
        try:
            if is_cancelled(rt.client, report.job_id):
                raise JobCancelled(f"pipeline {report.job_id} was cancelled")
            detail = fn(job, report, rt, self)
            entry = StageReport(stage=stage, status="done", detail=detail)
        except TransientError as e:
            self.retry_later(e)
        except (InputError, JobCancelled) as e:
            entry = _failed(report, stage, e.code, str(e))
            report.status = "gate_failed" if isinstance(e, GateFailed) else "failed"
        except Exception as e:  # a crashed stage must still end the pipeline with a report
            code = "device_fault" if self.is_fault(rt, e) else "error"
            log.exception("pipeline %s: stage %s crashed", report.job_id, stage)
            entry = _failed(report, stage, code, f"{type(e).__name__}: {e}")
            report.status = "failed"
        entry.seconds = round(time.perf_counter() - started, 3)
        report.seconds = round(report.seconds + entry.seconds, 3)
        report.stages.append(entry)
        return self.finish(rt, report) if stage == STAGES[-1][0] else _dump(report)

    def finish(self, rt: Runtime, report: PipelineResult) -> dict[str, Any]:
        """Close the report, keep it under ``torchfleet:pipeline:{id}``, record the outcome."""
        if report.status == "running":
            report.status = "promoted"
        document = _dump(report)
        rt.client.set(
            pipeline_key(report.job_id), json.dumps(document), ex=rt.settings.result_ttl_s
        )
        started = time.perf_counter() - report.seconds
        self.record(rt, report.job_id, report.status, started, model=report.model)
        return document

    def stage_context(self, rt: Runtime, job_id: str, stage: str) -> JobContext:
        """A stage's context: progress shown on the pipeline's own id, which it may cancel."""

        def progress(meta: dict[str, Any]) -> None:
            self.backend.store_result(job_id, {"stage": stage, **meta}, "PROGRESS")

        return self.context(rt, f"{job_id}-{stage}", progress, job_id)


class TrainStageTask(DropsCheckpoint, StageTask):
    """The train stage: its checkpoint goes once the stage's report is stored."""


def _dump(report: PipelineResult) -> dict[str, Any]:
    return report.model_dump(mode="json")


def _failed(report: PipelineResult, stage: PipelineStage, code: str, message: str) -> StageReport:
    report.error_code, report.error = code, f"{stage}: {message}"
    return StageReport(stage=stage, status="failed", error_code=code, error=message)


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
    fenced = rt.registry.for_job(f"{report.job_id}-promote", cancel_id=report.job_id)
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
