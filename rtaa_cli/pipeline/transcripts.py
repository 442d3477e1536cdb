"""Transcript fan-out: per-interaction feeds, the firehose, and an optional JSONL sink.

Each message is serialised once (orjson) and queued to every subscriber as the same bytes. A subscriber
has a bounded queue (``subscriber_queue`` messages); when a slow reader lets it fill, that subscriber
alone is closed with 1008 "subscriber too slow" and the call and other subscribers are unaffected.
Per-interaction subscribers are closed with 1000 "call ended" after the call's ``call_ended``.

Entitlement (auth.may_read): a per-call subscriber whose principal did not stream the call (and is not a
reader) is closed 1008 "not entitled to this call" when it subscribes to a live call, or when the call it
waits for starts; it never receives a message of that call. The firehose is refused (403) at the
handshake to non-readers (server.py).

Feed wait: a per-call subscriber whose id is not a live call waits at most ``feed_wait_s`` for that call to
start, then is closed 1008 "no such call within 60 s" (``rtaa_idle_closes_total{limit="feed"}``), so
subscriptions to ids that never exist do not stay open forever.
"""
from __future__ import annotations

import asyncio
import time
from typing import IO, Any, Callable

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from rtaa_cli import logs
from rtaa_cli.protocols import feed
from rtaa_cli.protocols.closecodes import Close
from rtaa_cli.pipeline.auth import ANONYMOUS, Principal, may_read
from rtaa_cli.pipeline.metrics import PipelineMetrics

log = logs.get("rtaa.transcripts")

NOT_ENTITLED_REASON = "not entitled to this call"
_CALL_ENDED = object()  # queue sentinel: close the per-call subscriber after this


class Subscriber:
    __slots__ = ("ws", "queue", "interaction_id", "too_slow", "principal", "wait_timer")

    def __init__(self, ws: ServerConnection, maxsize: int, interaction_id: str | None,
                 principal: Principal = ANONYMOUS) -> None:
        self.ws = ws
        self.principal = principal
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self.interaction_id = interaction_id
        self.too_slow = False
        self.wait_timer: asyncio.TimerHandle | None = None  # feed wait for a call that is not live yet


