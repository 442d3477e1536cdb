"""Exotel ingest: one WebSocket per stream, events parsed by :mod:`rtaa_cli.protocols.exotel`, audio onto the bus.

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
| a newer stream of the same call at another ingest (Redis bus) | the same close; this ingest publishes nothing more of the call |
| a start for a live call (or one in its resume grace) owned by another principal | close 1008 "call owned by another principal" |
| a new call beyond ``max_calls_per_principal`` live calls of its principal | close 1013 "too many calls for this principal" |
| server shutdown | close 1001 "server shutting down" |

A stream that drops without ``stop`` keeps its call (and provider stream, with KeepAlive) for
``reconnect_grace_s``: a new stream with the same call_sid continues it seamlessly; otherwise the call
ends with reason "stream dropped".

A call's sample rate is fixed by its first audio frame, not by a start: a newer stream with another rate
may supersede a stream that never sent audio (the worker reopens the provider stream at the new rate).

The rules themselves (start before media, one start per stream, newest stream wins, resume grace, stop,
the limits) are decided by the sans-I/O :mod:`rtaa_cli.pipeline.ingest_rules`; this module is its shell:
it feeds it each frame with the time, and carries out the outcome (closes, bus items, timers, metrics, logs).
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable, cast

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from rtaa_cli import logs
from rtaa_cli.protocols.closecodes import Close
from rtaa_cli.protocols.exotel import ErrorKind, ExotelProtocolError, Media, Start, Stop, parse_event
from rtaa_cli.pipeline import bus as busmod
from rtaa_cli.pipeline.auth import ANONYMOUS, Principal
from rtaa_cli.pipeline.config import IngestConfig
from rtaa_cli.pipeline.ingest_rules import (DISCARD, GARBAGE_ONLY_LIMIT, GARBAGE_REASON, IDLE_RULES,  # noqa: F401
                                            MAX_INTERACTION_ID, OWNED_REASON, PRINCIPAL_CAP_REASON,
                                            SHUTDOWN_REASON, SUPERSEDED_REASON, DROPPED_REASON, IngestRules, Rule,
                                            Stream, StreamRuleError)
from rtaa_cli.pipeline.metrics import PipelineMetrics
from rtaa_cli.pipeline.ratelimit import TokenBucket

log = logs.get("rtaa.ingest")
sampled = logs.Sampled(log)  # per-message warnings: a bounded sample, the metrics count every one

# closes websockets makes itself (the handler never sees the frame): counted and logged in handle()
_LIBRARY_CLOSE_KINDS = {Close.MESSAGE_TOO_BIG: Rule.OVERSIZE, Close.INVALID_PAYLOAD: Rule.INVALID_UTF8,
                        Close.PROTOCOL_ERROR: Rule.PROTOCOL_ERROR}
# log events of refusals that are not malformed input (the rest log "bad_input")
_LOG_EVENT = {Rule.CALL_HIJACK: "call_hijack_refused", Rule.OVER_PRINCIPAL_CAPACITY: "over_principal_capacity",
              Rule.OVER_CAPACITY: "over_capacity"}


class StreamConn(Stream):
    """One caller connection (one Exotel stream): the rules' :class:`Stream` plus its I/O."""

    __slots__ = ("ws", "principal", "channel", "close_task", "_unsubscribe", "timer")

    def __init__(self, ws: ServerConnection, messages: TokenBucket) -> None:
        principal: Principal = getattr(ws, "principal", ANONYMOUS)  # set at the handshake (server.py)
        super().__init__(principal.name, messages)
        self.ws = ws
        self.principal = principal
        self.channel: busmod.Publisher | None = None  # set once the rules accepted its start
        self.close_task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.timer: asyncio.TimerHandle | None = None  # the start timeout, then the hold limit


