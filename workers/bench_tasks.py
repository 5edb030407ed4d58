"""The bench's own tasks, on a queue only workers started with ``--bench`` consume.

``naive_infer`` is the `naive` arm of `torchfleet bench`: the inference task a user writes
first. It loads the model from the store on every request (no cache, no batching, no
warm-up), so the benchmark can show what the fleet's serving path buys. ``noop`` does
nothing: its round trip is the queue's own cost.
"""

from __future__ import annotations

from typing import Any

import torch

from shared.jobs import InferJob
from shared.names import TASK_NAIVE_INFER, TASK_NOOP
from workers.app import app
from workers.inference import decode_inputs
from workers.modelio import build_module
from workers.runtime import get_runtime


@app.task(name=TASK_NAIVE_INFER)
def naive_infer(payload: dict[str, Any]) -> dict[str, Any]:
    """Resolve, load, rebuild and run the model for this one request; top-1 labels."""
    job = InferJob.model_validate(payload)
    rt = get_runtime()
    resolved = rt.registry.resolve(job.model)
    tensors, manifest = rt.store.get_model(resolved.record.digest)
    module = build_module(manifest, tensors)
    batch = decode_inputs(job.inputs, manifest, rt.settings.max_inputs_per_job)
    with torch.no_grad():
        labels = module(batch).argmax(1).tolist()
    return {"model_digest": resolved.record.digest, "labels": labels}


@app.task(name=TASK_NOOP)
def noop(payload: Any = None) -> Any:
    """Does nothing: its round trip is the queue's own cost."""
    return payload
