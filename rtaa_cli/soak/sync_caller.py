"""A blocking virtual Exotel caller for Locust (gevent) and smoke: plays one call and returns a
:class:`~rtaa_cli.soak.stats.CallRecord`.

Built from the shared pieces: :class:`rtaa_cli.protocols.exotel.StreamEncoder` (the one codec),
:class:`rtaa_cli.pacing.Pacer` + ``wait_sync`` (the one drift-free pacer; ``time.sleep`` is gevent's
once Locust patched it), :class:`rtaa_cli.latency.SendLog` (the one latency definition) and the
sans-I/O :class:`~rtaa_cli.feeds.recorder.FeedRecorder` (the feed bookkeeping replay uses too). websockets' *sync* client works under
gevent (its reader thread becomes a greenlet). Media frames are sent by the process's
:mod:`~rtaa_cli.soak.frame_scheduler` (one greenlet for every call); the call's greenlet waits for
each run of frames and does everything else. Every socket is closed in ``finally``.

Behaviours (``CallSpec.kind``): ``normal``; ``hold`` (no media for ``hold_s`` at ``hold_at_s``);
``disconnect`` (TCP drop mid-call without a close frame, then a new stream with the same call_sid
and a new stream_sid continues the audio); ``second_stream`` (a second stream for the call opens
while the first is still streaming and carries the rest of the audio; the first should be closed
by the server); ``bad:<what>`` (one bad input, see ``scenario.BAD_INPUTS``; the expected close codes
go into the record).
"""
from __future__ import annotations

import base64
import binascii
import functools
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Sequence

import orjson
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import ClientConnection, connect

from rtaa_cli.protocols.exotel import StreamEncoder, b64_payloads, build_media
from rtaa_cli.feeds.parse import FieldMapping
from rtaa_cli.feeds.recorder import FeedRecorder
from rtaa_cli.feeds.redis_feed import SyncRedisFeed, is_redis
from rtaa_cli.feeds.sse_feed import SyncSseFeed, is_sse
from rtaa_cli.feeds.webhook import SyncWebhookFeed, is_webhook
from rtaa_cli.feeds.url import feed_url_for
from rtaa_cli.internals import flush_tail, raw_socket
from rtaa_cli.latency import SendLog
from rtaa_cli.pacing import Pacer, wait_sync
from rtaa_cli.soak.frame_scheduler import MediaRun, scheduler
from rtaa_cli.soak.scenario import BAD_INPUTS
from rtaa_cli.soak.stats import CallRecord
from rtaa_cli import robustmark
from rtaa_cli.watermark import Marker
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


class _Stream:
    """One caller->server WebSocket of the call."""

    def __init__(self, spec: CallSpec, rec: CallRecord) -> None:
        self.spec = spec
        self.rec = rec
        self.stream_sid = "ST" + uuid.uuid4().hex[:24]
        self.enc = StreamEncoder(self.stream_sid, spec.call_sid, spec.account_sid, spec.sample_rate)
        self.ws: ClientConnection | None = None
        self.closed = threading.Event()
        self.dropped = False
        self.recorded = False
        self.fast = False  # the frame scheduler may write to the socket directly (see frame_scheduler)

    def open(self) -> None:
        self.ws = _open(self.spec.url, self.spec.headers)
        self.rec.streams += 1
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

    def begin(self, sample_rate: int | None = None) -> None:
        self.send(self.enc.connected())
        if sample_rate is not None and sample_rate != self.spec.sample_rate:
            self.enc.sample_rate = sample_rate
            self.send(self.enc.start(custom_parameters={"rtaa": "soak"}))
            self.enc.sample_rate = self.spec.sample_rate
        else:
            self.send(self.enc.start(custom_parameters={"rtaa": "soak"}))

    def drop(self) -> None:
        """Simulate a network drop: the TCP connection ends without a close frame."""
        self.dropped = True
        if self.ws is not None:
            try:
                self.ws.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.ws.close_socket()

    def wait_closed(self, timeout: float) -> None:
        self.closed.wait(timeout)

    def close(self) -> None:
        if self.ws is not None and not self.dropped:
            try:
                self.ws.close()
            except (OSError, WebSocketException, RuntimeError):
                pass
        self.record_close()

    def record_close(self) -> None:
        if self.recorded:
            return
        self.recorded = True
        if self.dropped:
            return  # we cut it: no code to judge
        code = self.ws.close_code if self.ws is not None else None
        self.rec.closes.append(code)
        self.rec.close_reasons.append((self.ws.close_reason or "") if self.ws is not None else "")


