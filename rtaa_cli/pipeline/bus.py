"""The bus between ingest and worker: one ordered, bounded channel per interaction.

Two implementations of one small interface (:class:`Bus`): :class:`MemoryBus` here (the default, one
process) and :class:`rtaa_cli.pipeline.redisbus.RedisBus` (Redis Streams, ingest and workers in separate
processes, docs/scale-out.md). The ingest calls ``open(interaction_id)`` and ``publish(item)`` on what it
returns; the worker attaches a consumer that is handed one :class:`CallChannel` per call and reads it with
``get()``. Items are tuples, cheap to build on the per-frame path:

- ``(START, stream_sid, sample_rate)``: a stream (the first, or a newer one of the same call) began;
  ``(START, stream_sid, sample_rate, (position, seq))``: a call taken over from another worker resumes at
  stream audio ``position`` (bytes) after result ``seq`` (Redis bus only; no new ``call_started``);
- ``(AUDIO, pcm, received_at)``: one media frame, ``received_at`` = ``time.perf_counter()`` at ingest;
- ``(END, reason)``: the call's current stream stopped (or its resume grace ran out).

Fast path: when the worker has nothing queued for the call, is not busy with an earlier item, and its
provider stream can take a frame without blocking, ``publish`` hands an AUDIO item straight to it
(``fast_path``), saving the queue hop (a task switch, which under load is most of the added latency).
Order is kept: anything queued or in progress forces the queued path.

Backpressure: a channel holds at most ``maxsize`` AUDIO items. ``publish`` returns at once while there
is room; when full it waits up to ``timeout_s`` for the worker to catch up, then raises
:class:`BusOverloaded` (the ingest closes that caller 1011 "pipeline overloaded" and counts it). Nothing
is ever dropped silently. Control items (START, END) are never refused: they go into the queue past the
bound (at most a few per stream), in order, so a call whose channel is full still ends.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Protocol

START, AUDIO, END = 0, 1, 2

Item = tuple[Any, ...]


class BusOverloaded(Exception):
    """The worker did not drain this call's channel within the publish timeout."""

    reason = "pipeline overloaded"  # the caller's 1011 close reason


class BusUnavailable(BusOverloaded):
    """The bus cannot take the item at all (Redis unreachable); the ingest closes that caller 1011."""

    reason = "pipeline unavailable (bus down)"


class BusLost(BusOverloaded):
    """The bus no longer knows the call (Redis restarted without its data); the caller may reconnect."""

    reason = "pipeline lost this call (bus restarted), reconnect"


class ChannelClosed(Exception):
    """Publishing to a channel whose call has ended (reported as audio after end)."""


class Publisher(Protocol):
    """What the ingest holds per call."""

    interaction_id: str
    sample_rate: int | None  # of the call's first audio; later streams must match
    closed: bool

    async def publish(self, item: Item) -> None: ...

    def on_failure(self, callback: Callable[[str], None]) -> Callable[[], None]: ...


class Bus(Protocol):
    """Both buses. ``channels``: this process's live calls, as the ingest sees them."""

    channels: dict[str, Any]

    def attach(self, consumer: "Consumer") -> None: ...

    def open(self, interaction_id: str) -> Publisher: ...

    def release_if_idle(self, channel: "CallChannel") -> bool: ...

    def depth(self) -> int: ...

    def health(self) -> list[str]: ...

    async def start(self) -> None: ...

    async def drain(self, timeout_s: float) -> None: ...

    async def close(self) -> None: ...


class FailureNotice:
    """Worker -> ingest: the call cannot go on (provider down for good); the ingest closes its caller.
    Shared by both buses' per-call handles, which hold ``failure`` and ``_fail_callbacks`` in their slots."""

    __slots__ = ()
    failure: str | None
    _fail_callbacks: list[Callable[[str], None]]

    def on_failure(self, callback: Callable[[str], None]) -> Callable[[], None]:
        self._fail_callbacks.append(callback)
        if self.failure is not None:
            callback(self.failure)
        return lambda: self._fail_callbacks.remove(callback) if callback in self._fail_callbacks else None

    def fail(self, reason: str) -> None:
        self.failure = reason
        for callback in list(self._fail_callbacks):
            callback(reason)


