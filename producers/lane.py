"""The online lane's client side (torch-free): one ``XADD`` per request, futures resolved by
one listener thread per client.

::

    from producers import Client
    with Client() as client:
        answer = client.infer("digits-cnn@production", array)        # blocks, ~ms
        future = client.infer_async("digits-cnn", array, top_k=3)    # concurrent.futures
        answer = await client.lane.infer_aio("digits-cnn", array)    # asyncio

Each request is checked and added in one round trip by a small Lua script: when the lane's
backlog (both of its streams: every entry there is a request not yet answered) has reached
``lane_max_backlog``, nothing is added and :class:`~shared.errors.Overloaded` is raised.
Streams of unanswered requests are never trimmed.

Replies come back on this client's own stream (``lane_reply_key``): the listener reads
it from the last entry it handled (``XREAD BLOCK``), resolves each future by its request
id, and deletes the entries it handled in its next round trip. Reading removes nothing, so
a connection lost mid-read (Redis restarted or killed) loses no reply: the listener reads
again from the same place. A reply for an id no longer waited on (a duplicate after a
worker was replaced, or one that came after its timeout) is dropped (and counted in
``stray_replies``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import redis

from shared.errors import InvalidJob, JobFailed, JobTimeout, Overloaded
from shared.lane import IMAGE_FORMATS, decode_reply, encode_request
from shared.names import DEVICE_KINDS, LANE_HIGH_PRIORITY, job_key, lane_reply_key, lane_stream
from shared.settings import Settings

log = logging.getLogger("torchfleet.lane")
LISTEN_BLOCK_S = 1
ENTRIES_PER_READ = 1000
RECONNECT_PAUSE_S = 0.2
# KEYS: the target stream, the lane's other stream. ARGV: max backlog, then field/value pairs.
SEND_SCRIPT = """
local backlog = redis.call('XLEN', KEYS[1]) + redis.call('XLEN', KEYS[2])
if backlog >= tonumber(ARGV[1]) then return backlog end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"""
SEND_SHA = hashlib.sha1(SEND_SCRIPT.encode()).hexdigest()
Answer = dict[str, Any]


class LaneClient:
    """Sends lane requests and resolves their futures; one per :class:`~producers.Client`."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self.client_id = uuid.uuid4().hex
        self.reply_key = lane_reply_key(self.client_id)
        self._futures: dict[str, Future[Answer]] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener: threading.Thread | None = None
        self._last_read = b"0-0"  # the listener's place in its reply stream
        self._handled: list[bytes] = []  # entries read, deleted with the next read
        self.stray_replies = 0  # replies for ids not waited on: duplicates, or past a timeout

    # ------------------------------------------------------------ requests
    def infer(
        self, model: str, inputs: Any, *, timeout: float | None = None, **options: Any
    ) -> Answer:
        """The answer (InferResult JSON) to one request; :class:`JobFailed` if the worker
        refused it, :class:`JobTimeout` past ``timeout`` s, :class:`Overloaded` if refused."""
        future = self.infer_async(model, inputs, **options)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            self._forget(future)
            raise JobTimeout(f"no lane answer within {timeout} s") from None

    async def infer_aio(self, model: str, inputs: Any, **options: Any) -> Answer:
        """:meth:`infer` for asyncio code (wrap in ``asyncio.wait_for`` for a timeout)."""
        return await asyncio.wrap_future(self.infer_async(model, inputs, **options))

    def infer_async(
        self,
        model: str,
        inputs: Any,
        *,
        top_k: int = 1,
        deadline: float | None = None,
        priority: int = 0,
        device: str = "any",
        store: bool = False,
        backend: str | None = None,
        request_id: str | None = None,
    ) -> Future[Answer]:
        """Send one request; a future of its answer.

        ``inputs``: a numpy array or nested lists of numbers (one sample or a batch), PNG/JPEG
        file bytes or paths (or a list of them). ``deadline``: Unix time after which the
        worker answers ``expired`` without computing. ``priority`` >= 7 takes the
        high-priority stream. ``store``: also keep the answer under the request id's result
        key (``Client.state``, ``torchfleet results``)."""
        request_id = request_id or uuid.uuid4().hex
        data, dtype, shape = lane_payload(inputs)
        fields = encode_request(
            request_id=request_id, reply_to=self.reply_key, model=model, data=data,
            dtype=dtype, shape=shape, top_k=top_k, deadline=deadline,
            submitted_at=time.time(), store=store, backend=backend,
        )  # fmt: skip
        lane = self.settings.lane_device if device == "any" else device
        if lane not in DEVICE_KINDS:
            raise InvalidJob(f"device {device!r}: use any, {' or '.join(DEVICE_KINDS)}")
        future: Future[Answer] = Future()
        with self._lock:
            self._futures[request_id] = future
        self._ensure_listener()
        try:
            self._send(lane, priority >= LANE_HIGH_PRIORITY, fields, request_id if store else None)
        except BaseException:
            self._forget_id(request_id)
            raise
        return future

    def _send(
        self, lane: str, high: bool, fields: dict[bytes, bytes], stored_id: str | None
    ) -> None:
        keys = [lane_stream(lane, high=high), lane_stream(lane, high=not high)]
        args: list[Any] = [self.settings.lane_max_backlog]
        for name, value in fields.items():
            args += [name, value]
        if stored_id is None:
            added = self._eval(self.redis, keys, args)
        else:  # the id is known to `torchfleet results` from now on, as a job's is
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.evalsha(SEND_SHA, len(keys), *keys, *args)
                pipe.set(job_key(stored_id), "infer", ex=self.settings.result_ttl_s)
                added = pipe.execute(raise_on_error=False)[0]
            if isinstance(added, redis.exceptions.NoScriptError):
                added = self._eval(self.redis, keys, args)
            elif isinstance(added, Exception):
                raise added
            if isinstance(added, int):
                self.redis.delete(job_key(stored_id))
        if isinstance(added, int):
            raise Overloaded(
                f"the {lane} lane holds {added} unanswered requests (lane_max_backlog="
                f"{self.settings.lane_max_backlog}); retry later, add workers, or raise "
                "TORCHFLEET_LANE_MAX_BACKLOG"
            )

    @staticmethod
    def _eval(client: redis.Redis, keys: list[str], args: list[Any]) -> Any:
        try:
            return client.evalsha(SEND_SHA, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:  # a fresh (or restarted) Redis: load it once
            return client.eval(SEND_SCRIPT, len(keys), *keys, *args)

    def in_flight(self) -> int:
        """Requests sent and not answered yet."""
        with self._lock:
            return len(self._futures)

    def close(self) -> None:
        """Stop the listener; requests still in flight fail with :class:`JobTimeout`."""
        self._closed.set()
        if self._listener is not None:
            self._listener.join(LISTEN_BLOCK_S + 5)
        with self._lock:
            waiting, self._futures = self._futures, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(JobTimeout("the client closed before the answer came"))

    # ------------------------------------------------------------ replies
    def _ensure_listener(self) -> None:
        if self._listener is not None:
            return
        with self._lock:
            if self._listener is None and not self._closed.is_set():
                self._listener = threading.Thread(
                    target=self._listen, name="lane-replies", daemon=True
                )
                self._listener.start()

    def _listen(self) -> None:
        while not self._closed.is_set():
            try:
                bodies = self._pop()
            except redis.RedisError as e:
                log.warning("lane replies: Redis unreachable (%s); retrying", e)
                self._closed.wait(RECONNECT_PAUSE_S)
                continue
            for raw in bodies:
                self._resolve(raw)

    def _pop(self) -> list[bytes]:
        """Delete the entries handled last time and wait for the next ones, in one round
        trip; their reply bodies. On a lost connection nothing moves: read again."""
        with self.redis.pipeline(transaction=False) as pipe:
            if self._handled:
                pipe.xdel(self.reply_key, *self._handled)
            pipe.xread(
                {self.reply_key: self._last_read},
                count=ENTRIES_PER_READ,
                block=LISTEN_BLOCK_S * 1000,
            )
            read = pipe.execute()[-1]
        self._handled = []
        bodies: list[bytes] = []
        for _stream, entries in read or []:
            for entry_id, fields in entries:
                self._last_read = entry_id
                self._handled.append(entry_id)
                bodies.extend(fields.values())
        return bodies

    def _resolve(self, raw: bytes) -> None:
        try:
            reply = decode_reply(raw)
        except ValueError as e:
            log.warning("lane replies: dropped an unreadable reply: %s", e)
            return
        with self._lock:
            future = self._futures.pop(reply.request_id, None)
        if future is None or future.done():
            self.stray_replies += 1  # a duplicate, or an answer nobody waits for any more
            return
        if reply.result is not None:
            future.set_result(reply.result)
        else:
            code = reply.code or "error"
            future.set_exception(JobFailed(reply.request_id, code, reply.message or ""))

    def _forget(self, future: Future[Answer]) -> None:
        with self._lock:
            for request_id, waiting in list(self._futures.items()):
                if waiting is future:
                    del self._futures[request_id]

    def _forget_id(self, request_id: str) -> None:
        with self._lock:
            self._futures.pop(request_id, None)


def lane_payload(inputs: Any) -> tuple[bytes | list[bytes], str, list[int]]:
    """(data, dtype or image format, shape) of a request's inputs, without torch."""
    from producers.encoding import tensor_bytes

    if isinstance(inputs, bytes | bytearray | Path | str):
        inputs = [inputs]
    if isinstance(inputs, Sequence) and inputs and _is_image(inputs[0]):
        files = [Path(i).read_bytes() if isinstance(i, Path | str) else bytes(i) for i in inputs]
        formats = {image_format(f) for f in files}
        if len(formats) != 1:
            raise InvalidJob("the images of one request must share one format (png or jpeg)")
        return files, formats.pop(), [len(files)]
    raw, dtype, shape = tensor_bytes(inputs)
    return raw, dtype, shape


def _is_image(item: Any) -> bool:
    return isinstance(item, bytes | bytearray | Path | str)


def image_format(data: bytes) -> str:
    """``png`` or ``jpeg`` from a file's magic bytes, or :class:`InvalidJob`."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return IMAGE_FORMATS[0]
    if data.startswith(b"\xff\xd8\xff"):
        return IMAGE_FORMATS[1]
    raise InvalidJob("an image must be a PNG or JPEG file")
