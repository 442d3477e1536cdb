"""The Redis Streams bus: ingest and worker processes on any hosts (``rtaa serve --bus redis://...``).

Keys (``P`` = ``--bus-prefix``; per-call keys share the hash tag ``{iid}``), all described in
docs/scale-out.md:

- ``P:c:{iid}:s``      the call's stream: START/AUDIO/END entries in order, ``MAXLEN ~ bus_maxlen``;
- ``P:c:{iid}:lease``  ``worker_id:token`` of the one worker that owns the call (``SET NX PX``, renewed);
- ``P:c:{iid}:fence``  the call's fencing-token counter (INCR on every acquisition);
- ``P:c:{iid}:ckpt``   where a successor resumes: after which entry, how many bytes of the next are
                       covered by finals, the stream audio position, result ``seq``, stream sid, rate,
                       the origin in effect there;
- ``P:c:{iid}:src``    the origin (ingest process) of the call's newest stream, set by each START;
- ``P:calls``          registry of live calls (ZSET), ``P:announce`` new calls (stream, consumer group
                       ``workers``: each announcement goes to one worker), ``P:feed`` every feed message
                       (stream, ``MAXLEN ~ feed_maxlen``, read by every ingest), ``P:wake:<worker>``.

Ingest side: :class:`RedisPublisher` per call (``XADD``; a START is a script that also registers and
announces the call). Every entry names its ingest process (``o``, the bus's ``origin``): a START from
another ingest than the call's previous one supersedes that ingest (a ``_superseded`` notice on the feed
makes it let go of the call), and workers skip the entries it sent after that START. Worker side: one
blocking ``XREAD`` over all owned calls' streams on its own connection, another blocking ``XREADGROUP``
for announcements on a third; writes go through a pool.
Each owned call gets an in-memory :class:`CallChannel` and the ordinary worker consumer, so
worker.py does not know which bus it runs on. Ownership, fencing and takeover: see :mod:`.fencing`,
:mod:`.entrylog` and docs/scale-out.md.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from typing import Any, AsyncIterator, Awaitable, Callable

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from rtaa_cli import logs
from rtaa_cli.pipeline import bus as busmod
from rtaa_cli.pipeline import redis_scripts as lua
from rtaa_cli.pipeline.entrylog import Checkpoint, EntryLog, parse_id
from rtaa_cli.pipeline.fencing import FencedProvider, LeaseClock
from rtaa_cli.pipeline.metrics import PipelineMetrics
from rtaa_cli.pipeline.providers.base import Provider
from rtaa_cli.protocols import feed

log = logs.get("rtaa.bus")

GROUP = "workers"
READ_COUNT = 200  # entries per stream per XREAD
BLOCK_MS = 1000  # blocking reads return at least this often (stop is noticed promptly)
READ_COALESCE_S = 0.004  # worker: added latency traded for far fewer XREADs (docs/scale-out.md, bench)
_ERRORS = (RedisError, OSError)


def _ckpt_fields(ck: Checkpoint) -> list[Any]:
    """The checkpoint's fields as the ckpt hash stores them (read back by the successor's resume)."""
    return ["after", ck.after, "first", ck.first, "skip", ck.skip, "pos", ck.position, "n", ck.n, "o", ck.origin]


class RedisPublisher(busmod.FailureNotice):
    """The ingest's handle on one call (what :class:`busmod.Publisher` asks for)."""

    __slots__ = ("interaction_id", "sample_rate", "closed", "failure", "_fail_callbacks", "_bus", "_key", "_n",
                 "pending_end", "ended_seen", "error", "starts_in_flight", "start_id", "superseded_at")

    def __init__(self, bus: "RedisBus", iid: str) -> None:
        self.interaction_id = iid
        self.sample_rate: int | None = None
        self.closed = False
        self.failure: str | None = None
        self._fail_callbacks: list[Callable[[str], None]] = []
        self._bus = bus
        self._key = bus.key(iid, "s")
        self._n = 0  # entry sequence number: a worker that sees a gap knows entries were trimmed
        self.pending_end = False  # END published, its call_ended not seen yet
        self.ended_seen = False  # call_ended seen before any END (the call failed)
        self.error: busmod.BusOverloaded | None = None  # an earlier item failed: raised on the next publish
        self.starts_in_flight = 0  # STARTs sent, not answered yet
        self.start_id = (0, 0)  # stream entry id of this ingest's latest START of the call
        self.superseded_at: tuple[int, int] | None = None  # a notice to decide once the STARTs are answered

    async def publish(self, item: busmod.Item) -> None:
        """Queue the item for the next pipelined batch and return: the caller's next frame is read without
        waiting for Redis. A failure of an earlier item of this call (Redis down, or the call lost) is
        raised here, on the next publish, so the ingest closes that caller 1011 one frame later."""
        if self.closed:
            raise busmod.ChannelClosed(self.interaction_id)
        kind = item[0]
        if self.error is not None:
            if kind is busmod.AUDIO:
                raise self.error
            self.error = None  # an END (or a new stream's START) is still tried: Redis may be back
        bus = self._bus
        self._n += 1
        # AUDIO and END never create a stream (NOMKSTREAM): only a START does, with the call's
        # registration, so no entry can land in a stream no worker will ever be told about.
        if kind is busmod.AUDIO:
            wall = time.time() - (time.perf_counter() - item[2])  # workers convert to their own clock
            bus.send(None, self._key, {"k": 1, "p": item[1], "t": f"{wall:.6f}", "n": self._n, "o": bus.origin},
                     self._sent_audio)
        elif kind is busmod.START:
            self.pending_end = self.ended_seen = False
            self.starts_in_flight += 1
            bus.send(bus.start_script, [self._key, bus.registry, bus.announce, bus.key(self.interaction_id, "src"),
                                        bus.feed],
                     [bus.maxlen, self.interaction_id, int(time.time() * 1000), bus.origin, bus.feed_maxlen,
                      "k", 0, "p", item[1], "r", item[2], "n", self._n, "o", bus.origin], self._sent_start)
        else:
            self.pending_end = True
            bus.send(None, self._key, {"k": 2, "p": item[1], "n": self._n, "o": bus.origin}, self._sent_end)
        if len(bus._sends) > bus.max_pending:
            await bus.room(self.interaction_id)

    def _failed(self, result: Any) -> bool:
        if isinstance(result, Exception):
            self._bus.outage(result)
            self.error = busmod.BusUnavailable(self.interaction_id)
            return True
        return False

    def _sent_audio(self, result: Any) -> None:
        if not self._failed(result) and result is None and self.error is None:  # Redis lost the call
            self._bus.metrics.bus_calls_lost.inc()
            self.error = busmod.BusLost(self.interaction_id)

    def _sent_start(self, result: Any) -> None:
        self.starts_in_flight -= 1
        if not self._failed(result) and isinstance(result, bytes):
            self.start_id = max(self.start_id, parse_id(result.decode()))
        at = self.superseded_at
        if at is not None and not self.starts_in_flight:
            self.superseded_at = None
            self.superseded(at)

    def superseded(self, at: tuple[int, int]) -> None:
        """Another ingest's START of this call, stream entry ``at``, made it the call's newest source. It
        supersedes this ingest's streams only if it came after this ingest's latest START (a notice can be
        older than a START this ingest sent since): then the caller is closed and nothing more published."""
        if self.closed:
            return
        if self.starts_in_flight:
            self.superseded_at = max(at, self.superseded_at or at)  # decided when their answers are in
            return
        if at < self.start_id:
            return
        self._bus.superseded_elsewhere(self.interaction_id)
        self._bus.forget_publisher(self)

    def _sent_end(self, result: Any) -> None:
        # The call is over for this ingest if its call_ended came already, the bus has no such call, or
        # the END could not be written at all.
        if self._failed(result) or self.ended_seen or result is None:
            self._bus.forget_publisher(self)



