"""The blocking driver (websockets' sync client, under gevent) of the soak's Locust users.

It plays a :class:`~rtaa_cli.call.script.CallScript` -- every stream its segments ask for -- or a
:class:`~rtaa_cli.call.script.BadInputScript`, and tells the
:class:`~rtaa_cli.call.recorder.CallRecorder` what happened; the soak turns the result into its record
(``CallRecord.from_result``). websockets' sync client works under gevent (its reader thread becomes a
greenlet; ``time.sleep`` is gevent's once Locust patched it). Media frames are sent by the process's
:mod:`~rtaa_cli.call.frame_scheduler` (one greenlet for every call); the call's greenlet hands it
each run of frames and does everything else. Every socket is closed in ``finally``.

Behaviours (``CallSpec.kind``, the soak scenario's): ``normal``; ``hold`` (no media for ``hold_s`` at
``hold_at_s``); ``disconnect`` (TCP drop mid-call without a close frame, then a new stream with the
same call_sid and a new stream_sid continues the audio); ``second_stream`` (a second stream for the
call opens while the first is still streaming and carries the rest of the audio; the first should be
closed by the server); ``bad:<what>`` (one bad input, see ``scenario.BAD_INPUTS``; the expected close
codes go into the result).
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Sequence

from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import ClientConnection, connect

from rtaa_cli import robustmark
from rtaa_cli.call.frame_scheduler import FrameScheduler, MediaRun, scheduler
from rtaa_cli.call.recorder import CallRecorder, CallResult, Close, close_of, feed_tap
from rtaa_cli.call.script import BadInputScript, CallOptions, CallScript, new_stream_sid
from rtaa_cli.feeds.parse import FieldMapping
from rtaa_cli.feeds.redis_feed import SyncRedisFeed
from rtaa_cli.feeds.sse_feed import SyncSseFeed
from rtaa_cli.feeds.webhook import SyncWebhookFeed
from rtaa_cli.internals import flush_tail, raw_socket
from rtaa_cli.pacing import Pacer, wait_sync
from rtaa_cli.protocols.exotel import StreamEncoder
from rtaa_cli.soak.scenario import BAD_INPUTS
from rtaa_cli.wserrors import ws_error_reason

OPEN_TIMEOUT_S = 10.0  # Exotel: the bot must answer within 10 s
CLOSE_WAIT_S = 5.0  # bounded wait for the server's close after bad input / stop


@dataclass
class CallSpec:
    url: str
    call_sid: str
    frames: Sequence[bytes]
    frame_ms: int = 36
    sample_rate: int = 8000
    kind: str = "normal"
    transcripts_url: str | None = None  # --transcripts (rtaa_cli.feeds.url rule)
    feed_mapping: FieldMapping | None = None  # --feed-map for a foreign schema
    headers: dict[str, str] = field(default_factory=dict)
    account_sid: str = "AC_rtaa_soak"
    hold_at_s: float = 3.0
    hold_s: float = 15.0
    disconnect_at_s: float = 3.0
    reconnect_after_s: float = 0.5
    server_hangup_ok: bool = False  # scenario server_hangup = "ok": a 1000 close before stop completes the call
    second_stream_at_s: float = 3.0
    wait_final_s: float = 10.0
    oversize_bytes: int = 2 * 1024 * 1024
    start_at: float | None = None  # wall time to start sending (burst); None: now
    speed: float = 1.0
    watermark: bool = True  # mark each frame's LSBs with this call (rtaa_cli.watermark) as it is sent
    robust_mark: bool = robustmark.DEFAULT_ON  # with watermark: also the robust mark (rtaa_cli.robustmark)

    def script(self) -> CallScript | BadInputScript:
        """The scenario behaviour as a script. Events go at the frame nearest their time (a hold past
        the audio is dropped; a stream switch stays between the first and the last frame)."""
        options = CallOptions(call_sid=self.call_sid, stream_sid=new_stream_sid(), account_sid=self.account_sid,
                              custom_parameters={"rtaa": "soak"}, sample_rate=self.sample_rate, frame_ms=self.frame_ms,
                              stop_reason="callended", watermark=self.watermark, robust_mark=self.robust_mark)
        if self.kind.startswith("bad:"):
            what = self.kind[4:]
            return BadInputScript(self.frames, options, what, BAD_INPUTS[what], self.oversize_bytes)
        frame_s, n = self.frame_ms / 1000.0, len(self.frames)
        k_hold = round(self.hold_at_s / frame_s)
        if self.kind == "hold" and k_hold < n:
            options = _with(options, holds=((self.hold_s, k_hold * frame_s),))
        switch_at = {"disconnect": self.disconnect_at_s, "second_stream": self.second_stream_at_s}.get(self.kind)
        if switch_at is not None and n > 0:
            at = min(max(1, round(switch_at / frame_s)), n - 1) * frame_s
            options = (_with(options, reconnects=((self.reconnect_after_s, at),)) if self.kind == "disconnect"
                       else _with(options, second_streams=(at,)))
        return CallScript(self.frames, options, kind=self.kind)


def _with(options: CallOptions, **changes: object) -> CallOptions:
    return replace(options, **changes)  # type: ignore[arg-type]


def _open(url: str, headers: dict[str, str]) -> ClientConnection:
    # No compression (Exotel sends none, and deflate would cost the generator CPU), no proxy (a set
    # HTTP_PROXY must not hijack loopback), no pings (the call's own traffic keeps it alive).
    # legacy=True: websockets 17's documented way to get the connection directly (its lifetime is
    # the call's, closed in run_call's finally) instead of a context manager.
    return connect(url, additional_headers=headers or None, compression=None, proxy=None,
                   open_timeout=OPEN_TIMEOUT_S, ping_interval=None, close_timeout=CLOSE_WAIT_S,
                   max_size=4 * 1024 * 1024, legacy=True)


def _drain(ws: ClientConnection, closed: threading.Event) -> None:
    """Read (and ignore) server->caller messages (media/mark/clear) so the connection never stalls."""
    try:
        while True:
            ws.recv()
    except (ConnectionClosed, OSError, RuntimeError):
        pass
    finally:
        closed.set()


class Stream:
    """One caller->server WebSocket of the call."""

    def __init__(self, url: str, headers: dict[str, str], enc: StreamEncoder, recorder: CallRecorder) -> None:
        self.url, self.headers, self.enc, self.recorder = url, headers, enc, recorder
        self.ws: ClientConnection | None = None
        self.closed = threading.Event()
        self.dropped = False
        self.recorded = False
        self.fast = False  # the frame scheduler may write to the socket directly (see frame_scheduler)

    def open(self) -> None:
        self.ws = _open(self.url, self.headers)
        self.recorder.stream_opened()
        sock = raw_socket(self.ws)
        self.fast = sock is not None and not os.get_blocking(sock.fileno())  # gevent's plain socket
        threading.Thread(target=_drain, args=(self.ws, self.closed), daemon=True).start()

    def send(self, text: str | bytes) -> None:
        assert self.ws is not None
        self.ws.send(text)

    def flush(self, tail: bytes) -> None:
        """Finish a frame the scheduler wrote in part, under websockets' send lock (no interleaving)."""
        assert self.ws is not None
        flush_tail(self.ws, tail)

    def begin(self, script: CallScript) -> None:
        self.send(self.enc.connected())
        self.recorder.message_sent("connected")
        self.send(script.start_message(self.enc))
        self.recorder.message_sent("start")

    def drop(self) -> None:
        """Simulate a network drop: the TCP connection ends without a close frame."""
        self.dropped = True
        if self.ws is not None:
            try:
                self.ws.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.ws.close_socket()

    def close(self) -> None:
        if self.ws is not None and not self.dropped:
            try:
                self.ws.close()
            except (OSError, WebSocketException, RuntimeError):
                pass
        self.record_close()

    def record_close(self, close: Close | None = None) -> Close | None:
        """Record how the stream ended, once (a stream the caller dropped has no code to judge)."""
        if self.recorded:
            return None
        self.recorded = True
        if self.dropped:
            return None
        if close is None:
            close = close_of(self.ws.protocol) if self.ws is not None else Close(None)
        self.recorder.stream_closed(close)
        return close