class TranscriptHub:
    def __init__(self, metrics: PipelineMetrics, maxsize: int = 1000, jsonl: IO[bytes] | None = None,
                 owner_of: Callable[[str], str | None] = lambda _: None, feed_wait_s: float = 60.0) -> None:
        self.metrics = metrics
        self.feed_wait_s = feed_wait_s
        self._owner_of = owner_of  # interaction -> principal that streams it (None: not live)
        self.maxsize = maxsize
        self._jsonl = jsonl
        self._by_call: dict[str, set[Subscriber]] = {}
        self._firehose: set[Subscriber] = set()

    # -- publishing (synchronous: the worker never waits on a reader) ----------------------------
    def publish(self, msg: dict[str, Any]) -> None:
        msg[feed.SENT_AT] = time.time()
        data = orjson.dumps(msg)
        if self._jsonl is not None:
            self._jsonl.write(data + b"\n")
        iid = msg["interaction_id"]
        for sub in self._by_call.get(iid, ()):
            self._offer(sub, data)
        for sub in self._firehose:
            self._offer(sub, data)

    def call_started(self, interaction_id: str, stream_sid: str) -> None:
        self.deliver(feed.call_started_message(interaction_id, stream_sid, time.time()))

    def call_ended(self, interaction_id: str, reason: str) -> None:
        self.deliver(feed.call_ended_message(interaction_id, reason, time.time()))

    def deliver(self, msg: dict[str, Any]) -> None:
        """Any feed message, local or from another process (Redis bus): the same effects either way."""
        kind = msg["type"]
        iid = msg["interaction_id"]
        if kind == feed.Kind.CALL_STARTED:
            owner = self._owner_of(iid)
            for sub in list(self._by_call.get(iid, ())):
                if not may_read(sub.principal, owner):
                    self._deny(sub, owner)
        self.publish(msg)
        if kind == feed.Kind.CALL_ENDED:
            for sub in self._by_call.get(iid, ()):
                self._offer(sub, _CALL_ENDED)
            if self._jsonl is not None:
                self._jsonl.flush()

    def _offer(self, sub: Subscriber, data: Any) -> None:
        if sub.wait_timer is not None:  # a message of its call: the call exists (also on another ingest)
            sub.wait_timer.cancel()
            sub.wait_timer = None
        if sub.too_slow:
            return
        try:
            sub.queue.put_nowait(data)
        except asyncio.QueueFull:
            sub.too_slow = True
            self.metrics.subscribers_too_slow.inc()
            log.warning("subscriber_too_slow", interaction_id=sub.interaction_id, queue=self.maxsize)
            asyncio.get_running_loop().create_task(sub.ws.close(Close.POLICY_VIOLATION, "subscriber too slow"))

    def _deny(self, sub: Subscriber, owner: str | None) -> None:
        sub.too_slow = True  # receives nothing more
        self.metrics.bad_input.labels(kind="not_entitled").inc()
        log.warning("not_entitled", interaction_id=sub.interaction_id, principal=sub.principal.name)
        asyncio.get_running_loop().create_task(sub.ws.close(Close.POLICY_VIOLATION, NOT_ENTITLED_REASON))

    def _wait_expired(self, sub: Subscriber) -> None:
        sub.wait_timer = None
        if sub.too_slow or self._owner_of(sub.interaction_id or "") is not None:
            return  # closing already, or the call went live (its call_started is on the way)
        sub.too_slow = True  # receives nothing more
        reason = f"no such call within {self.feed_wait_s:g} s"
        self.metrics.idle_closes.labels(limit="feed").inc()
        log.warning("idle_close", interaction_id=sub.interaction_id, limit="feed", close_code=int(Close.POLICY_VIOLATION),
                    reason=reason)
        asyncio.get_running_loop().create_task(sub.ws.close(Close.POLICY_VIOLATION, reason))

    def depth(self) -> int:
        total = sum(s.queue.qsize() for s in self._firehose)
        for subs in self._by_call.values():
            total += sum(s.queue.qsize() for s in subs)
        return total

    # -- a subscriber's connection ---------------------------------------------------------------
    async def serve(self, ws: ServerConnection, interaction_id: str | None,
                    principal: Principal = ANONYMOUS) -> None:
        sub = Subscriber(ws, self.maxsize, interaction_id, principal)
        if interaction_id is not None:
            owner = self._owner_of(interaction_id)
            if owner is not None and not may_read(principal, owner):
                self._deny(sub, owner)
                await ws.wait_closed()
                return
        group = self._firehose if interaction_id is None else self._by_call.setdefault(interaction_id, set())
        group.add(sub)
        self.metrics.subscribers.inc()
        loop = asyncio.get_running_loop()
        if interaction_id is not None and self._owner_of(interaction_id) is None and self.feed_wait_s > 0:
            sub.wait_timer = loop.call_later(self.feed_wait_s, self._wait_expired, sub)
        sender = loop.create_task(self._send_loop(sub))
        reader = loop.create_task(self._discard_input(ws))
        try:
            # Whichever ends first: the feed closed by us (call ended, too slow) or by the subscriber.
            await asyncio.wait((sender, reader), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if sub.wait_timer is not None:
                sub.wait_timer.cancel()
            sender.cancel()
            reader.cancel()
            group.discard(sub)
            if interaction_id is not None and not group:
                self._by_call.pop(interaction_id, None)
            self.metrics.subscribers.dec()

    @staticmethod
    async def _send_loop(sub: Subscriber) -> None:
        try:
            while True:
                data = await sub.queue.get()
                if data is _CALL_ENDED:
                    await sub.ws.close(Close.NORMAL, "call ended")
                    return
                await sub.ws.send(data, text=True)
        except ConnectionClosed:
            pass

    @staticmethod
    async def _discard_input(ws: ServerConnection) -> None:
        # Read (and ignore) what the subscriber sends so a close from its side is processed.
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass

    async def close_all(self, code: int, reason: str) -> None:
        subs = list(self._firehose) + [s for group in self._by_call.values() for s in group]
        await asyncio.gather(*(s.ws.close(code, reason) for s in subs), return_exceptions=True)