class WorkerChannel(busmod.CallChannel):
    """The in-memory channel a worker's consumer reads for one owned call."""

    __slots__ = ("owned", "released_at")

    def __init__(self, owned: "Owned", maxsize: int) -> None:
        super().__init__(owned.iid, maxsize, 0.0)
        self.owned = owned
        self.released_at: str | None = None  # entry id up to which the consumer finished (after an END)


class Owned:
    """A call this worker holds the lease of."""

    __slots__ = ("iid", "value", "valid_until", "key", "key_b", "lease_key", "ckpt_key", "log", "expect_n",
                 "skip_id", "skip", "resume", "channel", "task", "lost", "closing", "last_entry_at", "idle_ended",
                 "superseded_logged")

    def __init__(self, bus: "RedisBus", iid: str, value: str, valid_until: float) -> None:
        self.iid = iid
        self.value = value  # worker_id:token, the fencing value every write is checked against
        self.valid_until = valid_until  # perf_counter() deadline of the lease as this process knows it
        self.key = bus.key(iid, "s")
        self.key_b = self.key.encode()
        self.lease_key = bus.key(iid, "lease")
        self.ckpt_key = bus.key(iid, "ckpt")
        self.log = EntryLog()
        self.expect_n = -1
        self.skip_id = ""
        self.skip = 0
        self.resume: tuple[str, int, tuple[int, int]] | None = None
        self.channel: WorkerChannel | None = None
        self.task: asyncio.Task[None] | None = None
        self.lost = False
        self.closing = False  # cleanup of the call's keys in flight: read nothing, send nothing
        self.last_entry_at = time.monotonic()
        self.idle_ended = False
        self.superseded_logged = False  # entries of a superseded ingest skipped (logged once per call)