class _Feed:
    """The call's transcript WebSocket (opened before ``start`` so nothing is missed)."""

    def __init__(self, url: str, recorder: CallRecorder) -> None:
        self.recorder = recorder
        self.done = threading.Event()
        self.ws = connect(url, compression=None, proxy=None, open_timeout=OPEN_TIMEOUT_S,
                          ping_interval=None, close_timeout=2.0, legacy=True, max_size=1 << 20)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        message, now, recorder = self.recorder.feed_message, time.time, self.recorder
        try:
            for raw in self.ws:
                message(raw, now())
                if recorder.ended:
                    break
        except (ConnectionClosed, OSError, RuntimeError):
            pass
        finally:
            self.done.set()

    def close(self) -> None:
        try:
            self.ws.close()
        except (OSError, WebSocketException, RuntimeError):
            pass


def _open_feed(base: str, recorder: CallRecorder,
               headers: dict[str, str]) -> _Feed | SyncRedisFeed | SyncSseFeed | SyncWebhookFeed:
    call_sid, tap = recorder.result.call_sid, feed_tap(base)
    if tap == "webhook":
        return SyncWebhookFeed(base, call_sid, recorder.feed_message)
    if tap == "redis":
        return SyncRedisFeed(base, call_sid, recorder.feed_message, lambda: recorder.ended)
    if tap == "sse":
        return SyncSseFeed(base, call_sid, recorder.feed_message, lambda: recorder.ended, headers)
    assert recorder.feed_url is not None
    return _Feed(recorder.feed_url, recorder)


