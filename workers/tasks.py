"""The job tasks: thin shells that hand a validated job to its use case and return JSON.

Every policy (admission, deadline, cancel, retries, device faults, stats) is
:class:`workers.app.FleetTask`'s; the use cases live in :mod:`workers.jobs`.
"""

from __future__ import annotations

from typing import Any

from celery import states

from shared.jobs import CompressJob, InferJob, TrainJob
from shared.names import TASK_COMPRESS, TASK_INFER, TASK_TRAIN
from workers.admission import Admission
from workers.app import FleetTask, app
from workers.effects import DropsCheckpoint
from workers.footprint import check_stored_inputs, drop_stored_inputs
from workers.jobs import compression, serving, training
from workers.runtime import Runtime, get_runtime


def _infer(job: InferJob, rt: Runtime, task: FleetTask, admission: Admission) -> dict[str, Any]:
    check_stored_inputs(admission.stored_inputs, rt.settings.max_payload_bytes)
    result = serving.serve(
        job, rt, task.request.id, admission.model_fields, admission.stored_inputs
    )
    return result.model_dump(mode="json")


def _train(job: TrainJob, rt: Runtime, task: FleetTask, _: Admission) -> dict[str, Any]:
    return training.execute(job, task.job_context(rt)).model_dump(mode="json")


def _compress(job: CompressJob, rt: Runtime, task: FleetTask, _: Admission) -> dict[str, Any]:
    return compression.execute(job, task.job_context(rt)).model_dump(mode="json")


class InferTask(FleetTask):
    # Celery reprs every result for its success log line, logged or not; an answer with
    # many predictions costs a walk of the whole structure, so keep the repr short.
    resultrepr_maxsize = 160

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """The answer (a result or a failure) is stored: the input bytes kept for a retry or
        a redelivery can go. Celery calls this for SUCCESS and FAILURE only; a cancel drops
        them in :meth:`FleetTask.run_job`."""
        if status in (states.SUCCESS, states.FAILURE) and args:
            drop_stored_inputs(get_runtime().behind, args[0], task_id)


class TrainTask(DropsCheckpoint, FleetTask):
    """The train task: its checkpoint goes once its answer is stored."""


@app.task(name=TASK_INFER, bind=True, base=InferTask, kind="infer", track_started=False)
def infer(self: FleetTask, payload: Any) -> dict[str, Any]:
    return self.run_job(payload, _infer)


@app.task(name=TASK_TRAIN, bind=True, base=TrainTask, kind="train")
def train(self: FleetTask, payload: Any) -> dict[str, Any]:
    return self.run_job(payload, _train)


@app.task(name=TASK_COMPRESS, bind=True, base=FleetTask, kind="compress")
def compress(self: FleetTask, payload: Any) -> dict[str, Any]:
    return self.run_job(payload, _compress)
