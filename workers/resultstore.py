"""The result backend as workers use it: Celery's Redis backend with two fleet policies.

* A job that did not succeed (FAILURE or REVOKED: failed, refused, expired, dead-lettered,
  cancelled) keeps its result for ``failure_ttl_s``, not ``result_ttl_s``: an answer nobody
  can use should not hold Redis's memory for a day.
* A result write that Redis refuses because it is full is waited out
  (:func:`workers.redisfull.wait_out`) instead of raised: Celery cannot recover from a
  failed result write (the delivery is neither acknowledged nor released, and the worker
  takes no more jobs).
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.redis import RedisBackend

from workers.redisfull import wait_out

UNSUCCESSFUL = frozenset({states.FAILURE, states.REVOKED})


class FleetBackend(RedisBackend):
    """Celery's Redis result backend, with failure TTLs and full-Redis waits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        failure_ttl = self.app.conf.get("result_failure_expires")
        self.failure_ttl_s = int(failure_ttl) if failure_ttl else self.expires

    def _set_with_state(self, key: str, value: Any, state: str) -> Any:
        ttl = self.failure_ttl_s if state in UNSUCCESSFUL else self.expires
        return wait_out(lambda: self.set(key, value, ttl), f"the result {key!r}")


def backend_class() -> str:
    """The backend's import path, as Celery's ``backend`` URL prefix takes it."""
    return f"{FleetBackend.__module__}:{FleetBackend.__qualname__}"
