"""``torchfleet_lane``: a broadcast control command that pauses, resumes or reports on the
lane consumers of the workers it reaches (`torchfleet bench` pauses them to fill a lane,
then times the drain; operators pause a lane to drain a worker)."""

from __future__ import annotations

from typing import Any

from celery.worker.control import control_command

from shared.names import CONTROL_LANE
from workers.lane import current

ACTIONS = ("pause", "resume", "status")


def lane_control(action: str) -> dict[str, Any]:
    """Apply ``action`` to this process's consumer; its status afterwards."""
    consumer = current()
    if consumer is None:
        return {"skipped": "no lane consumer in this worker"}
    if action not in ACTIONS:
        return {"error": f"unknown action {action!r}; use one of {', '.join(ACTIONS)}"}
    if action == "pause" and not consumer.pause():
        return {"error": "the consumer did not park in time", **consumer.status()}
    if action == "resume":
        consumer.resume()
    return consumer.status()


def register_lane_command() -> None:
    """Register :func:`torchfleet_lane` as a broadcast control command (at worker start)."""
    control_command(args=[("action", str)], signature="pause|resume|status", name=CONTROL_LANE)(
        torchfleet_lane
    )


def torchfleet_lane(state: Any, action: str = "status") -> dict[str, Any]:
    """Pause, resume or report on this worker's lane consumer."""
    return lane_control(action)
