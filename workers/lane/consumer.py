"""The lane consumer: one thread per worker device, reading its lane's streams in batches.

Each turn is ONE round trip: the previous batch's writes (every reply, stored results,
``XACK`` and ``XDEL``), then ``XREADGROUP ... COUNT n BLOCK ms`` on the high-priority and
the normal stream, then the registry hashes of the models served lately, read after the
entries arrived (so a promoted alias is seen by the next batch at no extra cost). Then
the batch is served (:func:`workers.lane.serve.serve_batch`) and its stats records go to
the worker's write-behind queue.

Connection errors (Redis restarting, paused, unreachable) are waited out with backoff;
the unsent writes are sent again and the entries this consumer read but may not have
seen are read again from its own pending list. Every few seconds it claims the requests
of dead consumers, one at a time (:mod:`workers.lane.recovery`). It can be paused and
resumed (for the drain measurement of `torchfleet bench`, and for operators).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import redis

from shared.connection import redis_client
from shared.lane import F_STORE, encode_error, reply_address
from shared.names import LANE_GROUP, lane_alive_key, lane_streams, model_key
from workers.lane.batch import Entry, read_count
from workers.lane.faults import dead_letter_request, describe_entry, replace_worker
from workers.lane.outbox import Outbox
from workers.lane.records import append_records
from workers.lane.recovery import Recovered, Recovery
from workers.lane.serve import Served, serve_batch
from workers.runtime import Runtime

log = logging.getLogger("torchfleet.lane")
KNOWN_MODELS = 8  # registry hashes read with every batch
BACKOFF_START_S = 0.05
BACKOFF_MAX_S = 2.0
STALL_S = 120.0  # a loop stuck this long stops beating: its requests may be claimed
OWN_PAGE = 1000


class LaneConsumer:
    """Serves one lane (``cpu`` or ``cuda``) from inside a worker process."""

    def __init__(self, rt: Runtime, *, lane: str | None = None) -> None:
        settings = rt.settings
        self.rt = rt
        self.lane = lane or rt.device.type
        self.streams = lane_streams(self.lane)
        self.name = rt.worker
        self.count = read_count(settings, rt.device.type)
        # No silent resend: a lost answer must reach the loop, which reads its own pending
        # entries again (a resent XREADGROUP would leave the first read's entries unseen).
        self.client: redis.Redis = redis_client(settings, retry=False)
        self.recovery = Recovery(
            self.client,
            self.streams,
            self.name,
            self.lane,
            settings.lane_claim_idle_ms,
            settings.lane_max_deliveries,
        )
        self.outbox = Outbox()
        self.known: OrderedDict[str, None] = OrderedDict()
        self.answered = 0
        self.batches = 0
        self.resumed_at = 0.0
        self.answered_since_resume = 0
        self.last_batch_at = 0.0
        self._tick = time.monotonic()
        self._stop = threading.Event()
        self._active = threading.Event()
        self._active.set()
        self._parked = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lane-{self.lane}", daemon=True)
        self._beat = threading.Thread(target=self._heartbeat, name="lane-heartbeat", daemon=True)

    # ------------------------------------------------------------ control
    def start(self) -> None:
        self.ensure_groups()
        self._write_heartbeat()
        self._thread.start()
        self._beat.start()
        log.info("lane %s served by %s (batches of up to %d)", self.lane, self.name, self.count)

    def stop(self, timeout_s: float | None = None) -> None:
        """Finish the batch in hand, send its writes, stop beating."""
        self._stop.set()
        self._active.set()
        wait = timeout_s if timeout_s is not None else self.rt.settings.lane_block_ms / 1000 + 30
        self._thread.join(wait)
        self._beat.join(1.0)
        try:
            self.client.delete(lane_alive_key(self.lane, self.name))
        except redis.RedisError as e:
            log.warning("lane heartbeat of %s not removed: %s", self.name, e)
        self.client.close()

    def pause(self, timeout_s: float = 10.0) -> bool:
        """Stop reading once the batch in hand is answered; True once the loop is parked."""
        self._active.clear()
        return self._parked.wait(timeout_s)

    def resume(self) -> None:
        self.resumed_at = time.perf_counter()
        self.answered_since_resume = 0
        self._parked.clear()
        self._active.set()

    def status(self) -> dict[str, Any]:
        """What `torchfleet bench` and operators read: counts, and the last drain's timing."""
        since = self.last_batch_at - self.resumed_at if self.resumed_at else None
        return {
            "worker": self.name,
            "lane": self.lane,
            "paused": not self._active.is_set(),
            "batch": self.count,
            "answered": self.answered,
            "batches": self.batches,
            "answered_since_resume": self.answered_since_resume,
            "busy_s_since_resume": since,
        }

    def ensure_groups(self) -> None:
        """Create the consumer group on both streams (reading from the start: every entry
        in a lane stream is an unanswered request)."""
        for stream in self.streams:
            try:
                self.client.xgroup_create(stream, LANE_GROUP, id="0", mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    # ------------------------------------------------------------ the loop
    def _run(self) -> None:
        backoff = BACKOFF_START_S
        reread_own = True
        next_sweep = 0.0
        while not self._stop.is_set():
            self._tick = time.monotonic()
            try:
                if not self._active.is_set():
                    self._park()
                    continue
                if reread_own:
                    self._flush()
                    self._serve_recovered(self.recovery.check_own(self._read_own()))
                    reread_own = False
                if time.monotonic() >= next_sweep:
                    self._flush()
                    for recovered in self.recovery.sweep():  # one at a time, each answered
                        self._serve_recovered(recovered)
                    next_sweep = time.monotonic() + self.rt.settings.lane_claim_interval_s
                entries, hashes = self._exchange()
                if entries:
                    self._serve(entries, hashes)
                backoff = BACKOFF_START_S
            except (redis.ConnectionError, redis.TimeoutError) as e:
                log.warning("lane %s: Redis unreachable (%s); retrying", self.lane, e)
                reread_own = True
                self._stop.wait(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
            except redis.ResponseError as e:
                self._on_response_error(e)
                self._stop.wait(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
            except Exception:  # one bad batch must not end the lane
                log.exception("lane %s: batch failed", self.lane)
                # Its entries stay pending here: read them again (each read is a delivery,
                # so a batch that always fails ends in the dead letters, not in a loop).
                reread_own = True
                self._stop.wait(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
        self._final_flush()

    def _park(self) -> None:
        self._flush()
        self._parked.set()
        while not self._active.wait(0.5) and not self._stop.is_set():
            self._tick = time.monotonic()

    def _on_response_error(self, error: redis.ResponseError) -> None:
        if "NOGROUP" in str(error):  # Redis lost the group (a restart without persistence)
            log.warning("lane %s: consumer group missing, creating it again", self.lane)
            self.ensure_groups()
            return
        log.error("lane %s: Redis refused a command: %s", self.lane, error)

    def _exchange(self) -> tuple[list[Entry], Mapping[str, Any]]:
        """One round trip: the pending writes, the next read, the known models' hashes."""
        names = list(self.known)
        with self.client.pipeline(transaction=False) as pipe:
            self._queue_writes(pipe)
            writes = len(pipe)
            pipe.xreadgroup(
                LANE_GROUP,
                self.name,
                {stream: ">" for stream in self.streams},
                count=self.count,
                block=self.rt.settings.lane_block_ms,
            )
            for name in names:
                pipe.hgetall(model_key(name))
            replies = pipe.execute(raise_on_error=False)
        self._written(replies[:writes])
        read = replies[writes]
        if isinstance(read, Exception):
            raise read
        hashes = {
            n: h for n, h in zip(names, replies[writes + 1 :], strict=True) if isinstance(h, dict)
        }
        return self._entries(read), hashes

    def _entries(self, read: Any) -> list[Entry]:
        """A read's entries, the high-priority stream's first."""
        by_stream: dict[str, list[Entry]] = {}
        for stream, items in read or []:
            name = stream.decode() if isinstance(stream, bytes) else stream
            by_stream[name] = [Entry(name, i, f or {}) for i, f in items]
        return [entry for stream in self.streams for entry in by_stream.get(stream, [])]

    def _read_own(self) -> list[Entry]:
        """This consumer's own pending entries (read before a lost connection or a restart)."""
        read = self.client.xreadgroup(
            LANE_GROUP, self.name, {stream: "0" for stream in self.streams}, count=OWN_PAGE
        )
        return self._entries(read)

    def _serve(self, entries: list[Entry], hashes: Mapping[str, Any]) -> None:
        served = serve_batch(self.rt, entries, hashes, self._fetch, lane=self.lane)
        self._absorb(served)

    def _serve_recovered(self, recovered: Recovered) -> None:
        for entry, deliveries in recovered.exhausted:
            self._dead_letter(entry, deliveries)
        if recovered.entries:
            self._serve(recovered.entries, {})
        self._flush()

    def _absorb(self, served: Served) -> None:
        self.outbox.merge(served.outbox)
        if served.records:
            self.rt.behind.add(append_records(served.records, self.rt.settings.stats_maxlen))
        for refusal in served.unanswerable:
            reason = f"unanswerable lane request ({refusal.code}): {refusal.message}"
            log.warning("lane %s entry %r: %s", self.lane, refusal.entry.entry_id, reason)
            self._dead_letter(refusal.entry, 1, reason=reason, reply=False)
        self.answered += served.answered
        self.answered_since_resume += served.answered
        self.batches += 1
        self.last_batch_at = time.perf_counter()
        for model in served.models:
            self.known[model] = None
            self.known.move_to_end(model)
        while len(self.known) > KNOWN_MODELS:
            self.known.popitem(last=False)
        if served.fatal is not None:
            log.error("lane %s: fatal device error, worker replaced: %s", self.lane, served.fatal)
            self._flush()
            self._stop.set()
            replace_worker()

    def _dead_letter(
        self, entry: Entry, deliveries: int, *, reason: str | None = None, reply: bool = True
    ) -> None:
        limit = self.rt.settings.lane_max_deliveries
        reason = reason or f"delivered {deliveries - 1} times without an answer (max {limit})"
        request_id, reply_to = reply_address(entry.fields)
        described = describe_entry(entry, request_id)
        dead_letter_request(
            self.client, request=described, reason=reason, deliveries=deliveries, worker=self.name
        )
        if reply and request_id is not None and reply_to is not None:
            message = f"request {request_id} {reason}; it is in the dead-letter list"
            self.outbox.reply(reply_to, encode_error(request_id, "dead_lettered", message))
            if entry.fields.get(F_STORE) == b"1":
                self.outbox.store_error(request_id, "dead_lettered", message)
        self.outbox.ack(entry.stream, entry.entry_id)

    def _fetch(self, names: list[str]) -> dict[str, Any]:
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(model_key(name))
            return dict(zip(names, pipe.execute(), strict=True))

    # ------------------------------------------------------------ writes
    def _queue_writes(self, pipe: Any) -> None:
        settings = self.rt.settings
        self.outbox.write(
            pipe, reply_ttl_ms=settings.lane_reply_ttl_s * 1000, result_ttl_s=settings.result_ttl_s
        )

    def _written(self, replies: list[Any]) -> None:
        """The writes went out (a refused one is logged: a reply key of the wrong type...)."""
        self.outbox = Outbox()
        for reply in replies:
            if isinstance(reply, Exception):
                log.warning("lane %s: a write was refused: %s", self.lane, reply)

    def _flush(self) -> None:
        if not self.outbox:
            return
        with self.client.pipeline(transaction=False) as pipe:
            self._queue_writes(pipe)
            replies = pipe.execute(raise_on_error=False)
        self._written(replies)

    def _final_flush(self) -> None:
        try:
            self._flush()
        except redis.RedisError as e:  # its requests stay pending: another worker claims them
            log.warning("lane %s: last writes not sent (%s)", self.lane, e)

    # ------------------------------------------------------------ heartbeat
    def _heartbeat(self) -> None:
        interval = self.rt.settings.lane_heartbeat_s
        while not self._stop.wait(interval):
            if time.monotonic() - self._tick < STALL_S:
                self._write_heartbeat()

    def _write_heartbeat(self) -> None:
        ttl_ms = int(self.rt.settings.lane_heartbeat_s * 3000)
        try:
            self.client.set(lane_alive_key(self.lane, self.name), b"1", px=ttl_ms)
        except redis.RedisError as e:
            log.warning("lane heartbeat of %s not written: %s", self.name, e)
