"""The size and depth limits of a job's JSON payload, applied by the producer before it sends
a job and by the worker before it decodes one (a producer that skips them is refused there)."""

from __future__ import annotations

from typing import Any

from shared.errors import InvalidJob

MAX_JSON_DEPTH = 32


def check_payload(payload: Any, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse a job payload over ``max_bytes`` (approximate JSON size) or nested too deeply.

    Walks the decoded JSON without recursion, so a hostile nesting cannot blow the stack.
    """
    size = 0
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            raise InvalidJob(f"the job nests deeper than {max_depth} levels")
        if isinstance(value, dict):
            size += 2
            for key, item in value.items():
                size += len(str(key)) + 4
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            size += 2
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            size += len(value) + 2
        else:
            size += 8
        if size > max_bytes:
            raise InvalidJob(
                f"the job is larger than max_payload_bytes={max_bytes}; send fewer inputs "
                "per job or raise TORCHFLEET_MAX_PAYLOAD_BYTES"
            )