class CallChannel(FailureNotice):
    __slots__ = ("interaction_id", "queue", "closed", "sample_rate", "_timeout_s", "_fail_callbacks", "failure",
                 "busy", "fast_path", "_maxsize", "_room")

    def __init__(self, interaction_id: str, maxsize: int, timeout_s: float) -> None:
        self.interaction_id = interaction_id
        # Unbounded queue, bound enforced for AUDIO only in publish(): control items must always get in.
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self._maxsize = maxsize
        self._room = asyncio.Event()  # set by get() when the consumer made room
        self.closed = False
        self.sample_rate: int | None = None  # of the call's first stream; later streams must match
        self._timeout_s = timeout_s
        self._fail_callbacks: list[Callable[[str], None]] = []
        self.failure: str | None = None
        self.busy = False  # the consumer is handling an item (or a fast-path send is in progress)
        # Set by the consumer while its call's provider stream is live: (pcm, received_at) -> sent?
        self.fast_path: Callable[[bytes, float], Awaitable[bool]] | None = None

    async def publish(self, item: Item) -> None:
        if self.closed:
            raise ChannelClosed(self.interaction_id)
        fast = self.fast_path
        if fast is not None and item[0] is AUDIO and not self.busy and self.queue.empty():
            self.busy = True
            try:
                if await fast(item[1], item[2]):
                    return
            finally:
                self.busy = False
        if item[0] is AUDIO and self.queue.qsize() >= self._maxsize:
            try:
                async with asyncio.timeout(self._timeout_s):
                    while self.queue.qsize() >= self._maxsize:
                        self._room.clear()
                        await self._room.wait()
            except TimeoutError:
                raise BusOverloaded(self.interaction_id) from None
        self.queue.put_nowait(item)

    async def get(self) -> Item:
        """Consumer side: the next item, in order."""
        item = await self.queue.get()
        self._room.set()
        return item



Consumer = Callable[[CallChannel], Awaitable[None]]


class MemoryBus:
    """Channels live from a call's first ``open`` until its consumer finishes with it."""

    def __init__(self, maxsize: int = 256, publish_timeout_s: float = 2.0) -> None:
        self._maxsize = maxsize
        self._timeout_s = publish_timeout_s
        self.channels: dict[str, CallChannel] = {}
        self._consumer: Consumer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self, consumer: Consumer) -> None:
        self._consumer = consumer

    def open(self, interaction_id: str) -> CallChannel:
        """The call's channel, created (and its consumer started) on first use. Synchronous on purpose:
        no await between the lookup and the insert, so two streams of one call can never make two."""
        channel = self.channels.get(interaction_id)
        if channel is None:
            if self._consumer is None:
                raise RuntimeError("no consumer attached to the bus")
            channel = self.channels[interaction_id] = CallChannel(interaction_id, self._maxsize, self._timeout_s)
            task = asyncio.get_running_loop().create_task(self._run(channel), name=f"call:{interaction_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return channel

    async def _run(self, channel: CallChannel) -> None:
        assert self._consumer is not None
        try:
            await self._consumer(channel)
        finally:
            channel.closed = True
            if self.channels.get(channel.interaction_id) is channel:
                del self.channels[channel.interaction_id]

    def release_if_idle(self, channel: CallChannel) -> bool:
        """Consumer side, after an END: close the channel unless a new stream already queued items."""
        if channel.queue.empty():
            channel.closed = True
            if self.channels.get(channel.interaction_id) is channel:
                del self.channels[channel.interaction_id]
            return True
        return False

    def depth(self) -> int:
        return sum(c.queue.qsize() for c in self.channels.values())

    def health(self) -> list[str]:
        return []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) for every consumer to finish (shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)