class _Feed:
    """The call's transcript subscription (opened before ``start`` so nothing is missed)."""

    def __init__(self, base: str, call_sid: str, recorder: FeedRecorder) -> None:
        self.url = feed_url_for(base, call_sid)
        self.recorder = recorder
        self.done = threading.Event()
        self.ws = connect(self.url, compression=None, proxy=None, open_timeout=OPEN_TIMEOUT_S,
                          ping_interval=None, close_timeout=2.0, legacy=True, max_size=1 << 20)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        message, now, recorder = self.recorder.message, time.time, self.recorder
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


def _open_feed(url: str, call_sid: str, recorder: FeedRecorder,
               headers: dict[str, str]) -> _Feed | SyncRedisFeed | SyncSseFeed | SyncWebhookFeed:
    if is_webhook(url):
        return SyncWebhookFeed(url, call_sid, recorder.message)
    if is_redis(url):
        return SyncRedisFeed(url, call_sid, recorder.message, lambda: recorder.ended)
    if is_sse(url):
        return SyncSseFeed(url, call_sid, recorder.message, lambda: recorder.ended, headers)
    return _Feed(url, call_sid, recorder)


def run_call(spec: CallSpec) -> CallRecord:
    """Play one call as described by ``spec``; never raises for target behaviour (it is recorded)."""
    rec = CallRecord(call_sid=spec.call_sid, kind=spec.kind, started_at=time.time())
    if spec.kind.startswith("bad:"):
        rec.expected_closes = list(BAD_INPUTS[spec.kind[4:]])
    send_log = SendLog()
    recorder = FeedRecorder(spec.call_sid, send_log, mapping=spec.feed_mapping, keep_transcripts=False)
    feed: _Feed | SyncRedisFeed | SyncSseFeed | SyncWebhookFeed | None = None
    streams: list[_Stream] = []
    pacer = Pacer(spec.speed)
    try:
        if spec.start_at is not None:
            delay = spec.start_at - time.time()
            if delay > 0:
                time.sleep(delay)
            rec.started_at = time.time()
        if spec.transcripts_url and not spec.kind.startswith("bad:"):
            try:
                feed = _open_feed(spec.transcripts_url, spec.call_sid, recorder, spec.headers)
            except (OSError, WebSocketException, TimeoutError) as exc:
                rec.errors.append(f"transcript feed: {ws_error_reason(exc)}")
                feed = None
        rec.transcripts_observed = feed is not None
        stream = _Stream(spec, rec)
        streams.append(stream)
        try:
            stream.open()
        except (OSError, WebSocketException, TimeoutError) as exc:
            rec.connected = False
            rec.failure = f"connect: {ws_error_reason(exc)}"
            return rec
        if spec.kind.startswith("bad:"):
            _play_bad(spec, stream, pacer, rec)
        else:
            _play(spec, streams, pacer, send_log, rec)
            if feed is not None and rec.failure is None:
                feed.done.wait(spec.wait_final_s)  # bounded wait for call_ended / final results
        return rec
    except (OSError, WebSocketException, TimeoutError) as exc:
        if rec.failure is None:
            rec.failure = f"transport: {ws_error_reason(exc)}"
        return rec
    finally:
        for s in streams:
            s.close()
        if feed is not None:
            feed.close()
            if getattr(feed, "error", None):
                rec.errors.append(f"transcript feed: {feed.error}")
        rec.ended_at = time.time()
        record_feed(rec, recorder)
        rec.lateness = pacer.lateness
        rec.drift_ms = pacer.drift_s * 1000.0