class RedisBus:
    def __init__(self, url: str, prefix: str, metrics: PipelineMetrics, *, maxlen: int = 2048,
                 feed_maxlen: int = 10000, lease_ms: int = 2000, queue_frames: int = 256, idle_end_s: float = 60.0,
                 publish_timeout_s: float = 2.0,
                 has_ingest: bool = True, has_worker: bool = True) -> None:
        self.url = url
        self.prefix = prefix
        self.metrics = metrics
        self.maxlen = maxlen
        self.feed_maxlen = feed_maxlen
        self.lease_ms = lease_ms
        self.clock = LeaseClock(lease_ms)
        self.queue_frames = queue_frames
        self.idle_end_s = idle_end_s
        self.has_ingest = has_ingest
        self.has_worker = has_worker
        self.worker_id = uuid.uuid4().hex[:12]
        self.origin = uuid.uuid4().hex[:12]  # ingest side: this process, on every entry it writes (``o``)
        # Ingest side: another ingest took one of this process's calls over (its newer stream arrived there).
        self.superseded_elsewhere: Callable[[str], None] = lambda iid: None
        self.registry = f"{prefix}:calls"
        self.announce = f"{prefix}:announce"
        self.feed = f"{prefix}:feed"
        self.wake_key = f"{prefix}:wake:{self.worker_id}"
        self.channels: dict[str, RedisPublisher] = {}  # ingest side: this process's live calls
        self._no_channels = asyncio.Event()  # set when the last of them is forgotten (drain waits for it)
        self.owned: dict[str, Owned] = {}  # worker side
        self._by_key: dict[bytes, Owned] = {}
        self._consumer: busmod.Consumer | None = None
        self._sink: Callable[[dict[str, Any]], None] | None = None
        self._seen: dict[str, int] = {}  # ingest side: last transcript seq delivered per call (dedup)
        self.interaction_of: Callable[[str], Any] = lambda _: None  # worker.interactions.get
        self.provider: FencedProvider | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._writes: deque[tuple[Any, list[Any], list[Any], Callable[[Any], None]]] = deque()
        self._write_ready = asyncio.Event()
        self._sends: list[tuple[Any, Any, Any, Callable[[Any], None]]] = []
        self._send_ready = asyncio.Event()
        self._sent = asyncio.Event()  # a batch completed
        self._inflight = 0
        self.max_pending = 20000  # queued ingest writes (~7 s of 100 calls' frames) before publish waits
        self.publish_timeout_s = publish_timeout_s
        self._sender: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        self._backlog = 0
        self._wake_last = "$"
        self._feed_written = (0, 0)  # the last feed entry this worker wrote ...
        self._feed_read = (0, 0)  # ... and the last this ingest read (shutdown waits for the one to reach the other)
        self.running = False
        self.taking = True  # takes calls (announced or orphaned); False once it hands its calls over
        self._renew_sent_at = 0.0  # perf_counter() of the renewal in flight (0: none), for the lease-loss log
        self._sampled = logs.Sampled(log, burst=1, window_s=10.0)
        self._renew_last_sent = time.perf_counter()

    # -- keys ------------------------------------------------------------------------------------
    def key(self, iid: str, what: str) -> str:
        return f"{self.prefix}:c:{{{iid}}}:{what}"

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self.w = aioredis.from_url(self.url, socket_connect_timeout=5, socket_timeout=10)
        try:
            await self.w.ping()
        except _ERRORS as exc:
            await self.w.aclose()
            raise ConnectionError(f"cannot reach redis at {self.url}: {exc}") from None
        self.start_script = self.w.register_script(lua.START)
        self._acquire = self.w.register_script(lua.ACQUIRE)
        self._renew = self.w.register_script(lua.RENEW)
        self._publish = self.w.register_script(lua.PUBLISH)
        self._cleanup = self.w.register_script(lua.CLEANUP)
        self._release = self.w.register_script(lua.RELEASE)
        self._orphans = self.w.register_script(lua.ORPHANS)
        self.running = True
        loop = asyncio.get_running_loop()
        if self.has_ingest:
            last = await self.w.xrevrange(self.feed, "+", "-", count=1)
            self._feed_last = last[0][0].decode() if last else "0-0"
            self._loops.append(loop.create_task(self._supervised(self._feed_loop)))
        if self.has_worker:
            try:
                await self.w.xgroup_create(self.announce, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._announcements = loop.create_task(self._supervised(self._announce_loop))
            self._loops.append(self._announcements)
            for fn in (self._read_loop, self._renew_loop, self._sweep_loop, self._write_loop, self._watchdog_loop):
                self._loops.append(loop.create_task(self._supervised(fn)))
        log.info("bus_started", bus="redis", prefix=self.prefix, worker_id=self.worker_id if self.has_worker else None,
                 maxlen=self.maxlen, lease_ms=self.lease_ms)

    async def drain(self, timeout_s: float) -> None:
        """Shutdown: calls this process's ingest ended finish (bounded); the rest are handed over."""
        await asyncio.sleep(0)  # the ingest's END publishes (tasks it just created) queue their writes
        await self._flush_sends(2.0)
        if self.has_ingest and self.channels:
            # Every call this ingest ended is finished by its owner, in this process or any other, and its
            # call_ended has reached this process's feeds (a publisher is forgotten then), or the bound passed.
            self._no_channels.clear()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._no_channels.wait()
            except TimeoutError:
                log.warning("drain_timeout", calls_unfinished=len(self.channels), timeout_s=timeout_s)
        await self._flush_writes(2.0)
        if self.has_ingest:  # this process's feeds get the finals it wrote before they close
            deadline = time.monotonic() + 2.0
            while self._feed_read < self._feed_written and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        if self.owned:
            # Hand the rest over now: stop taking announcements, release each lease and announce the call
            # again, so another worker takes it at once instead of on its next sweep.
            self.taking = False  # nor retake them in this process's own sweep (a third provider stream)
            self._announcements.cancel()
            await asyncio.gather(self._announcements, return_exceptions=True)
            for o in list(self.owned.values()):
                await self._drop(o, "handed over (shutdown)")
                await self._release_quietly(o)
                try:
                    await self.w.xadd(self.announce, {"i": o.iid}, maxlen=10000, approximate=True)
                except _ERRORS:
                    pass  # the others' sweep finds it

    async def close(self) -> None:
        self.running = False
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        if self.has_worker:
            try:
                await self.w.delete(self.wake_key)
                await self.w.xgroup_delconsumer(self.announce, GROUP, self.worker_id)
            except _ERRORS:
                pass
        await self.w.aclose()

    def health(self) -> list[str]:
        reasons = []
        if self._down_since is not None:
            reasons.append("bus: redis unreachable")
        if self._backlog > self.maxlen // 2:
            reasons.append(f"bus: a call's stream holds {self._backlog} of its {self.maxlen} entries "
                           "(worker falling behind; trimming starts at the limit)")
        return reasons

    def outage(self, exc: BaseException) -> None:
        self.metrics.bus_errors.inc()
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.error("bus_redis_unavailable", error=str(exc)[:200])

    def up(self) -> None:
        if self._down_since is not None:
            log.info("bus_redis_recovered", down_s=round(time.monotonic() - self._down_since, 3))
            self._down_since = None

    async def _supervised(self, fn: Callable[[], Any]) -> None:
        """A loop that hits an unexpected error is logged and restarted (fresh connections), never lost."""
        while True:
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis errors are handled inside; this is the rest
                self.metrics.bus_errors.inc()
                log.error("bus_loop_failed", loop=fn.__name__, error=repr(exc)[:300])
                await asyncio.sleep(1.0)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the Bus interface -----------------------------------------------------------------------
    def attach(self, consumer: busmod.Consumer) -> None:
        self._consumer = consumer

    def open(self, interaction_id: str) -> RedisPublisher:
        pub = self.channels.get(interaction_id)
        if pub is None:
            pub = self.channels[interaction_id] = RedisPublisher(self, interaction_id)
        return pub

    def forget_publisher(self, pub: RedisPublisher) -> None:
        pub.closed = True
        if self.channels.get(pub.interaction_id) is pub:
            del self.channels[pub.interaction_id]
            if not self.channels:
                self._no_channels.set()

    def release_if_idle(self, channel: busmod.CallChannel) -> bool:
        if not channel.queue.empty():
            return False
        assert isinstance(channel, WorkerChannel)
        channel.closed = True
        channel.released_at = channel.owned.log.last_id
        return True

    def depth(self) -> int:
        return sum(o.channel.queue.qsize() for o in self.owned.values() if o.channel is not None)

    def wrap_provider(self, provider: Provider) -> Provider:
        self.provider = FencedProvider(provider, self.holds, self.metrics.bus_fenced_ops.inc)
        return self.provider

    def holds(self, iid: str) -> bool:
        o = self.owned.get(iid)
        return o is not None and not o.lost and not o.closing and time.perf_counter() < o.valid_until

    def sinks(self, hub: Any) -> tuple[Callable[..., None], Callable[..., None], Callable[..., None]]:
        """The worker's publish/call_started/call_ended (through Redis to every ingest's feeds); ``hub``
        (this process's feeds, if it is an ingest) gets every feed message read from Redis."""
        if hub is not None:
            self._sink = hub.deliver
        return self._publish_result, self._call_started, self._call_ended

    # -- ingest -> call streams (batched) ----------------------------------------------------------
    def send(self, script: Any, key: Any, fields: Any, done: Callable[[Any], None]) -> None:
        """Queue one ingest write (``XADD ... NOMKSTREAM`` when ``script`` is None, else the script with keys
        and args); ``done`` gets its result or exception. Everything queued while the previous batch is in
        flight goes out as one pipeline, in order, so a call's entries keep their order."""
        self._sends.append((script, key, fields, done))
        self._send_ready.set()
        if self._sender is None or self._sender.done():
            self._sender = self._spawn(self._send_loop())

    async def room(self, iid: str) -> None:
        """Backpressure: Redis is slower than the callers; wait (bounded) for the queue to drain."""
        try:
            async with asyncio.timeout(self.publish_timeout_s):
                while len(self._sends) > self.max_pending:
                    self._sent.clear()
                    await self._sent.wait()
        except TimeoutError:
            raise busmod.BusOverloaded(iid) from None

    async def _send_loop(self) -> None:
        while True:
            if not self._sends:
                self._send_ready.clear()
                await self._send_ready.wait()
                continue
            batch, self._sends = self._sends, []
            self._inflight = len(batch)
            try:
                pipe = self.w.pipeline(transaction=False)
                for script, key, fields, _ in batch:
                    if script is None:
                        pipe.xadd(key, fields, maxlen=self.maxlen, approximate=True, nomkstream=True)
                    else:
                        await script(keys=key, args=fields, client=pipe)
                results: list[Any] = await pipe.execute(raise_on_error=False)
                self.up()
            except _ERRORS as exc:
                results = [exc] * len(batch)
            self._inflight = 0
            self._sent.set()
            for (*_, done), result in zip(batch, results):
                done(result)

    async def _flush_sends(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while (self._sends or self._inflight) and time.monotonic() < deadline:
            self._sent.clear()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._sent.wait()
            except TimeoutError:
                return

    # -- worker -> feeds (fenced, in order) --------------------------------------------------------
    def _publish_result(self, msg: dict[str, Any]) -> None:
        o = self.owned.get(msg["interaction_id"])
        if o is None or not self.holds(o.iid):  # the successor produces it again from the checkpoint
            self.metrics.bus_fenced_ops.inc()
            return
        fields: list[Any] = ["seq", msg["seq"], "sid", msg["stream_sid"]]
        minid = ""
        inter = self.interaction_of(o.iid)
        if msg["is_final"] and inter is not None:
            ck = o.log.acked(inter.timeline.final_end)
            fields += [*_ckpt_fields(ck), "rate", inter.sample_rate, "live", 1]
            minid = ck.first or _next_id(ck.after)
        self._write(o, orjson.dumps(msg), fields, minid)

    def _call_started(self, iid: str, stream_sid: str) -> None:
        o = self.owned.get(iid)
        inter = self.interaction_of(iid)
        if o is None or not self.holds(iid) or inter is None:
            self.metrics.bus_fenced_ops.inc()
            return
        ck = o.log.acked(0)
        self._write(o, orjson.dumps(feed.call_started_message(iid, stream_sid, time.time())),
                    [*_ckpt_fields(ck), "seq", 0, "sid", stream_sid, "rate", inter.sample_rate, "live", 1], "")

    def _call_ended(self, iid: str, reason: str) -> None:
        o = self.owned.get(iid)
        if o is None or not self.holds(iid):  # e.g. "provider unavailable" because its operations were fenced
            self.metrics.bus_fenced_ops.inc()
            return
        ck = o.log.ended()
        self._write(o, orjson.dumps(feed.call_ended_message(iid, reason, time.time())),
                    [*_ckpt_fields(ck), "seq", 0, "live", 0], "")

    def _report_failure(self, o: Owned, reason: str) -> None:
        if self.holds(o.iid):  # a fenced call is dropped and resumed elsewhere, not failed
            self._write(o, orjson.dumps({"type": "_fail", "interaction_id": o.iid, "reason": reason}), [], "")

    def _write(self, o: Owned, msg: bytes, fields: list[Any], minid: str) -> None:
        self._queue_op(self._publish, [o.lease_key, o.ckpt_key, self.feed, o.key],
                       [o.value, msg, self.feed_maxlen, minid, *fields], self._published)

    def _queue_op(self, script: Any, keys: list[Any], args: list[Any], done: Callable[[Any], None]) -> None:
        """Every write of a worker goes through one ordered queue: a call's cleanup can never overtake its
        last results, and a retried batch keeps its order."""
        self._writes.append((script, keys, args, done))
        self._write_ready.set()

    def _published(self, result: Any) -> None:
        if result == 0:
            self.metrics.bus_fenced_ops.inc()
        elif isinstance(result, bytes):
            self._feed_written = parse_id(result.decode())

    async def _write_loop(self) -> None:
        delay = 0.1
        while True:
            if not self._writes:
                self._write_ready.clear()
                await self._write_ready.wait()
            batch = [self._writes[i] for i in range(min(256, len(self._writes)))]
            try:
                pipe = self.w.pipeline(transaction=False)
                for script, keys, args, _ in batch:
                    await script(keys=keys, args=args, client=pipe)
                results = await pipe.execute(raise_on_error=False)  # one bad op must not block the queue
            except _ERRORS as exc:
                self.outage(exc)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
                continue  # the batch is still queued: retried in order (the ingest drops repeated seqs)
            self.up()
            delay = 0.1
            for (_, keys, _, done), result in zip(batch, results):
                self._writes.popleft()
                if isinstance(result, Exception):
                    self.metrics.bus_errors.inc()
                    log.error("bus_write_failed", key=str(keys[0])[:200], error=str(result)[:200])
                    result = None
                done(result)

    async def _flush_writes(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self._writes and time.monotonic() < deadline and self.running:
            await asyncio.sleep(0.01)

    # -- ingest: the feed ----------------------------------------------------------------------
    async def _blocking_reads(self, read: Callable[[Any], Awaitable[Any]]) -> AsyncIterator[Any]:
        """Every blocking read of the bus (feed, call streams, announcements) runs here: on a connection of
        its own (a blocking read never shares one with writes); a failed read marks Redis down (/health) and
        is retried with backoff (0.1 s doubling to 2 s); each answer, once Redis is back, is yielded."""
        r = aioredis.from_url(self.url, single_connection_client=True, socket_connect_timeout=5)
        delay = 0.1
        try:
            while True:
                try:
                    resp = await read(r)
                except _ERRORS as exc:
                    self.outage(exc)
                    await asyncio.sleep(delay)
                    delay = min(2.0, delay * 2)
                    continue
                self.up()
                delay = 0.1
                yield resp
        finally:
            await r.aclose()

    async def _feed_loop(self) -> None:
        async with contextlib.aclosing(self._blocking_reads(
                lambda r: r.xread({self.feed: self._feed_last}, count=500, block=BLOCK_MS))) as reads:
            async for resp in reads:
                for _, entries in resp or ():
                    for entry_id, fields in entries:
                        last = self._feed_last = entry_id.decode()
                        self._feed_read = parse_id(last)
                        try:
                            self._deliver(orjson.loads(fields[b"m"]))
                        except Exception as exc:  # noqa: BLE001 - one bad entry must not stop the feed
                            self.metrics.bad_input.labels(kind="bus_feed_entry").inc()
                            log.warning("bus_feed_entry_unreadable", entry=last, error=repr(exc)[:200])

    def _deliver(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        iid = msg["interaction_id"]
        pub = self.channels.get(iid)
        if kind == "_fail":
            if pub is not None:
                pub.fail(msg["reason"])
            return
        if kind == "_superseded":
            if pub is not None and msg["origin"] == self.origin:
                pub.superseded(parse_id(msg["at"]))
            return
        if kind == feed.Kind.TRANSCRIPT:
            if msg["seq"] <= self._seen.get(iid, 0):
                self.metrics.bus_duplicates_dropped.inc()
                return  # a write retried after a lost reply, or a takeover's overlap
            self._seen[iid] = msg["seq"]
        elif kind == feed.Kind.CALL_STARTED:
            self._seen[iid] = 0
        if self._sink is not None:
            self._sink(msg)
        if kind == feed.Kind.CALL_ENDED:
            self._seen.pop(iid, None)
            if pub is not None:
                if pub.pending_end:
                    self.forget_publisher(pub)
                else:
                    pub.ended_seen = True  # failed before its END: forgotten when the END is published

    # -- worker: ownership -------------------------------------------------------------------------
    async def _try_own(self, iid: str, via: str) -> None:
        if iid in self.owned or not self.running or not self.taking:
            return
        t0 = time.perf_counter()
        token = await self._acquire(keys=[self.key(iid, "lease"), self.key(iid, "fence"), self.registry],
                                    args=[self.worker_id, self.lease_ms, iid])
        if token <= 0 or iid in self.owned:
            return
        o = Owned(self, iid, f"{self.worker_id}:{token}", self.clock.acquired(t0))
        try:
            ck = {k.decode(): v.decode() for k, v in (await self.w.hgetall(o.ckpt_key)).items()}
        except _ERRORS:
            await self._release(keys=[o.lease_key], args=[o.value])
            raise
        if ck:
            n = int(ck.get("n", -1))
            o.log = EntryLog(int(ck["pos"]), ck["after"], n - 1 if n >= 0 else -1, ck.get("o", "").encode())
            o.expect_n = n
            if ck.get("live") == "1":
                o.skip_id, o.skip = ck.get("first", ""), int(ck.get("skip", 0))
                o.resume = (ck.get("sid", ""), int(ck["rate"]), (int(ck["pos"]), int(ck.get("seq", 0))))
        if not self.taking:  # the hand-over began while this acquisition was in flight
            await self._release_quietly(o)
            return
        if token > 1:
            self.metrics.bus_takeovers.inc()
            log.warning("call_taken_over", interaction_id=iid, token=token, via=via, resume_after=o.log.last_id,
                        position=o.log.position, live=o.resume is not None)
        self.owned[iid] = o
        self._by_key[o.key_b] = o
        if o.resume is not None:
            self._channel_for(o)
        try:
            await self.w.xadd(self.wake_key, {"w": 1}, maxlen=10)  # the reader picks the new stream up now
        except _ERRORS:
            pass  # it does within BLOCK_MS anyway

    def _channel_for(self, o: Owned) -> WorkerChannel:
        ch = o.channel
        if ch is None:
            ch = o.channel = WorkerChannel(o, self.queue_frames)
            ch.on_failure(lambda reason: self._report_failure(o, reason))
            if o.resume is not None:
                sid, rate, at = o.resume
                o.resume = None
                ch.queue.put_nowait((busmod.START, sid, rate, at))
            o.task = self._spawn(self._run(o, ch))
        return ch

    async def _run(self, o: Owned, ch: WorkerChannel) -> None:
        assert self._consumer is not None
        try:
            await self._consumer(ch)
        finally:
            ch.closed = True
            if o.channel is ch:
                o.channel = None
        if ch.released_at is not None and not o.lost and self.owned.get(o.iid) is o:
            self._end_call(o, ch.released_at)

    def _end_call(self, o: Owned, end_id: str) -> None:
        """The consumer finished the call after its END: delete its keys unless more entries follow (queued
        behind the call's last results, so they are published first)."""
        o.closing = True

        def done(result: Any) -> None:
            o.closing = False
            if not isinstance(result, int) or result == 0:  # entries follow the END (or it failed): read on
                self._wake()
                return
            self._forget(o)
            if result < 0:
                log.warning("lease_lost", interaction_id=o.iid, at="cleanup")

        self._queue_op(self._cleanup, [o.key, o.lease_key, self.key(o.iid, "fence"), o.ckpt_key, self.registry,
                                       self.key(o.iid, "src")], [o.value, end_id, o.iid], done)

    def _forget(self, o: Owned) -> None:
        o.lost = True
        if self.owned.get(o.iid) is o:
            del self.owned[o.iid]
        self._by_key.pop(o.key_b, None)
        if self.provider is not None:
            self.provider.forget(o.iid)

    async def _drop(self, o: Owned, reason: str, lease_lost: bool = False) -> None:
        """Stop working on a call we no longer (may) own: nothing more is read, sent or published."""
        if o.lost:
            return
        self._forget(o)
        if lease_lost:
            self.metrics.bus_leases_lost.inc()
        log.warning("call_dropped", interaction_id=o.iid, reason=reason)
        if self.provider is not None:
            await self.provider.abort(o.iid)
        if o.task is not None:
            o.task.cancel()

    def _wake(self) -> None:
        self._spawn(self._wake_now())

    async def _wake_now(self) -> None:
        try:
            await self.w.xadd(self.wake_key, {"w": 1}, maxlen=10)
        except _ERRORS:
            pass

    # -- worker loops ------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        last = await self.w.xrevrange(self.wake_key, "+", "-", count=1)
        self._wake_last = last[0][0].decode() if last else "0-0"
        streams: dict[Any, Any] = {}

        def read(r: Any) -> Awaitable[Any]:
            streams.clear()
            streams[self.wake_key] = self._wake_last
            for o in self.owned.values():
                if not o.closing and (o.channel is None or o.channel.queue.qsize() < self.queue_frames):
                    streams[o.key] = o.log.last_id
            return r.xread(streams, count=READ_COUNT, block=BLOCK_MS)

        async with contextlib.aclosing(self._blocking_reads(read)) as reads:
            async for resp in reads:
                for key, entries in resp or ():
                    o = self._by_key.get(key)
                    if o is None:
                        if entries:
                            self._wake_last = entries[-1][0].decode()
                        continue
                    for entry_id, fields in entries:
                        if o.lost or o.closing:
                            break  # not advanced: read again if the call stays ours
                        self._feed(o, entry_id.decode(), fields)
                if resp and len(resp) < len(streams) // 2:
                    # Only a few of the calls had a new frame: let the others' frames arrive too, so one
                    # XREAD (which names every owned stream) carries many entries, not one.
                    await asyncio.sleep(READ_COALESCE_S)

    def _feed(self, o: Owned, entry_id: str, f: dict[bytes, bytes]) -> None:
        kind = int(f[b"k"])
        origin = f.get(b"o", b"")
        if not o.log.counts(kind, origin):
            self._superseded_entry(o, entry_id, origin)
            return
        n = int(f.get(b"n", -1))
        if o.expect_n >= 0 and kind != busmod.START and n > o.expect_n:
            lost = n - o.expect_n
            self.metrics.bus_trimmed_entries.inc(lost)
            log.error("bus_entries_trimmed", interaction_id=o.iid, entries=lost, maxlen=self.maxlen)
        o.expect_n = n + 1
        o.last_entry_at = time.monotonic()
        o.idle_ended = False
        if kind == busmod.AUDIO:
            pcm = f[b"p"]
            if o.skip_id:
                if entry_id == o.skip_id:
                    pcm = pcm[o.skip:]
                o.skip_id = ""
            received = time.perf_counter() - max(0.0, time.time() - float(f[b"t"]))
            item: busmod.Item = (busmod.AUDIO, pcm, received)
            nbytes = len(pcm)
        elif kind == busmod.START:
            item = (busmod.START, f[b"p"].decode(), int(f[b"r"]))
            nbytes = 0
        else:
            item = (busmod.END, f[b"p"].decode())
            nbytes = 0
        o.log.add(entry_id, kind, nbytes, n, origin)
        ch = self._channel_for(o)
        ch.queue.put_nowait(item)

    def _superseded_entry(self, o: Owned, entry_id: str, origin: bytes) -> None:
        """An entry a superseded ingest wrote after the newer ingest's START (before it read the notice):
        never sent to the provider; read past, counted, logged once per call."""
        o.log.skip(entry_id)
        self.metrics.bus_superseded_entries.inc()
        if not o.superseded_logged:
            o.superseded_logged = True
            log.warning("bus_superseded_entries_skipped", interaction_id=o.iid, origin=origin.decode(),
                        current=o.log.origin.decode())

    async def _announce_loop(self) -> None:
        async def read(r: Any) -> Any:
            try:
                return await r.xreadgroup(GROUP, self.worker_id, {self.announce: ">"}, count=16, block=BLOCK_MS)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await r.xgroup_create(self.announce, GROUP, id="0", mkstream=True)  # Redis restarted empty
                return None

        async with contextlib.aclosing(self._blocking_reads(read)) as reads:
            async for resp in reads:
                try:
                    for _, entries in resp or ():
                        for entry_id, fields in entries:
                            await self._try_own(fields[b"i"].decode(), "announce")
                            await self.w.xack(self.announce, GROUP, entry_id)
                except _ERRORS as exc:
                    self.outage(exc)  # the call is not lost: any worker's sweep takes it (it has no lease)

    async def _sweep_loop(self) -> None:
        """Take over calls whose lease lapsed (their worker died, hung or lost Redis)."""
        period = self.lease_ms / 2000.0
        while True:
            await asyncio.sleep(period)
            try:
                orphans = await self._orphans(keys=[self.registry], args=[f"{self.prefix}:c:{{", "}:lease"])
                for iid in orphans:
                    await self._try_own(iid.decode(), "sweep")
            except _ERRORS as exc:
                self.outage(exc)

    async def _watchdog_loop(self) -> None:
        """A call whose lease this process can no longer vouch for (renewals failing or late, e.g. after a
        pause) is dropped now: its provider stream is closed before Redis can hand the call to another."""
        period = self.lease_ms / 8000.0
        while True:
            woke = time.perf_counter() + period
            await asyncio.sleep(period)
            now = time.perf_counter()
            expired = [o for o in self.owned.values() if now >= o.valid_until and not o.lost]
            if expired:
                inflight = self._renew_sent_at
                log.error("leases_expired_locally", calls=len(expired), loop_lag_ms=round((now - woke) * 1000),
                          since_renewal_sent_ms=round((now - self._renew_last_sent) * 1000),
                          renewal_in_flight_ms=round((now - inflight) * 1000) if inflight else None)
            for o in expired:
                await self._expire(o, "lease expired locally (renewals failing or late)")
            self._end_idle_calls()

    async def _expire(self, o: Owned, reason: str) -> None:
        """This process can no longer vouch for the lease: drop the call (its provider stream is closed) and
        release the lease, so a successor takes it on its next sweep."""
        if not o.lost:
            await self._drop(o, reason, lease_lost=True)
            self._spawn(self._release_quietly(o))

    def _end_idle_calls(self) -> None:
        """A call whose stream got nothing for ``idle_end_s`` has lost its ingest (a caller streams audio
        continuously; an ingest ends a dropped stream after its resume grace): end it here, so its finals
        are flushed and its provider stream and keys freed, instead of keeping it alive on KeepAlive."""
        now = time.monotonic()
        for o in list(self.owned.values()):
            if o.idle_ended or o.lost or o.closing or now - o.last_entry_at < self.idle_end_s:
                continue
            o.idle_ended = True
            self.metrics.bus_idle_calls_ended.inc()
            log.warning("call_idle_ended", interaction_id=o.iid, idle_s=round(now - o.last_entry_at, 1))
            self._channel_for(o).queue.put_nowait((busmod.END, f"no audio on the bus for {self.idle_end_s:g} s"))

    async def _release_quietly(self, o: Owned) -> None:
        try:
            await self._release(keys=[o.lease_key], args=[o.value])
        except _ERRORS:
            pass  # it lapses by itself

    async def _renew_loop(self) -> None:
        """Every lease/4 from the previous renewal's send (:class:`LeaseClock`): one round trip renews every
        owned lease and reads each call stream's length (the backlog on /health)."""
        sent_at = time.perf_counter()
        while True:
            await asyncio.sleep(self.clock.next_renewal(sent_at, time.perf_counter()))
            sent_at = time.perf_counter()
            owned = [o for o in self.owned.values() if not o.lost]
            if not owned:
                self._backlog = 0
                continue
            self._renew_sent_at = self._renew_last_sent = sent_at
            try:
                pipe = self.w.pipeline(transaction=False)
                await self._renew(keys=[o.lease_key for o in owned], args=[self.lease_ms] + [o.value for o in owned],
                                  client=pipe)
                for o in owned:
                    pipe.xlen(o.key)
                lost, *lengths = await pipe.execute()
            except _ERRORS as exc:
                self.outage(exc)
                continue
            finally:
                self._renew_sent_at = 0.0
            now = time.perf_counter()
            if now - sent_at > self.clock.period_s:
                self._sampled.warning("renewal_slow", rtt_ms=round((now - sent_at) * 1000), calls=len(owned),
                                      lease_ms=self.lease_ms)
            self.up()
            lost_at = set(lost)
            late = [o for i, o in enumerate(owned, 1) if i not in lost_at and not o.lost and now >= o.valid_until]
            if late:
                log.error("leases_expired_locally", calls=len(late), renewal_rtt_ms=round((now - sent_at) * 1000),
                          lease_ms=self.lease_ms)
            for i, o in enumerate(owned, 1):
                if o.lost or (o.closing and i in lost_at):
                    continue  # ended meanwhile: its cleanup deleted the lease (its reply may not be read yet)
                valid = None if i in lost_at else self.clock.renewed(o.valid_until, sent_at, now)
                if i in lost_at:
                    await self._drop(o, "lease lost (taken over or expired)", lease_lost=True)
                elif valid is None:
                    await self._expire(o, "lease expired locally (renewal answered too late)")
                else:
                    o.valid_until = valid
            self._backlog = max(lengths, default=0)
            self.metrics.bus_backlog.set(self._backlog)


def _next_id(entry_id: str) -> str:
    ms, seq = parse_id(entry_id)
    return f"{ms}-{seq + 1}"
