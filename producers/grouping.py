"""Groups of inference jobs: validation, the chord that aggregates them, its task ids."""

from __future__ import annotations

from celery import Celery, chord
from celery.canvas import Signature

from shared.names import TASK_AGGREGATE


def aggregate_ids(group_id: str) -> tuple[str, str]:
    """Task ids of a group's chord callback and of its errback."""
    return f"{group_id}-aggregate", f"{group_id}-aggregate-on-error"


def send_group(app: Celery, signatures: list[Signature], group_id: str, *, aggregate: bool) -> None:
    """Send a group's jobs; with ``aggregate`` as a chord whose callback stores the summary."""
    if not aggregate:
        for signature in signatures:
            signature.apply_async()
        return
    body, errback = (
        app.signature(TASK_AGGREGATE, args=(group_id,), immutable=True, task_id=task_id)
        for task_id in aggregate_ids(group_id)
    )
    # A failed member fails the chord; the same task, as its errback, still aggregates.
    body.link_error(errback)
    chord(signatures, app=app)(body)
