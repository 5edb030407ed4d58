"""The fleet side of job groups: the chord callback that aggregates a group's results."""

from __future__ import annotations

import json
from typing import Any

from celery import Task

from shared.errors import InvalidJob
from shared.names import TASK_AGGREGATE, group_key, group_summary_key
from shared.stats import member_from_meta, summarize_group
from workers.app import app
from workers.runtime import get_runtime


@app.task(name=TASK_AGGREGATE, bind=True, throws=(InvalidJob,))
def aggregate(self: Task, group_id: str, *_: Any) -> dict[str, Any]:
    """Summarize a finished group and keep the summary beside it (chord body and errback)."""
    rt = get_runtime()
    raw = rt.client.get(group_key(group_id))
    if raw is None:
        raise InvalidJob(f"no group {group_id!r} (never submitted, or expired)")
    job_ids = list(json.loads(raw)["job_ids"])
    backend = self.backend
    metas = backend.client.mget([backend.get_key_for_task(job_id) for job_id in job_ids])
    members = [member_from_meta(json.loads(m) if m else None) for m in metas]
    summary = summarize_group(group_id, members, by=rt.worker)
    document = summary.model_dump_json()
    rt.client.set(group_summary_key(group_id), document, ex=rt.settings.result_ttl_s)
    return summary.model_dump(mode="json")
