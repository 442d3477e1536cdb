"""Exotel ingest: one WebSocket per stream, events parsed by :mod:`rtaa_cli.exotel`, audio onto the bus.

Outcomes (all counted in ``rtaa_bad_input_total{kind}`` or ``rtaa_caller_closes_total{code}`` and logged
with the interaction id when known; no bad input affects another call):

| input | outcome |
|---|---|
| malformed JSON, missing/mistyped field, bad base64, odd-length PCM | close 1007 with the codec's reason |
| start with a sample rate not served, or differing from the rate of audio the call already had | close 1007 |
| media before start | close 1008 "media before start" |
| media after stop | close 1008 "media after stop" (the audio is reported, never sent) |
| unknown event | counted + logged as a bounded sample, **ignored** (Exotel adds events; one should not kill a call) |
| ``GARBAGE_ONLY_LIMIT`` unknown events and no start | close 1003 (not an Exotel stream) |
| text frame that is not UTF-8 | close 1007 (websockets), counted ``invalid_utf8`` |
| binary frame | close 1003 "binary frames are not Exotel messages" |
| frame over ``max_message_bytes`` | close 1009 (websockets' max_size) |
| more than ``max_messages_per_s`` (token bucket) | close 1008 "message rate limit exceeded" |
| audio faster than ``max_audio_speed`` x real time, beyond ``audio_burst_s`` ahead | call ended, close 1008 "audio faster than 4 x real time" |
| no ``start`` within ``start_timeout_s`` | close 1008 "no start within 5 s" (``rtaa_idle_closes_total{limit="start"}``) |
| a started stream with no audio for ``max_hold_s`` | call ended, close 1008 "no audio for 600 s" (``{limit="hold"}``) |
| a new call beyond ``max_calls`` | close 1013 "at capacity, try again later" |
| bus full for ``bus_publish_timeout_s`` | close 1011 "pipeline overloaded" |
| Redis bus unreachable | close 1011 "pipeline unavailable (bus down)" |
| Redis bus restarted without the call | close 1011 "pipeline lost this call (bus restarted), reconnect" |
| provider down for good | close 1011 "transcription provider unavailable" |
| a newer stream of the same call, same principal | older stream closed 1001 "superseded by a newer stream for this call" |
| a start for a live call (or one in its resume grace) owned by another principal | close 1008 "call owned by another principal" |
| a new call beyond ``max_calls_per_principal`` live calls of its principal | close 1013 "too many calls for this principal" |
| server shutdown | close 1001 "server shutting down" |

A stream that drops without ``stop`` keeps its call (and provider stream, with KeepAlive) for
``reconnect_grace_s``: a new stream with the same call_sid continues it seamlessly; otherwise the call
ends with reason "stream dropped".

A call's sample rate is fixed by its first audio frame, not by a start: a newer stream with another rate
may supersede a stream that never sent audio (the worker reopens the provider stream at the new rate).
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from rtaa_cli import logs
from rtaa_cli.closecodes import Close
from rtaa_cli.exotel import ErrorKind, ExotelProtocolError, Media, Start, Stop, parse_event
from rtaa_cli.pipeline import bus as busmod
from rtaa_cli.pipeline.auth import ANONYMOUS, Principal
from rtaa_cli.pipeline.config import IngestConfig
from rtaa_cli.pipeline.metrics import PipelineMetrics
from rtaa_cli.pipeline.ratelimit import TokenBucket, audio_bucket

log = logs.get("rtaa.ingest")
sampled = logs.Sampled(log)  # per-message warnings: a bounded sample, the metrics count every one

SUPERSEDED_REASON = "superseded by a newer stream for this call"
OWNED_REASON = "call owned by another principal"
PRINCIPAL_CAP_REASON = "too many calls for this principal"
GARBAGE_ONLY_LIMIT = 50  # unknown events before any start: not an Exotel stream
GARBAGE_REASON = f"no Exotel stream: {GARBAGE_ONLY_LIMIT} unknown events and no start"
# closes websockets makes itself (the handler never sees the frame): counted and logged in handle()
_LIBRARY_CLOSE_KINDS = {Close.MESSAGE_TOO_BIG: "oversize", Close.INVALID_PAYLOAD: "invalid_utf8",
                        Close.PROTOCOL_ERROR: "protocol_error"}
MAX_INTERACTION_ID = 128  # it names metrics-free state, log lines, feed paths and the provider's tag


class StreamConn:
    """One caller connection (one Exotel stream)."""

    __slots__ = ("ws", "principal", "interaction_id", "stream_sid", "sample_rate", "channel", "stopped", "superseded",
                 "closing", "unknown_events", "close_task", "_unsubscribe", "audio", "bytes_per_s", "last_audio",
                 "timer")

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.principal: Principal = getattr(ws, "principal", ANONYMOUS)  # set at the handshake (server.py)
        self.interaction_id: str | None = None
        self.stream_sid = ""
        self.sample_rate = 0  # of its start; fixes the call's rate at this stream's first published frame
        self.channel: busmod.Publisher | None = None
        self.stopped = False
        self.superseded = False
        self.closing = False
        self.unknown_events = 0
        self.close_task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.audio: TokenBucket | None = None  # audio seconds (set at start; None: no limit)
        self.bytes_per_s = 16000.0  # of its start's rate (16-bit mono)
        self.last_audio = 0.0  # perf_counter of the last media frame (or of the start)
        self.timer: asyncio.TimerHandle | None = None  # the start timeout, then the hold limit


class Ingest:
    def __init__(self, cfg: IngestConfig, bus: busmod.Bus, metrics: PipelineMetrics) -> None:
        self.cfg = cfg
        self.bus = bus
        self.metrics = metrics
        self.current: dict[str, StreamConn] = {}  # interaction -> its newest stream
        self.connections: set[StreamConn] = set()
        self._grace: dict[str, asyncio.TimerHandle] = {}
        self.owners: dict[str, str] = {}  # interaction -> principal name of the stream that opened the call
        self.accepting = True
        key = cfg.interaction_key
        if key not in ("call_sid", "stream_sid") and not key.startswith("custom:"):
            raise ValueError(f"interaction key must be call_sid, stream_sid or custom:<name>, not {key!r}")

    # -- closing helpers ---------------------------------------------------------------------------
    async def _end_and_close(self, s: StreamConn, reason: str) -> None:
        """End the stream's call now (no resume grace: the limit was the caller's doing), close 1008."""
        await self._stop(s, reason, quiet=True)
        await self._close(s, Close.POLICY_VIOLATION, reason)

    async def _idle_close(self, s: StreamConn, limit: str, reason: str) -> None:
        if s.closing:
            return
        self.metrics.idle_closes.labels(limit=limit).inc()
        log.warning("idle_close", interaction_id=s.interaction_id, stream_sid=s.stream_sid, limit=limit,
                    close_code=int(Close.POLICY_VIOLATION), reason=reason)
        await self._end_and_close(s, reason)

    def _start_expired(self, s: StreamConn) -> None:
        s.timer = None
        if s.channel is None and not s.closing:
            asyncio.get_running_loop().create_task(
                self._idle_close(s, "start", f"no start within {self.cfg.start_timeout_s:g} s"))

    def _hold_check(self, s: StreamConn) -> None:
        """Lazy timer: re-armed for the rest of the allowance, so the media path only stores a time."""
        s.timer = None
        if s.closing or s.superseded:
            return
        left = self.cfg.max_hold_s - (time.perf_counter() - s.last_audio)
        loop = asyncio.get_running_loop()
        if left > 0.001:
            s.timer = loop.call_later(left, self._hold_check, s)
        else:
            loop.create_task(self._idle_close(s, "hold", f"no audio for {self.cfg.max_hold_s:g} s"))

    async def _close(self, s: StreamConn, code: int, reason: str) -> None:
        """Start the closing handshake without waiting for it: the handler keeps reading (and discarding)
        so the caller's queued frames cannot stall the handshake (websockets pauses reading while its
        receive queue is full)."""
        if s.closing:
            return
        s.closing = True
        self.metrics.caller_closes.labels(code=str(code)).inc()
        s.close_task = asyncio.get_running_loop().create_task(s.ws.close(code, reason))

    async def _bad(self, s: StreamConn, kind: str, code: int, reason: str) -> None:
        self.metrics.bad_input.labels(kind=kind).inc()
        log.warning("bad_input", interaction_id=s.interaction_id, stream_sid=s.stream_sid, kind=kind,
                    close_code=code, reason=reason)
        await self._close(s, code, reason)

    def _interaction_id(self, ev: Start) -> str | None:
        key = self.cfg.interaction_key
        if key == "call_sid":
            return ev.call_sid
        if key == "stream_sid":
            return ev.stream_sid
        return ev.custom_parameters.get(key[len("custom:"):]) or None

    # -- one caller ----------------------------------------------------------------------------------
    async def handle(self, ws: ServerConnection) -> None:
        s = StreamConn(ws)
        self.connections.add(s)
        bucket = TokenBucket(self.cfg.max_messages_per_s, self.cfg.rate_burst, time.perf_counter())
        if self.cfg.start_timeout_s > 0:
            s.timer = asyncio.get_running_loop().call_later(self.cfg.start_timeout_s, self._start_expired, s)
        frames_in = self.metrics.frames_in
        try:
            async for message in ws:
                now = time.perf_counter()
                if s.closing:
                    continue  # draining until the close completes
                if not bucket.take(now):
                    await self._bad(s, "rate_limit", Close.POLICY_VIOLATION, "message rate limit exceeded")
                    continue
                if type(message) is bytes:
                    await self._bad(s, "binary_frame", Close.UNSUPPORTED_DATA, "binary frames are not Exotel messages")
                    continue
                try:
                    ev = parse_event(message)
                except ExotelProtocolError as exc:
                    if exc.kind is ErrorKind.UNKNOWN_EVENT:  # unknown event: count, log a sample, ignore
                        self.metrics.bad_input.labels(kind="unknown_event").inc()
                        s.unknown_events += 1
                        if s.channel is None and s.unknown_events >= GARBAGE_ONLY_LIMIT:
                            await self._bad(s, "garbage_only", Close.UNSUPPORTED_DATA, GARBAGE_REASON)
                            continue
                        sampled.warning("bad_input", key="unknown_event", interaction_id=s.interaction_id,
                                        kind="unknown_event", reason=exc.reason, action="ignored")
                        continue
                    await self._bad(s, exc.kind.value, exc.close_code, exc.reason)
                    continue
                if type(ev) is Media:  # the hot path
                    channel = s.channel
                    if channel is None or s.stopped:
                        if s.stopped:
                            self.metrics.audio_after_end.inc()
                            await self._bad(s, "media_after_stop", Close.POLICY_VIOLATION, "media after stop")
                        else:
                            await self._bad(s, "media_before_start", Close.POLICY_VIOLATION, "media before start")
                        continue
                    frames_in.inc()
                    audio = s.audio
                    if audio is not None and not audio.take(now, len(ev.payload) / s.bytes_per_s):
                        self.metrics.bad_input.labels(kind="audio_rate").inc()
                        reason = f"audio faster than {self.cfg.max_audio_speed:g} x real time"
                        log.warning("bad_input", interaction_id=s.interaction_id, stream_sid=s.stream_sid,
                                    kind="audio_rate", close_code=int(Close.POLICY_VIOLATION), reason=reason,
                                    burst_s=self.cfg.audio_burst_s)
                        await self._end_and_close(s, reason)
                        continue
                    s.last_audio = now
                    if s.superseded:
                        continue
                    if channel.sample_rate is None:
                        channel.sample_rate = s.sample_rate  # the rate is fixed by audio, not by a start
                    try:
                        await channel.publish((busmod.AUDIO, ev.payload, now))
                    except busmod.BusOverloaded as exc:
                        await self._overloaded(s, exc)
                        continue
                    except busmod.ChannelClosed:
                        self.metrics.audio_after_end.inc()
                        await self._bad(s, "media_after_stop", Close.POLICY_VIOLATION, "media after the call ended")
                        continue
                elif type(ev) is Start:
                    if not await self._start(s, ev):
                        continue
                elif type(ev) is Stop:
                    await self._stop(s, ev.reason or "stopped")
                # connected, dtmf, mark, clear: nothing to do for transcription
        except ConnectionClosed:
            self._library_close(s)
        finally:
            if s.timer is not None:
                s.timer.cancel()
            self.connections.discard(s)
            if s._unsubscribe is not None:
                s._unsubscribe()
            self._disconnected(s)

    def _library_close(self, s: StreamConn) -> None:
        """websockets closes by itself on a frame over max_size (1009), invalid UTF-8 text (1007) or a
        broken frame (1002): the handler never sees that input, so it is counted and logged here."""
        sent = s.ws.protocol.close_sent
        if s.closing or sent is None or s.ws.protocol.close_rcvd_then_sent:
            return  # we closed (already counted), the caller closed first, or the connection just dropped
        kind = _LIBRARY_CLOSE_KINDS.get(sent.code)
        if kind is None:
            return
        s.closing = True
        self.metrics.caller_closes.labels(code=str(sent.code)).inc()
        self.metrics.bad_input.labels(kind=kind).inc()
        log.warning("bad_input", interaction_id=s.interaction_id, stream_sid=s.stream_sid, kind=kind,
                    close_code=sent.code, reason=sent.reason)

    async def _start(self, s: StreamConn, ev: Start) -> bool:
        if s.channel is not None:
            await self._bad(s, "duplicate_start", Close.POLICY_VIOLATION, "second start on one stream")
            return False
        if not self.accepting:
            await self._close(s, Close.GOING_AWAY, "server shutting down")
            return False
        iid = self._interaction_id(ev)
        s.stream_sid = ev.stream_sid
        if iid is None:
            await self._bad(s, "invalid_field", Close.INVALID_PAYLOAD,
                            f"start.custom_parameters.{self.cfg.interaction_key[7:]}: missing (interaction key)")
            return False
        if len(iid) > MAX_INTERACTION_ID:
            await self._bad(s, "invalid_field", Close.INVALID_PAYLOAD,
                            f"interaction id ({self.cfg.interaction_key}) longer than {MAX_INTERACTION_ID} characters")
            return False
        s.interaction_id = iid
        if ev.sample_rate not in self.cfg.sample_rates:
            await self._bad(s, "wrong_sample_rate", Close.INVALID_PAYLOAD,
                            f"sample rate {ev.sample_rate} not served (use one of {list(self.cfg.sample_rates)})")
            return False
        existing = self.bus.channels.get(iid)
        if existing is not None and self.owners.get(iid) != s.principal.name:
            # Only the principal that opened a call may continue or take it over (also inside the grace).
            self.metrics.bad_input.labels(kind="call_hijack").inc()
            log.warning("call_hijack_refused", interaction_id=iid, principal=s.principal.name,
                        stream_sid=ev.stream_sid)
            s.interaction_id = None  # never this call's stream: its close must not touch the call
            await self._close(s, Close.POLICY_VIOLATION, OWNED_REASON)
            return False
        if existing is None and self.cfg.max_calls_per_principal and \
                self.live_calls_of(s.principal.name) >= self.cfg.max_calls_per_principal:
            self.metrics.bad_input.labels(kind="over_principal_capacity").inc()
            log.warning("over_principal_capacity", interaction_id=iid, principal=s.principal.name,
                        max_calls_per_principal=self.cfg.max_calls_per_principal)
            await self._close(s, Close.TRY_AGAIN_LATER, PRINCIPAL_CAP_REASON)
            return False
        if existing is None and len(self.bus.channels) >= self.cfg.max_calls:
            self.metrics.bad_input.labels(kind="over_capacity").inc()
            log.warning("over_capacity", interaction_id=iid, max_calls=self.cfg.max_calls)
            await self._close(s, Close.TRY_AGAIN_LATER, "at capacity, try again later")
            return False
        if existing is not None and existing.sample_rate not in (None, ev.sample_rate):
            await self._bad(s, "wrong_sample_rate", Close.INVALID_PAYLOAD,
                            f"sample rate {ev.sample_rate} differs from this call's {existing.sample_rate}")
            return False
        channel = self.bus.open(iid)
        if existing is None:
            self._own(iid, s.principal.name)
        s.sample_rate = ev.sample_rate
        s.channel = channel
        self._arm_limits(s, ev.sample_rate)
        timer = self._grace.pop(iid, None)
        if timer is not None:
            timer.cancel()
        older = self.current.get(iid)
        self.current[iid] = s
        if older is not None and older is not s and not older.stopped:
            # Newest wins: the older stream stops feeding this call before the new one's first frame.
            older.superseded = True
            self.metrics.streams_superseded.inc()
            log.info("stream_superseded", interaction_id=iid, old_stream_sid=older.stream_sid,
                     new_stream_sid=ev.stream_sid)
            asyncio.get_running_loop().create_task(self._close(older, Close.GOING_AWAY, SUPERSEDED_REASON))
        self.metrics.streams_total.inc()
        s._unsubscribe = channel.on_failure(
            lambda reason: asyncio.get_running_loop().create_task(self._close(s, Close.INTERNAL_ERROR, reason)))
        try:
            await channel.publish((busmod.START, ev.stream_sid, ev.sample_rate))  # the worker publishes call_started
        except busmod.BusOverloaded as exc:
            await self._overloaded(s, exc)
            return False
        log.info("stream_started", interaction_id=iid, stream_sid=ev.stream_sid, sample_rate=ev.sample_rate)
        return True

    async def _overloaded(self, s: StreamConn, exc: busmod.BusOverloaded) -> None:
        self.metrics.bus_overloaded.inc()
        log.error("bus_overloaded", interaction_id=s.interaction_id, reason=exc.reason)
        await self._close(s, Close.INTERNAL_ERROR, exc.reason)

    def _arm_limits(self, s: StreamConn, sample_rate: int) -> None:
        """At a successful start: the start timeout is met; the audio budget and the hold limit begin."""
        now = time.perf_counter()
        s.bytes_per_s = 2.0 * sample_rate
        s.audio = audio_bucket(self.cfg.max_audio_speed, self.cfg.audio_burst_s, now)
        s.last_audio = now
        if s.timer is not None:
            s.timer.cancel()
            s.timer = None
        if self.cfg.max_hold_s > 0:
            s.timer = asyncio.get_running_loop().call_later(self.cfg.max_hold_s, self._hold_check, s)

    def owner_of(self, iid: str) -> str | None:
        """The principal that opened the live call ``iid`` (None: no such call now)."""
        return self.owners.get(iid) if iid in self.bus.channels else None

    def live_calls_of(self, name: str) -> int:
        return sum(1 for iid in self.bus.channels if self.owners.get(iid) == name)

    def _own(self, iid: str, name: str) -> None:
        self.owners[iid] = name
        if len(self.owners) > 2 * len(self.bus.channels) + 64:  # amortised: forget calls that ended
            self.owners = {k: v for k, v in self.owners.items() if k in self.bus.channels}

    async def _stop(self, s: StreamConn, reason: str, quiet: bool = False) -> None:
        if s.channel is None or s.stopped or s.superseded:
            return
        s.stopped = True
        if self.current.get(s.interaction_id or "") is s:
            del self.current[s.interaction_id]  # type: ignore[arg-type]
        try:
            await s.channel.publish((busmod.END, reason))
        except (busmod.BusOverloaded, busmod.ChannelClosed):
            pass
        if not quiet:
            log.info("stream_stopped", interaction_id=s.interaction_id, stream_sid=s.stream_sid, reason=reason)

    def _disconnected(self, s: StreamConn) -> None:
        """A stream closed. If it was the call's current one and never sent stop, start the resume grace."""
        iid = s.interaction_id
        if iid is None or s.channel is None or s.stopped or s.superseded or self.current.get(iid) is not s:
            return
        del self.current[iid]
        channel = s.channel
        if not self.accepting:
            self._end_later(channel, "shutdown")
            return
        log.info("stream_dropped", interaction_id=iid, stream_sid=s.stream_sid, grace_s=self.cfg.reconnect_grace_s)
        self._grace[iid] = asyncio.get_running_loop().call_later(
            self.cfg.reconnect_grace_s, self._grace_expired, iid, channel)

    def _grace_expired(self, iid: str, channel: busmod.Publisher) -> None:
        self._grace.pop(iid, None)
        if self.current.get(iid) is None:
            self._end_later(channel, "stream dropped")

    def _end_later(self, channel: busmod.Publisher, reason: str) -> None:
        async def end() -> None:
            try:
                await channel.publish((busmod.END, reason))
            except (busmod.BusOverloaded, busmod.ChannelClosed):
                pass
        asyncio.get_running_loop().create_task(end())

    async def shutdown(self) -> None:
        """Stop accepting; close every caller 1001 and end its call now (no resume grace)."""
        self.accepting = False
        for iid, timer in list(self._grace.items()):
            timer.cancel()
            channel = self.bus.channels.get(iid)
            if channel is not None:
                self._end_later(channel, "shutdown")
        self._grace.clear()
        for s in list(self.connections):
            iid = s.interaction_id
            if iid is not None and s.channel is not None and self.current.get(iid) is s and not s.stopped:
                s.stopped = True  # its call ends now; later frames from it are reported, not sent
                del self.current[iid]
                self._end_later(s.channel, "shutdown")
            await self._close(s, Close.GOING_AWAY, "server shutting down")
