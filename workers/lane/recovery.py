"""Requests left pending by a consumer that died: found, claimed, and capped.

A consumer's requests stay in the group's pending list until it answers them. Every
``lane_claim_interval_s`` a live consumer looks for pending entries whose owner's heartbeat
(``lane_alive_key``) is gone; if there are any it takes over, with ``XAUTOCLAIM``, the
entries idle past ``lane_claim_idle_ms`` (longer than any batch runs). ``XAUTOCLAIM``
cannot be told to take only one consumer's entries, so a live consumer stuck on one batch
for that long loses its entries too: at-least-once, and the client ignores the duplicate.

Each claim bumps the entry's delivery count; past ``lane_max_deliveries`` the request goes
to the dead-letter list and its client gets an error (a poison request that kills every
worker that reads it stops there). A dead consumer's entries are suspects (one of them may
be what killed it), so they are claimed ONE at a time and each is answered before the next
is claimed: a poison request then kills its worker with only itself in hand, and only its
own delivery count climbs. Claimed in a batch, its innocent neighbours would die with it
on every try and reach the dead letters beside it. Redis 6.2 and 7.0 answer ``XAUTOCLAIM``
differently for entries deleted while pending (see :func:`parse_autoclaim`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from shared.names import LANE_GROUP, lane_alive_key
from workers.lane.batch import Entry

log = logging.getLogger("torchfleet.lane")
CLAIM_PAGE = 100  # pending entries listed at once (Redis 6.2 ghosts)
MAX_CLAIMS = 1000  # a sweep claims at most this many entries; the next sweep goes on


@dataclass(frozen=True)
class Claimed:
    """One ``XAUTOCLAIM`` page: the next cursor, live entries, deleted ids, and whether
    Redis 6.2 reported deleted entries without their ids."""

    cursor: bytes
    entries: list[tuple[bytes, dict[bytes, bytes]]]
    deleted: list[bytes] = field(default_factory=list)
    anonymous_deleted: int = 0


def parse_autoclaim(reply: Sequence[Any]) -> Claimed:
    """Both shapes of an ``XAUTOCLAIM`` reply (as redis-py parses it).

    7.0: ``[cursor, entries, deleted ids]``; deleted entries are dropped from the pending
    list. 6.2: ``[cursor, entries]`` with a ``(None, None)`` entry per deleted one, which
    stays pending under the claimer until it is acknowledged."""
    cursor = _bytes(reply[0])
    entries = []
    anonymous = 0
    for item in reply[1] or []:
        entry_id, fields = item[0], item[1]
        if entry_id is None:
            anonymous += 1
            continue
        entries.append((_bytes(entry_id), dict(fields or {})))
    deleted = [_bytes(i) for i in reply[2]] if len(reply) > 2 and reply[2] else []
    return Claimed(cursor, entries, deleted, anonymous)


@dataclass
class Recovered:
    """What a sweep hands the consumer: entries to serve, entries over the delivery cap."""

    entries: list[Entry] = field(default_factory=list)
    exhausted: list[tuple[Entry, int]] = field(default_factory=list)  # entry, deliveries


@dataclass
class Recovery:
    client: redis.Redis
    streams: Sequence[str]
    consumer: str
    lane: str
    claim_idle_ms: int
    max_deliveries: int

    def sweep(self) -> Iterator[Recovered]:
        """Claim the idle entries of dead consumers one by one: each item holds one entry
        (to serve, or over the delivery cap). Answer it before taking the next: the next
        claim happens only then, so an entry still unclaimed when its claimer dies keeps
        its delivery count."""
        for stream in self.streams:
            if not self.dead_owners(stream):
                continue
            taken = 0
            for claimed in self._claim(stream):
                taken += 1
                recovered = Recovered()
                self._split(stream, [claimed], recovered)
                yield recovered
            if taken:
                log.warning("lane %s: took over %d request(s) of dead consumers", stream, taken)

    def dead_owners(self, stream: str) -> list[str]:
        """Consumers with pending entries in ``stream`` whose heartbeat is gone."""
        summary = self.client.xpending(stream, LANE_GROUP)
        owners = [
            _text(c["name"])
            for c in summary.get("consumers") or []
            if int(c["pending"]) > 0 and _text(c["name"]) != self.consumer
        ]
        if not owners:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            for owner in owners:
                pipe.exists(lane_alive_key(self.lane, owner))
            alive = pipe.execute()
        return [owner for owner, up in zip(owners, alive, strict=True) if not up]

    def _claim(self, stream: str) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
        """The idle entries, each claimed when the previous one is handed back."""
        cursor: bytes = b"0-0"
        for _ in range(MAX_CLAIMS):
            reply = self.client.xautoclaim(
                stream, LANE_GROUP, self.consumer, self.claim_idle_ms, cursor, count=1
            )
            page = parse_autoclaim(reply)
            if page.anonymous_deleted:
                self._drop_ghosts(stream, {entry_id for entry_id, _ in page.entries})
            yield from page.entries
            cursor = page.cursor
            if cursor == b"0-0":
                return

    def _drop_ghosts(self, stream: str, live: set[bytes]) -> None:
        """Redis 6.2: acknowledge the deleted entries just claimed, whose ids it did not say
        (every entry this consumer claimed before them is answered and acknowledged)."""
        pending = self.client.xpending_range(
            stream, LANE_GROUP, "-", "+", CLAIM_PAGE, consumername=self.consumer
        )
        ghosts = [p["message_id"] for p in pending if p["message_id"] not in live]
        if ghosts:
            self.client.xack(stream, LANE_GROUP, *ghosts)

    def _split(
        self, stream: str, claimed: list[tuple[bytes, dict[bytes, bytes]]], into: Recovered
    ) -> None:
        counts = delivery_counts(self.client, stream, [entry_id for entry_id, _ in claimed])
        for entry_id, fields in claimed:
            entry = Entry(stream, entry_id, fields)
            deliveries = counts.get(entry_id, 1)
            if deliveries > self.max_deliveries:
                into.exhausted.append((entry, deliveries))
            else:
                into.entries.append(entry)

    def check_own(self, entries: Sequence[Entry]) -> Recovered:
        """Split this consumer's own re-read entries (after a reconnect) by delivery count."""
        recovered = Recovered()
        by_stream: dict[str, list[Entry]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry)
        for stream, items in by_stream.items():
            self._split(stream, [(e.entry_id, dict(e.fields)) for e in items], recovered)
        return recovered


def delivery_counts(client: redis.Redis, stream: str, ids: Sequence[bytes]) -> dict[bytes, int]:
    """How often each pending entry was delivered (``XPENDING``), in one round trip."""
    if not ids:
        return {}
    with client.pipeline(transaction=False) as pipe:
        for entry_id in ids:
            pipe.xpending_range(stream, LANE_GROUP, entry_id, entry_id, 1)
        replies = pipe.execute()
    counts = {}
    for entry_id, reply in zip(ids, replies, strict=True):
        if reply:
            counts[entry_id] = int(reply[0]["times_delivered"])
    return counts


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
