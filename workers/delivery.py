"""One delivery of a job from its admission to its end, as :class:`FleetTask` runs it.

:func:`delivery` admits the delivery (riding through a Redis outage), holds the worker's
:class:`~workers.gate.Gate` (alone for a suspect, a job a worker died under before), puts the
delivery's token in place once the job really starts, and removes it when the delivery ends
however it ends, so that only a worker dying under the job counts against it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from workers.admission import Admission, mark_running, settle
from workers.outage import through_outages
from workers.runtime import Runtime

log = logging.getLogger("torchfleet.worker")


@contextmanager
def delivery(
    task: Any, rt: Runtime, payload: Any, cancel_id: str | None = None
) -> Iterator[Admission]:
    """Admit this delivery of ``task``'s job, run the body under the gate, settle it.

    ``task`` is the fleet task (its ``request.id`` and its ``admit(rt, payload, token=...,
    mark=..., cancel_id=...)``; ``cancel_id``: whose cancel flag counts, the job's own by
    default). Raises what the admission raises (dead letter, oversized payload).
    """
    job_id = task.request.id
    token = uuid.uuid4().hex
    # While a suspect runs alone or waits to, a new job waits too: put its token in place
    # once it starts, not now (a death in between is not its doing).
    mark = not rt.gate.contended()
    admission = through_outages(
        rt, job_id, lambda: task.admit(rt, payload, token=token, mark=mark, cancel_id=cancel_id)
    )
    placed = admission.marked
    try:
        if admission.stored is not None:
            yield admission
            return
        wait_s = rt.settings.isolation_wait_s
        with rt.gate.hold(alone=admission.suspect, wait_s=wait_s) as alone:
            if admission.suspect:
                log.warning(
                    "job %s: a worker died under it %d time(s) before; it runs %s",
                    job_id,
                    admission.crashes,
                    "alone" if alone else f"beside others (no quiet moment within {wait_s} s)",
                )
            if not placed:
                through_outages(
                    rt,
                    job_id,
                    lambda: mark_running(
                        rt.client, job_id, token, alone=alone, ttl_s=rt.settings.result_ttl_s
                    ),
                )
                placed = True
            yield admission
    finally:
        # Off the job's path; queued writes wait out an outage. Only a worker that dies in
        # the moment before the write leaves the token for the next delivery to count.
        if placed:
            rt.behind.add(lambda pipe: settle(pipe, job_id, token))