def record_feed(rec: CallRecord, recorder: FeedRecorder) -> None:
    """The call's feed bookkeeping into its soak record (samples by rtaa_cli.latency's rules)."""
    samples = recorder.samples
    rec.first_partial, rec.final = samples.first_partial, samples.final
    rec.final_audio_end_ms, rec.results, rec.finals = samples.final_audio_end_ms, samples.results, samples.finals
    rec.feed_messages, rec.feed_unrecognised = recorder.feed_messages, recorder.feed_unrecognised
    rec.marked_results, rec.repeated_finals = recorder.marked_results, recorder.repeated_finals
    rec.gaps, rec.gap_ms = recorder.gaps, round(recorder.gap_ms, 1)
    rec.mark_connections = {str(k): v for k, v in recorder.mark_connections.items()}
    rec.errors.extend(recorder.problems())


def _play(spec: CallSpec, streams: list[_Stream], pacer: Pacer, send_log: SendLog, rec: CallRecord) -> None:
    frame_s = spec.frame_ms / 1000.0
    frames = spec.frames
    # the shared audio's base64 is encoded once per process; marked audio is per call, so per frame at send
    b64 = MarkedB64(frames, spec.call_sid, spec.sample_rate, spec.robust_mark) if spec.watermark else _b64_payloads(tuple(frames))
    n = len(frames)
    hold_k = round(spec.hold_at_s / frame_s) if spec.kind == "hold" else n + 1
    switch_k = -1
    if spec.kind == "disconnect":
        switch_k = min(max(1, round(spec.disconnect_at_s / frame_s)), n - 1)
    elif spec.kind == "second_stream":
        switch_k = min(max(1, round(spec.second_stream_at_s / frame_s)), n - 1)
    stream = streams[0]
    stream.begin()
    pacer.start()
    gap = 0.0  # schedule shift from holds / reconnect pauses (the schedule keeps its origin)
    ms_per_byte = 1000.0 / (spec.sample_rate * 2)
    sched = scheduler()
    k = 0
    while k < n:
        if k == hold_k:
            gap += spec.hold_s
            now = time.time()
            rec.media_gaps.append((now, now + spec.hold_s / (pacer.speed or 1.0)))
        if k == switch_k:
            if spec.kind == "disconnect":
                stream.drop()
                gap += spec.reconnect_after_s
                now = time.time()
                rec.media_gaps.append((now, now + spec.reconnect_after_s / (pacer.speed or 1.0)))
                wait_sync(pacer, k * frame_s + gap)
            new = _Stream(spec, rec)
            streams.append(new)
            new.open()
            new.begin()
            stream = new
            # A new stream starts streaming when its socket is open (as Exotel does): the handshake
            # time shifts the schedule instead of counting as generator lateness.
            if pacer.speed > 0:
                gap = max(gap, (pacer.clock() - pacer.t0) * pacer.speed - k * frame_s)
        end = min(b for b in (hold_k, switch_k, n) if b > k)  # the run stops where the call changes
        run = MediaRun(stream, pacer, send_log, rec, frames, b64, k, end, gap, frame_s, ms_per_byte)
        while run.k < end:
            # bounded: the run's remaining schedule plus slack (a stuck scheduler fails the call loudly)
            sched.play(run, timeout=max(0.0, pacer.due(end * frame_s + gap) - pacer.clock()) + 60.0)
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
                stream.record_close()
                if not _hangup_ok(spec, stream, rec, ms_per_byte):
                    rec.failure = f"closed by server mid-call: {_close_text(stream)}"
                return
            run.sent(len(frames[run.k]))
        k = end
    rec.audio_ms_sent = rec.audio_bytes_sent * ms_per_byte
    try:
        stream.send(stream.enc.stop("callended"))
    except ConnectionClosed:
        stream.record_close()
        if not _hangup_ok(spec, stream, rec, ms_per_byte):
            rec.failure = f"closed by server before stop: {_close_text(stream)}"
        return
    if spec.kind == "second_stream" and len(streams) > 1:
        old = streams[0]
        old.wait_closed(CLOSE_WAIT_S)
        if not old.closed.is_set():
            rec.errors.append("older stream was not closed by the server after the second stream started")