class Ingest:
    def __init__(self, cfg: IngestConfig, bus: busmod.Bus, metrics: PipelineMetrics) -> None:
        self.cfg = cfg
        self.bus = bus
        self.metrics = metrics
        self.rules = IngestRules(cfg, bus.channels)
        self.connections: set[StreamConn] = set()
        self._grace: dict[str, asyncio.TimerHandle] = {}  # the resume grace timers the rules asked for

    @property
    def current(self) -> dict[str, Stream]:
        """interaction -> its newest stream"""
        return self.rules.current

    @property
    def accepting(self) -> bool:
        return self.rules.accepting

    def owner_of(self, iid: str) -> str | None:
        """The principal that opened the live call ``iid`` (None: no such call now)."""
        return self.rules.owner_of(iid)

    def live_calls_of(self, name: str) -> int:
        return self.rules.live_calls_of(name)

    # -- carrying out the rules' outcomes ----------------------------------------------------------
    async def _refuse(self, s: StreamConn, err: StreamRuleError) -> None:
        """Count and log a broken rule, end the call if the rule says so, close the stream."""
        kind = err.kind
        code = int(err.close_code)
        iid = err.interaction_id or s.interaction_id
        if kind in IDLE_RULES:
            if s.closing:
                return
            self.metrics.idle_closes.labels(limit=kind.value).inc()
            log.warning("idle_close", interaction_id=iid, stream_sid=s.stream_sid, limit=kind.value,
                        close_code=code, reason=err.reason)
        elif kind is not Rule.SHUTTING_DOWN:
            self.metrics.bad_input.labels(kind=kind.value).inc()
            if kind is Rule.MEDIA_AFTER_STOP:
                self.metrics.audio_after_end.inc()
            elif kind is Rule.AUDIO_RATE:
                self.metrics.frames_in.inc()  # a started stream's frame all the same
            log.warning(_LOG_EVENT.get(kind, "bad_input"), interaction_id=iid, stream_sid=s.stream_sid,
                        kind=kind.value, close_code=code, reason=err.reason, principal=s.owner)
        if err.ends_call:
            await self._stop(s, err.reason, quiet=True)
        await self._close(s, code, err.reason)

    async def _close(self, s: StreamConn, code: int, reason: str) -> None:
        """Start the closing handshake without waiting for it: the handler keeps reading (and discarding)
        so the caller's queued frames cannot stall the handshake (websockets pauses reading while its
        receive queue is full)."""
        if not self.rules.begin_close(s):
            return
        self.metrics.caller_closes.labels(code=str(code)).inc()
        s.close_task = asyncio.get_running_loop().create_task(s.ws.close(code, reason))

    async def _bad(self, s: StreamConn, kind: str, code: int, reason: str) -> None:
        self.metrics.bad_input.labels(kind=kind).inc()
        log.warning("bad_input", interaction_id=s.interaction_id, stream_sid=s.stream_sid, kind=kind,
                    close_code=code, reason=reason)
        await self._close(s, code, reason)

    def _start_expired(self, s: StreamConn) -> None:
        s.timer = None
        try:
            self.rules.start_expired(s)
        except StreamRuleError as err:
            asyncio.get_running_loop().create_task(self._refuse(s, err))

    def _hold_check(self, s: StreamConn) -> None:
        """Lazy timer: re-armed for the rest of the allowance, so the media path only stores a time."""
        s.timer = None
        loop = asyncio.get_running_loop()
        try:
            left = self.rules.hold_left(s, time.perf_counter())
        except StreamRuleError as err:
            loop.create_task(self._refuse(s, err))
            return
        if left is not None:
            s.timer = loop.call_later(left, self._hold_check, s)

    # -- one caller ----------------------------------------------------------------------------------
    async def handle(self, ws: ServerConnection) -> None:
        rules = self.rules
        s = StreamConn(ws, rules.message_bucket(time.perf_counter()))
        self.connections.add(s)
        if self.cfg.start_timeout_s > 0:
            s.timer = asyncio.get_running_loop().call_later(self.cfg.start_timeout_s, self._start_expired, s)
        frames_in = self.metrics.frames_in
        try:
            async for message in ws:
                now = time.perf_counter()
                try:
                    if not rules.message(s, now):
                        continue  # draining until the close completes
                    if type(message) is bytes:
                        rules.binary(s)
                    try:
                        ev = parse_event(message)
                    except ExotelProtocolError as exc:
                        if exc.kind is ErrorKind.UNKNOWN_EVENT:  # count, log a sample, ignore
                            self.metrics.bad_input.labels(kind=exc.kind.value).inc()
                            rules.unknown_event(s)
                            sampled.warning("bad_input", key="unknown_event", interaction_id=s.interaction_id,
                                            kind=exc.kind.value, reason=exc.reason, action="ignored")
                            continue
                        await self._bad(s, exc.kind.value, exc.close_code, exc.reason)
                        continue
                    if type(ev) is Media:  # the hot path
                        action = rules.media(s, len(ev.payload), now)
                        frames_in.inc()
                        if action is DISCARD:
                            continue
                        channel = s.channel
                        assert channel is not None  # a started stream
                        if channel.sample_rate is None:
                            channel.sample_rate = s.sample_rate  # the rate is fixed by audio, not by a start
                        try:
                            await channel.publish((busmod.AUDIO, ev.payload, now))
                        except busmod.BusOverloaded as exc:
                            await self._overloaded(s, exc)
                        except busmod.ChannelClosed:
                            rules.call_gone(s)
                    elif type(ev) is Start:
                        await self._start(s, ev, now)
                    elif type(ev) is Stop:
                        await self._stop(s, ev.reason or "stopped")
                    # connected, dtmf, mark, clear: nothing to do for transcription
                except StreamRuleError as err:
                    await self._refuse(s, err)
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
        self.rules.begin_close(s)
        self.metrics.caller_closes.labels(code=str(sent.code)).inc()
        self.metrics.bad_input.labels(kind=kind.value).inc()
        log.warning("bad_input", interaction_id=s.interaction_id, stream_sid=s.stream_sid, kind=kind.value,
                    close_code=sent.code, reason=sent.reason)

    async def _start(self, s: StreamConn, ev: Start, now: float) -> None:
        started = self.rules.start(s, ev, now)  # raises when refused
        iid = started.interaction_id
        channel = s.channel = self.bus.open(iid)
        timer = self._grace.pop(iid, None)
        if timer is not None:
            timer.cancel()
        # The start timeout is met; the hold limit begins.
        if s.timer is not None:
            s.timer.cancel()
            s.timer = None
        loop = asyncio.get_running_loop()
        if self.cfg.max_hold_s > 0:
            s.timer = loop.call_later(self.cfg.max_hold_s, self._hold_check, s)
        older = cast(StreamConn | None, started.superseded)
        if older is not None:
            self.metrics.streams_superseded.inc()
            log.info("stream_superseded", interaction_id=iid, old_stream_sid=older.stream_sid,
                     new_stream_sid=ev.stream_sid)
            loop.create_task(self._close(older, Close.GOING_AWAY, SUPERSEDED_REASON))
        self.metrics.streams_total.inc()
        s._unsubscribe = channel.on_failure(
            lambda reason: asyncio.get_running_loop().create_task(self._close(s, Close.INTERNAL_ERROR, reason)))
        try:
            await channel.publish((busmod.START, ev.stream_sid, ev.sample_rate))  # the worker publishes call_started
        except busmod.BusOverloaded as exc:
            await self._overloaded(s, exc)
            return
        log.info("stream_started", interaction_id=iid, stream_sid=ev.stream_sid, sample_rate=ev.sample_rate)

    def superseded_elsewhere(self, iid: str) -> None:
        """A newer stream of call ``iid`` began at another ingest (Redis bus): close this one's stream of it
        as superseded and cancel its resume grace; the bus publishes nothing more of the call from here."""
        timer = self._grace.pop(iid, None)
        if timer is not None:
            timer.cancel()
        older = cast(StreamConn | None, self.rules.superseded_elsewhere(iid))
        if older is None and timer is None:
            return  # the call had ended here already (its END published)
        self.metrics.streams_superseded.inc()
        log.info("stream_superseded", interaction_id=iid, old_stream_sid=older.stream_sid if older else None,
                 by="another ingest", in_grace=timer is not None)
        if older is not None:
            asyncio.get_running_loop().create_task(self._close(older, Close.GOING_AWAY, SUPERSEDED_REASON))

    async def _overloaded(self, s: StreamConn, exc: busmod.BusOverloaded) -> None:
        self.metrics.bus_overloaded.inc()
        log.error("bus_overloaded", interaction_id=s.interaction_id, reason=exc.reason)
        await self._close(s, Close.INTERNAL_ERROR, exc.reason)

    async def _stop(self, s: StreamConn, reason: str, quiet: bool = False) -> None:
        if self.rules.stop(s) is None:
            return
        assert s.channel is not None
        try:
            await s.channel.publish((busmod.END, reason))
        except (busmod.BusOverloaded, busmod.ChannelClosed):
            pass
        if not quiet:
            log.info("stream_stopped", interaction_id=s.interaction_id, stream_sid=s.stream_sid, reason=reason)

    def _disconnected(self, s: StreamConn) -> None:
        """A stream closed. If it was the call's current one and never sent stop, start the resume grace."""
        dropped = self.rules.disconnected(s, time.perf_counter())
        if dropped is None:
            return
        channel = s.channel
        assert channel is not None
        iid = dropped.interaction_id
        if dropped.reason == DROPPED_REASON:
            log.info("stream_dropped", interaction_id=iid, stream_sid=s.stream_sid, grace_s=dropped.grace_s)
        if dropped.grace_s <= 0:
            self._end_later(channel, dropped.reason)
            return
        self._grace[iid] = asyncio.get_running_loop().call_later(dropped.grace_s, self._grace_expired, iid, channel)

    def _grace_expired(self, iid: str, channel: busmod.Publisher) -> None:
        self._grace.pop(iid, None)
        reason = self.rules.grace_expired(iid)
        if reason is not None:
            self._end_later(channel, reason)

    def _end_later(self, channel: busmod.Publisher, reason: str) -> None:
        async def end() -> None:
            try:
                await channel.publish((busmod.END, reason))
            except (busmod.BusOverloaded, busmod.ChannelClosed):
                pass
        asyncio.get_running_loop().create_task(end())

    async def shutdown(self) -> None:
        """Stop accepting; close every caller 1001 and end its call now (no resume grace)."""
        in_grace, ended = self.rules.shutdown(list(self.connections))
        for iid in in_grace:
            timer = self._grace.pop(iid, None)
            if timer is not None:
                timer.cancel()
            channel = self.bus.channels.get(iid)
            if channel is not None:
                self._end_later(channel, "shutdown")
        for timer in self._grace.values():  # none left over; cancelled all the same
            timer.cancel()
        self._grace.clear()
        for s in ended:  # its call ends now; later frames from it are reported, not sent
            assert s.channel is not None
            self._end_later(s.channel, "shutdown")
        for s in list(self.connections):
            await self._close(s, Close.GOING_AWAY, SHUTDOWN_REASON)
