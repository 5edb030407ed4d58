"""The job tasks: thin shells that hand a validated job to its use case and return JSON.

Every policy (admission, deadline, cancel, retries, device faults, stats) is
:class:`workers.app.FleetTask`'s; the use cases live in :mod:`workers.jobs`.
"""

from __future__ import annotations

from typing import Any

from shared.jobs import CompressJob, InferJob, TrainJob
from shared.names import TASK_COMPRESS, TASK_INFER, TASK_TRAIN, input_key
from workers.admission import Admission
from workers.app import FleetTask, app
from workers.effects import DropsCheckpoint
from workers.jobs import compression, serving, training
from workers.runtime import Runtime, get_runtime


def _infer(job: InferJob, rt: Runtime, task: FleetTask, admission: Admission) -> dict[str, Any]:
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

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        """The answer is stored: the input bytes kept for a redelivery can go."""
        inputs = args[0].get("inputs") if args and isinstance(args[0], dict) else None
        key = input_key(task_id)
        if isinstance(inputs, dict) and inputs.get("key") == key:
            get_runtime().behind.add(lambda pipe: pipe.delete(key))


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
