"""The task that runs one stage of a pipeline's chain (:mod:`workers.chain` builds the chain).

A stage goes through the same admission as every task (delivery counts and the dead-letter
list, payload limits, and a redelivery of a finished stage answered from its stored report
without running again) and runs watched: stopped past its time limit or once its pipeline
is cancelled, even when stuck. Whatever happens, the stage appends its :class:`StageReport`
and the chain goes on, so the chain always ends with a report: a failed stage marks the
report and the later stages only append ``skipped``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from celery.exceptions import Ignore

from shared.errors import GateFailed, InputError, JobCancelled, TorchfleetError, TransientError
from shared.jobs import PipelineJob, PipelineResult, PipelineStage, StageReport
from shared.names import (
    TASK_PIPELINE_COMPRESS,
    TASK_PIPELINE_GATE,
    TASK_PIPELINE_PROMOTE,
    TASK_PIPELINE_TRAIN,
    TASK_PIPELINE_WARM,
    pipeline_key,
)
from workers.app import FleetTask
from workers.context import JobContext
from workers.delivery import delivery
from workers.effects import DropsCheckpoint, checkpoint_id
from workers.limits import OnAbandon, TimeLimit, time_limit
from workers.runtime import Runtime, get_runtime

log = logging.getLogger("torchfleet.worker")

StageFn = Callable[[PipelineJob, PipelineResult, Runtime, "StageTask"], dict[str, Any]]
STAGES: tuple[tuple[PipelineStage, str], ...] = (
    ("train", TASK_PIPELINE_TRAIN),
    ("compress", TASK_PIPELINE_COMPRESS),
    ("gate", TASK_PIPELINE_GATE),
    ("promote", TASK_PIPELINE_PROMOTE),
    ("warm", TASK_PIPELINE_WARM),
)
STAGE_NAMES: tuple[PipelineStage, ...] = tuple(stage for stage, _ in STAGES)


def stage_limit(job: PipelineJob, stage: PipelineStage, rt: Runtime) -> TimeLimit:
    """The train stage runs under its train job's limit, the compress stage under the
    compress maximum, the others under the pipeline's; ``time_limit_s`` may lower them."""
    kind = stage if stage in ("train", "compress") else "pipeline"
    requested = job.train.time_limit_s if stage == "train" and job.train else job.time_limit_s
    return time_limit(rt.settings, kind, requested, f"the pipeline's {stage} stage")


class StageTask(FleetTask):
    """A link of the pipeline's chain: runs one stage under the fleet's policy, and turns a
    failure into the report's verdict so that the chain always ends with a report."""

    kind = "pipeline"

    def run_stage(self, stage: PipelineStage, report_json: Any, payload: Any, fn: StageFn) -> Any:
        """Run ``fn`` unless an earlier stage stopped the pipeline; append its report."""
        report = PipelineResult.model_validate(report_json)
        job = PipelineJob.model_validate(payload)
        rt = get_runtime()
        started = time.perf_counter()
        try:
            with delivery(self, rt, payload, cancel_id=report.job_id) as admission:
                if admission.stored is not None:  # a redelivery of a finished stage: its report
                    return admission.stored
                if report.status != "running":
                    report.stages.append(StageReport(stage=stage, status="skipped"))
                    return self.close(rt, report, stage)
                if admission.cancelled:
                    raise JobCancelled(f"pipeline {report.job_id} was cancelled")
                limit = stage_limit(job, stage, rt)
                answer = self.answer_for_stage(rt, report, stage, started)
                detail = self.watched(
                    limit, report.job_id, answer, lambda: fn(job, report, rt, self)
                )
                entry = StageReport(stage=stage, status="done", detail=detail)
        except TransientError as e:
            self.retry_later(e)
        except (InputError, JobCancelled) as e:
            entry = _failed(report, stage, e.code, str(e))
            report.status = "gate_failed" if isinstance(e, GateFailed) else "failed"
        except Ignore:  # the watchdog answered for this stage (stuck past its stop)
            raise
        except Exception as e:  # a crashed stage must still end the pipeline with a report
            code = "device_fault" if self.is_fault(rt, e) else "error"
            log.exception("pipeline %s: stage %s crashed", report.job_id, stage)
            entry = _failed(report, stage, code, f"{type(e).__name__}: {e}")
            report.status = "failed"
        self.append(report, entry, started)
        return self.close(rt, report, stage)

    def append(self, report: PipelineResult, entry: StageReport, started: float) -> None:
        entry.seconds = round(time.perf_counter() - started, 3)
        report.seconds = round(report.seconds + entry.seconds, 3)
        report.stages.append(entry)

    def close(self, rt: Runtime, report: PipelineResult, stage: PipelineStage) -> dict[str, Any]:
        """The report handed to the next stage, or the finished one after the last stage."""
        return self.finish(rt, report) if stage == STAGE_NAMES[-1] else _dump(report)

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

    def answer_for_stage(
        self, rt: Runtime, report: PipelineResult, stage: PipelineStage, started: float
    ) -> OnAbandon:
        """What the watchdog stores for a stage stuck past its stop: the report as the chain
        would have finished it (this stage failed, the later ones skipped), under the stage's
        id and the pipeline's; the chain does not go on."""
        stage_id = self.request.id

        def answer(error: TorchfleetError) -> None:
            final = report.model_copy(deep=True)
            self.append(final, _failed(final, stage, error.code, str(error)), started)
            final.status = "failed"
            later = STAGE_NAMES[STAGE_NAMES.index(stage) + 1 :]
            final.stages += [StageReport(stage=s, status="skipped") for s in later]
            document = self.finish(rt, final)
            if stage == "train":  # nothing will resume it
                rt.store.discard_checkpoint(checkpoint_id(stage_id))
            for task_id in dict.fromkeys((stage_id, final.job_id)):
                self.backend.mark_as_done(task_id, document)

        return answer

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