def run_call(spec: CallSpec) -> CallResult:
    """Play one call as described by ``spec``; never raises for target behaviour (it is recorded)."""
    script = spec.script()
    bad = isinstance(script, BadInputScript)
    recorder = CallRecorder(script, spec.url, None if bad else spec.transcripts_url, mapping=spec.feed_mapping,
                            keep_transcripts=False)
    recorder.started(time.time(), time.monotonic())
    feed: _Feed | SyncRedisFeed | SyncSseFeed | SyncWebhookFeed | None = None
    streams: list[Stream] = []
    pacer = Pacer(spec.speed)
    try:
        if spec.start_at is not None:
            delay = spec.start_at - time.time()
            if delay > 0:
                time.sleep(delay)
            recorder.started(time.time(), time.monotonic())
        if spec.transcripts_url and not bad:
            try:
                feed = _open_feed(spec.transcripts_url, recorder, spec.headers)
                recorder.feed_opened()
            except (OSError, WebSocketException, TimeoutError) as exc:
                recorder.error(f"transcript feed: {ws_error_reason(exc)}")
                feed = None
        stream = Stream(spec.url, spec.headers, script.encoder(), recorder)
        streams.append(stream)
        try:
            stream.open()
        except (OSError, WebSocketException, TimeoutError) as exc:
            recorder.fail(f"connect: {ws_error_reason(exc)}")
            return recorder.result
        if isinstance(script, BadInputScript):
            _play_bad(script, stream)
        else:
            _play(script, spec, streams, pacer, recorder)
            if feed is not None and recorder.result.failure is None:
                feed.done.wait(spec.wait_final_s)  # bounded wait for call_ended / final results
        return recorder.result
    except (OSError, WebSocketException, TimeoutError) as exc:
        recorder.fail(f"transport: {ws_error_reason(exc)}")
        return recorder.result
    finally:
        for s in streams:
            s.close()
        if feed is not None:
            feed.close()
            if getattr(feed, "error", None):
                recorder.error(f"transcript feed: {feed.error}")  # type: ignore[union-attr]
        recorder.finish(time.time(), time.monotonic(), pacer)