class MarkedB64:
    """The base64 payloads of ``frames`` marked for one call, built when the scheduler asks for one
    (the frames are shared by every caller of the process; a marked copy per call would not be)."""

    __slots__ = ("frames", "marker", "samples")

    def __init__(self, frames: Sequence[bytes], call_sid: str, sample_rate: int = 8000,
                 robust: bool = robustmark.DEFAULT_ON) -> None:
        self.frames, self.marker = frames, Marker(call_sid, robust=robust, sample_rate=sample_rate)
        self.samples = len(frames[0]) // 2 if frames else 0  # every frame but the (padded) last has this size

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, k: int) -> str:
        return binascii.b2a_base64(self.marker.mark(self.frames[k], k * self.samples), newline=False).decode("ascii")


@functools.lru_cache(maxsize=16)
def _b64_payloads(frames: tuple[bytes, ...]) -> tuple[str, ...]:
    return b64_payloads(frames)


def _hangup_ok(spec: CallSpec, stream: _Stream, rec: CallRecord, ms_per_byte: float) -> bool:
    """A 1000 close before ``stop`` (the bot hung up) is a completed call when the scenario says
    ``server_hangup = "ok"``; otherwise (the default) it fails the call."""
    if not spec.server_hangup_ok or stream.ws is None or stream.ws.close_code != 1000:
        return False
    rec.server_hangup = True
    rec.audio_ms_sent = rec.audio_bytes_sent * ms_per_byte
    return True


def _close_text(stream: _Stream) -> str:
    ws = stream.ws
    if ws is None or ws.close_code is None:
        return "no close frame"
    return f"{ws.close_code} {ws.close_reason or ''}".strip()


def _play_bad(spec: CallSpec, stream: _Stream, pacer: Pacer, rec: CallRecord) -> None:
    """Send one bad input, then wait (bounded) for the server's close; the close code is judged by
    the stats against ``BAD_INPUTS``."""
    what = spec.kind[4:]
    enc = stream.enc
    frames = spec.frames
    good = [frames[i % len(frames)] for i in range(5)]
    try:
        if what == "media_before_start":
            stream.send(enc.connected())
            stream.send(enc.media(good[0]))
        elif what == "wrong_sample_rate":
            stream.begin(sample_rate=11025)  # not an Exotel rate
            stream.send(enc.media(good[0]))
        else:
            stream.begin()
            for pcm in good:
                stream.send(enc.media(pcm))
            if what == "malformed_json":
                stream.send('{"event": "media", "stream_sid": ')
            elif what == "bad_base64":
                msg = orjson.loads(build_media(enc.stream_sid, enc.sequence_number + 1, enc.chunk + 1, 0, good[0]))
                msg["media"]["payload"] = "!!not*base64!!"
                stream.send(orjson.dumps(msg).decode())
            elif what == "oversize":
                payload = base64.b64encode(os.urandom(spec.oversize_bytes * 3 // 4)).decode()
                msg = orjson.loads(build_media(enc.stream_sid, enc.sequence_number + 1, enc.chunk + 1, 0, b""))
                msg["media"]["payload"] = payload
                stream.send(orjson.dumps(msg).decode())
            elif what == "frames_after_stop":
                stream.send(enc.stop("stopped"))
                for pcm in good[:3]:
                    stream.send(enc.media(pcm))
            else:
                raise ValueError(f"unknown bad input {what!r}")
    except (ConnectionClosed, OSError):
        pass  # the server may close while we are still sending the bad bytes: judged by the close code
    stream.wait_closed(CLOSE_WAIT_S)
    if stream.closed.is_set():
        stream.record_close()
    else:  # the server kept the socket open: recorded as "no close" (None), judged by BAD_INPUTS
        stream.recorded = True
        rec.closes.append(None)
        rec.close_reasons.append(f"server did not close within {CLOSE_WAIT_S:g} s")


def new_call_sid(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:16]}"
