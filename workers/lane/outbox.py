"""What one batch leaves to write: replies, stored results, acknowledgements.

Everything goes out in the consumer's next pipeline (with its next read): one round trip
per batch. Writing it twice is harmless, so a pipeline that failed half-way is simply
sent again: a duplicate reply is ignored by the client, a result record is rewritten with
the same answer, ``XACK`` and ``XDEL`` of gone ids do nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.client import Pipeline

from shared.lane import reply_field, result_key, result_meta
from shared.names import LANE_GROUP


@dataclass
class Outbox:
    replies: dict[str, list[bytes]] = field(default_factory=dict)  # reply key -> replies
    stored: list[tuple[str, str]] = field(default_factory=list)  # result key, Celery record
    acks: dict[str, list[bytes]] = field(default_factory=dict)  # stream -> entry ids

    def reply(self, reply_to: str, body: bytes) -> None:
        self.replies.setdefault(reply_to, []).append(body)

    def store(self, request_id: str, meta: str) -> None:
        self.stored.append((result_key(request_id), meta))

    def store_error(self, request_id: str, code: str, message: str) -> None:
        self.store(request_id, result_meta(request_id, error=(code, message)))

    def ack(self, stream: str, entry_id: bytes) -> None:
        self.acks.setdefault(stream, []).append(entry_id)

    def merge(self, other: Outbox) -> None:
        for key, bodies in other.replies.items():
            self.replies.setdefault(key, []).extend(bodies)
        self.stored.extend(other.stored)
        for stream, ids in other.acks.items():
            self.acks.setdefault(stream, []).extend(ids)

    def __bool__(self) -> bool:
        return bool(self.replies or self.stored or self.acks)

    def write(self, pipe: Pipeline, *, reply_ttl_ms: int, result_ttl_s: int) -> None:
        """Queue every write on ``pipe``: replies first, then results, then ack and delete."""
        for key, bodies in self.replies.items():
            # One stream entry per client per batch; the client deletes what it has read.
            pipe.xadd(key, {reply_field(i): body for i, body in enumerate(bodies)})
            pipe.pexpire(key, reply_ttl_ms)
        for key, meta in self.stored:
            pipe.set(key, meta, ex=result_ttl_s)
            pipe.publish(key, meta)  # Celery's result consumers wait on this channel
        for stream, ids in self.acks.items():
            pipe.xack(stream, LANE_GROUP, *ids)
            pipe.xdel(stream, *ids)  # acknowledged: never trim, only delete what was answered