def _play(script: CallScript, spec: CallSpec, streams: list[Stream], pacer: Pacer, recorder: CallRecorder) -> None:
    frames, frame_s = script.frames, script.frame_s
    # the shared audio's base64 is encoded once per process; marked audio is per call, so per frame at send
    b64 = script.payloads(shared=True)
    stream = streams[0]
    stream.begin(script)
    pacer.start()
    gap = 0.0  # schedule shift from holds / reconnect pauses (the schedule keeps its origin)
    sched = scheduler()
    for seg in script.segments:
        k = seg.start
        if seg.kind == "hold":
            gap += seg.pause_s
            now = time.time()
            recorder.paused("hold", now, now + seg.pause_s / (pacer.speed or 1.0))
        elif seg.kind == "reconnect" or seg.kind == "second_stream":
            if seg.kind == "reconnect":
                stream.drop()
                gap += seg.pause_s
                now = time.time()
                recorder.paused("reconnect", now, now + seg.pause_s / (pacer.speed or 1.0))
                wait_sync(pacer, k * frame_s + gap)
            stream = Stream(spec.url, spec.headers, script.encoder(new_stream_sid()), recorder)
            streams.append(stream)
            stream.open()
            stream.begin(script)
            # A new stream starts streaming when its socket is open (as Exotel does): the handshake
            # time shifts the schedule instead of counting as generator lateness.
            if pacer.speed > 0 and pacer.t0 is not None:
                gap = max(gap, (pacer.clock() - pacer.t0) * pacer.speed - k * frame_s)
        elif seg.kind == "dtmf":
            wait_sync(pacer, k * frame_s + gap)
            stream.send(stream.enc.dtmf(seg.digit, script.options.dtmf_duration_ms))
            recorder.message_sent("dtmf")
        elif not _play_run(MediaRun(stream, pacer, recorder, frames, b64, k, seg.end, gap, frame_s), stream,
                           sched, spec, recorder):
            return
    try:
        stream.send(stream.enc.stop(script.options.stop_reason))
        recorder.message_sent("stop")
    except ConnectionClosed:
        close = stream.record_close()
        if not _hangup_ok(spec, close, recorder):
            recorder.fail(f"closed by server before stop: {_close_text(close)}")
        return
    if len(streams) > 1 and script.kind == "second_stream":
        old = streams[0]
        old.closed.wait(CLOSE_WAIT_S)
        if not old.closed.is_set():
            recorder.error("older stream was not closed by the server after the second stream started")


def _play_run(run: MediaRun, stream: Stream, sched: FrameScheduler, spec: CallSpec, recorder: CallRecorder) -> bool:
    """Send one run of frames through the scheduler; False when the server closed the stream meanwhile."""
    pacer, frame_s, end = run.pacer, run.frame_s, run.end
    while run.k < end:
        # bounded: the run's remaining schedule plus slack (a stuck scheduler fails the call loudly)
        sched.play(run, timeout=max(0.0, pacer.due(end * frame_s + run.gap) - pacer.clock()) + 60.0)
        if run.error is not None:
            raise run.error
        if run.pending is None:
            continue  # the run is complete (the loop condition says so)
        text, tail = run.pending
        run.pending = None
        try:  # the frame the scheduler could not write now: the blocking path, then resume
            if tail is None:
                pacer.sent(run.k * frame_s + run.gap)
                stream.send(text)
            else:
                stream.flush(tail)
        except ConnectionClosed:
            close = stream.record_close()
            if not _hangup_ok(spec, close, recorder):
                recorder.fail(f"closed by server mid-call: {_close_text(close)}")
            return False
        run.sent(len(run.frames[run.k]))
    return True


def _hangup_ok(spec: CallSpec, close: Close | None, recorder: CallRecorder) -> bool:
    """A 1000 close before ``stop`` (the bot hung up) is a completed call when the scenario says
    ``server_hangup = "ok"``; otherwise (the default) it fails the call."""
    if not spec.server_hangup_ok or close is None or close.code != 1000:
        return False
    recorder.server_hung_up()
    return True


def _close_text(close: Close | None) -> str:
    if close is None or close.code is None:
        return "no close frame"
    return f"{close.code} {close.reason}".strip()


def _play_bad(script: BadInputScript, stream: Stream) -> None:
    """Send one bad input, then wait (bounded) for the server's close; the close code is judged by
    the stats against the script's ``expected_closes``."""
    try:
        for text in script.messages(stream.enc):
            stream.send(text)
    except (ConnectionClosed, OSError):
        pass  # the server may close while we are still sending the bad bytes: judged by the close code
    stream.closed.wait(CLOSE_WAIT_S)
    if stream.closed.is_set():
        stream.record_close()
    else:  # the server kept the socket open: recorded as "no close" (None), judged by BAD_INPUTS
        stream.record_close(Close(None, f"server did not close within {CLOSE_WAIT_S:g} s"))


def new_call_sid(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:16]}"
