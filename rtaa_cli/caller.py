"""The virtual Exotel caller.

Sans-I/O parts, shared by every driver (this module's asyncio driver, and a gevent/Locust driver
with the sync websockets client):

* :class:`CallScript` -- *what to send when*: ``connected``, ``start``, media frames, DTMF at
  audio offsets, holds (gaps with no media), ``stop``, each as a :class:`Step` with its stream
  offset in seconds (audio position plus the holds before it). Lazy: a 60-minute call is encoded
  one frame at a time.
* :class:`CallRecorder` -- what happened: sends (with :class:`~rtaa_cli.latency.SendLog` for
  latency), the server's messages on the Exotel socket (media/mark/clear tolerated and recorded),
  and, through the shared :class:`~rtaa_cli.feeds.recorder.FeedRecorder` (the same one soak and
  smoke use), transcript-feed messages for this call (docs/transcript-feed.md), in a
  :class:`CallResult`.

Pacing is :class:`rtaa_cli.pacing.Pacer`. The asyncio driver :func:`run_call` reads both sockets
in their own tasks, so a slow or chatty server never delays the sender.
"""
from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import websockets
from websockets.asyncio.client import ClientConnection, connect

from rtaa_cli.audio import DEFAULT_FRAME_MS, frame_padding, frames
from rtaa_cli.protocols.closecodes import CLEAN_CLOSES
from rtaa_cli.protocols.exotel import DEFAULT_SAMPLE_RATE, ExotelProtocolError, Media, StreamEncoder, parse_event
from rtaa_cli.feeds.parse import FieldMapping
from rtaa_cli.feeds import redis_feed, sse_feed
from rtaa_cli.feeds.redis_feed import is_redis
from rtaa_cli.feeds.sse_feed import is_sse
from rtaa_cli.feeds import webhook
from rtaa_cli.feeds.recorder import FeedRecorder, Transcript
from rtaa_cli.feeds.url import feed_url_for, redact_url
from rtaa_cli.latency import LatencySamples, SendLog, latency_summary
from rtaa_cli.pacing import PacingStats, Pacer, wait_async
from rtaa_cli import robustmark
from rtaa_cli.watermark import Marker
from rtaa_cli.wserrors import ws_error_reason

# Bounds on what one call keeps (counts are always complete; beyond these, items are dropped).
MAX_SERVER_MESSAGES_KEPT = 1000
MAX_ERRORS_KEPT = 100
MAX_FEED_MESSAGE_BYTES = 1 << 20
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


# ---------------------------------------------------------------------------------- the script


@dataclass(frozen=True)
class CallOptions:
    call_sid: str
    stream_sid: str
    account_sid: str = ""
    from_: str = ""
    to: str = ""
    custom_parameters: dict[str, str] = field(default_factory=dict)
    sample_rate: int = DEFAULT_SAMPLE_RATE
    frame_ms: int = DEFAULT_FRAME_MS
    dtmf: Sequence[tuple[str, float]] = ()  # (digit, audio offset s)
    holds: Sequence[tuple[float, float]] = ()  # (duration s, audio offset s)
    dtmf_duration_ms: int = 250
    stop_reason: str = "stopped"
    watermark: bool = False  # mark the audio's LSBs with the call (rtaa_cli.watermark): emulator attribution
    robust_mark: bool = robustmark.DEFAULT_ON  # with watermark: also the robust mark (rtaa_cli.robustmark)


@dataclass(frozen=True, slots=True)
class Step:
    at_s: float  # stream offset: when it is due, relative to the first message
    kind: str  # connected | start | media | dtmf | hold | stop
    text: str | None  # the JSON frame; None for a hold marker (nothing to send)
    audio_end_ms: float = 0.0  # audio sent once this step is sent
    nbytes: int = 0  # PCM bytes in a media frame


class CallScript:
    """Every message of one call, in order, with its due offset.

    Placement: a DTMF or hold at audio offset ``s`` goes right before the first frame whose audio
    starts at or after ``s`` (holds before DTMF at the same offset); offsets past the audio go
    before ``stop``. A hold of ``d`` seconds delays every later step by ``d``. ``stop`` is due one
    frame after the last frame (when that frame's audio has played).
    """

    def __init__(self, frame_list: Sequence[bytes], options: CallOptions, padding_bytes: int = 0) -> None:
        if options.sample_rate * options.frame_ms % 1000:
            raise ValueError("frame_ms must hold whole samples")
        self.frames = frame_list
        self.options = options
        self.padding_bytes = padding_bytes
        self.frame_s = options.frame_ms / 1000.0
        self.audio_bytes = sum(len(f) for f in frame_list)
        self.audio_ms = self.audio_bytes * 1000.0 / (options.sample_rate * 2)
        self.hold_s = sum(d for d, _ in options.holds)
        self.duration_s = len(frame_list) * self.frame_s + self.hold_s  # when stop is due

    @classmethod
    def from_pcm(cls, pcm: bytes, options: CallOptions) -> CallScript:
        """Frame ``pcm`` (zero-padding the last frame, see :func:`rtaa_cli.audio.frames`)."""
        return cls(frames(pcm, options.sample_rate, options.frame_ms), options,
                   frame_padding(len(pcm), options.sample_rate, options.frame_ms))

    def _inserts(self) -> list[tuple[int, int, str, Any]]:
        """(frame index, order, kind, value) of holds and DTMF, sorted."""
        n = len(self.frames)
        items = []
        for duration, offset in self.options.holds:
            items.append((min(n, max(0, _ceil_div(offset, self.frame_s))), 0, "hold", duration))
        for digit, offset in self.options.dtmf:
            items.append((min(n, max(0, _ceil_div(offset, self.frame_s))), 1, "dtmf", digit))
        items.sort(key=lambda item: (item[0], item[1]))
        return items

    def __iter__(self) -> Iterator[Step]:
        o = self.options
        enc = StreamEncoder(o.stream_sid, o.call_sid, o.account_sid, o.sample_rate)
        yield Step(0.0, "connected", enc.connected())
        yield Step(0.0, "start", enc.start(o.from_, o.to, o.custom_parameters))
        inserts, j, shift = self._inserts(), 0, 0.0
        marker = Marker(o.call_sid, robust=o.robust_mark, sample_rate=o.sample_rate) if o.watermark else None
        sample = 0  # the frame's first sample in the call's audio (the watermark's position)
        frame_s = self.frame_s
        for k in range(len(self.frames) + 1):
            while j < len(inserts) and inserts[j][0] == k:
                _, _, kind, value = inserts[j]
                j += 1
                if kind == "hold":
                    yield Step(k * frame_s + shift, "hold", None, enc.audio_ms)
                    shift += value
                else:
                    yield Step(k * frame_s + shift, "dtmf", enc.dtmf(value, o.dtmf_duration_ms), enc.audio_ms)
            if k < len(self.frames):
                pcm = self.frames[k]
                if marker is not None:
                    pcm = marker.mark(pcm, sample)
                    sample += len(pcm) // 2
                text = enc.media(pcm)
                yield Step(k * frame_s + shift, "media", text, enc.audio_ms, len(pcm))
        yield Step(len(self.frames) * frame_s + shift, "stop", enc.stop(o.stop_reason), enc.audio_ms)


def _ceil_div(offset_s: float, frame_s: float) -> int:
    # Frame index whose start is at or after offset_s, tolerant of float noise (0.108/0.036).
    q = offset_s / frame_s
    r = round(q)
    return int(r) if abs(q - r) < 1e-9 else int(q) + (q > 0)


# ---------------------------------------------------------------------------------- the record


@dataclass
class CallResult:
    call_sid: str
    stream_sid: str
    url: str = ""
    connected: bool = False
    frames_total: int = 0
    audio_ms_total: float = 0.0
    frames_sent: int = 0
    audio_ms_sent: float = 0.0
    bytes_sent: int = 0
    padding_bytes: int = 0
    messages_sent: int = 0
    dtmf_sent: int = 0
    holds_done: int = 0
    stop_sent: bool = False
    duration_s: float = 0.0
    pacing: PacingStats | None = None
    close_code: int | None = None
    close_reason: str = ""
    closed_by: str | None = None  # "server" | "caller" | None (no close frame)
    server_message_counts: dict[str, int] = field(default_factory=dict)
    server_messages: list[dict[str, Any]] = field(default_factory=list)
    transcripts: list[Transcript] = field(default_factory=list)
    transcripts_dropped: int = 0
    feed_url: str | None = None
    feed_messages: int = 0  # messages that arrived on the call's transcript feed
    feed_unrecognised: int = 0  # of those, not understood
    marked_results: int = 0  # results whose text carried the emulator's text mark (rtaa_cli/textmark.py)
    repeated_finals: int = 0  # marked finals that arrived more than once
    gaps: int = 0  # `gap` messages: audio the pipeline says no final will cover (docs/transcript-feed.md)
    gap_ms: float = 0.0  # their total length
    latency: LatencySamples = field(default_factory=LatencySamples)  # rtaa_cli.latency rules
    call_ended: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Stop sent and the Exotel socket closed normally (1000/1001)."""
        return self.connected and self.stop_sent and self.close_code in CLEAN_CLOSES

    def finals(self) -> list[Transcript]:
        """Final results with text (the ones an agent would see)."""
        return [t for t in self.transcripts if t.is_final and t.text.strip()]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        pacing = self.pacing.as_dict() if self.pacing else None
        data["pacing"] = pacing
        data["close"] = {"code": self.close_code, "reason": self.close_reason, "by": self.closed_by}
        data["clean"] = self.clean
        data["latency"] = latency_summary(self.latency)
        data["finals"] = self.latency.finals
        for key in ("close_code", "close_reason", "closed_by"):
            del data[key]
        return data


class CallRecorder:
    """Sans-I/O bookkeeping of one call; drivers feed it sends and received frames."""

    def __init__(self, script: CallScript, url: str = "", feed_url: str | None = None,
                 on_transcript: Callable[[Transcript], None] | None = None, *,
                 mapping: FieldMapping | None = None) -> None:
        o = script.options
        self.send_log = SendLog()
        self.feed = FeedRecorder(o.call_sid, self.send_log, mapping=mapping,
                                 on_transcript=on_transcript)
        self.result = CallResult(call_sid=o.call_sid, stream_sid=o.stream_sid, url=redact_url(url),
                                 frames_total=len(script.frames), audio_ms_total=script.audio_ms,
                                 padding_bytes=script.padding_bytes, feed_url=feed_url and redact_url(feed_url),
                                 transcripts=self.feed.transcripts, latency=self.feed.samples)
        self._counts: Counter[str] = Counter()

    def error(self, message: str) -> None:
        errors = self.result.errors
        if len(errors) < MAX_ERRORS_KEPT:
            errors.append(message)

    def sent(self, step: Step, wall: float) -> None:
        r = self.result
        r.messages_sent += 1
        kind = step.kind
        if kind == "media":
            r.frames_sent += 1
            r.bytes_sent += step.nbytes
            r.audio_ms_sent = step.audio_end_ms
            self.send_log.record(step.audio_end_ms, wall)
        elif kind == "dtmf":
            r.dtmf_sent += 1
        elif kind == "stop":
            r.stop_sent = True

    def hold(self) -> None:
        self.result.holds_done += 1

    def server_message(self, data: str | bytes, wall: float) -> None:
        """A frame the server sent on the Exotel socket (media/mark/clear are normal)."""
        if isinstance(data, bytes):
            self._counts["binary"] += 1
            self.error(f"server sent a binary frame ({len(data)} bytes)")
            kept: dict[str, Any] = {"event": "binary", "bytes": len(data)}
        else:
            try:
                event = parse_event(data)
            except ExotelProtocolError as exc:
                self._counts["invalid"] += 1
                self.error(f"server sent an invalid message: {exc.reason}")
                kept = {"event": "invalid", "reason": exc.reason}
            else:
                name = type(event).__name__.lower()
                self._counts[name] += 1
                kept = {"event": name}
                if isinstance(event, Media):
                    kept.update(stream_sid=event.stream_sid, bytes=len(event.payload))
                else:
                    kept.update({k: v for k, v in asdict(event).items()})
        self.result.server_message_counts = dict(self._counts)
        if len(self.result.server_messages) < MAX_SERVER_MESSAGES_KEPT:
            kept["at"] = wall
            self.result.server_messages.append(kept)

    def feed_message(self, data: str | bytes, wall: float, call_id: str | None = None) -> Transcript | None:
        """A transcript-feed message (any tap); see :class:`~rtaa_cli.feeds.recorder.FeedRecorder`."""
        t = self.feed.message(data, wall, call_id)
        r, f = self.result, self.feed
        r.feed_messages, r.feed_unrecognised, r.transcripts_dropped = f.feed_messages, f.feed_unrecognised, f.transcripts_dropped
        r.marked_results, r.repeated_finals = f.marked_results, f.repeated_finals
        r.gaps, r.gap_ms = f.gaps, round(f.gap_ms, 1)
        r.call_ended = dict(f.call_ended) if f.call_ended is not None else None
        return t

    def finish(self) -> None:
        """Copy the feed's problems (errors, messages not understood) into the result."""
        for line in self.feed.problems():
            self.error(line)


# ------------------------------------------------------------------------------------- helpers


def _proxy_for(url: str) -> str | bool | None:
    # Never send loopback traffic through an HTTP(S)_PROXY from the environment.
    return None if urllib.parse.urlsplit(url).hostname in LOOPBACK_HOSTS else True


def describe_connect_error(url: str, exc: BaseException) -> str:
    """One readable line for a failed WebSocket handshake: the URL (credentials redacted) and the reason."""
    reason = ws_error_reason(exc)
    if isinstance(exc, websockets.InvalidStatus):
        reason = f"server rejected the WebSocket handshake with {reason}"
    elif isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        reason = "timed out opening the WebSocket"
    elif isinstance(exc, OSError) and not isinstance(exc, ConnectionRefusedError):
        reason = f"cannot connect ({reason})"
    elif not isinstance(exc, (websockets.InvalidURI, ConnectionRefusedError)):
        reason = f"cannot open the WebSocket ({type(exc).__name__}: {reason})"
    return f"{redact_url(url)}: {reason}"


# ------------------------------------------------------------------------------- asyncio driver


async def run_call(
    url: str,
    script: CallScript,
    *,
    speed: float = 1.0,
    headers: Sequence[tuple[str, str]] = (),
    transcripts_url: str | None = None,
    wait_final_s: float = 10.0,
    open_timeout_s: float = 10.0,
    on_progress: Callable[[CallResult, float], None] | None = None,
    on_transcript: Callable[[Transcript], None] | None = None,
    mapping: FieldMapping | None = None,
) -> CallResult:
    """Place one call: stream ``script`` to ``url`` paced at ``speed`` (0 = as fast as possible).

    Never raises for network trouble: a failed handshake, a server close mid-stream or a broken
    feed end up in the result (``connected``, ``close_code``, ``errors``). ``on_progress(result,
    lateness_s)`` is called after each media frame, ``on_transcript`` for each of this call's
    transcripts as it arrives.
    """
    feed = feed_url_for(transcripts_url, script.options.call_sid) if transcripts_url else None
    recorder = CallRecorder(script, url, feed, on_transcript, mapping=mapping)
    result = recorder.result
    started = time.monotonic()
    feed_ws: ClientConnection | None = None
    feed_task: asyncio.Task[None] | None = None
    feed_done = asyncio.Event()
    try:
        if feed is not None and is_redis(feed):  # subscribe before start: nothing of this call is missed
            try:
                state = await asyncio.wait_for(redis_feed.open_async(feed, script.options.call_sid), open_timeout_s)
            except (OSError, TimeoutError) as exc:
                recorder.error(f"transcript feed: {exc or 'timed out connecting to Redis'}")
                return result
            feed_task = asyncio.create_task(_read_redis_feed(state, recorder, feed_done))
        elif feed is not None and webhook.is_webhook(feed):  # rtaa listens, the target POSTs
            try:
                unsubscribe = webhook.subscribe_async(transcripts_url, script.options.call_sid, recorder.feed_message)
            except (OSError, ValueError) as exc:
                recorder.error(f"transcript feed: {exc}")
                return result
            feed_task = asyncio.create_task(_webhook_subscription(unsubscribe))
        elif feed is not None and is_sse(feed):
            try:
                sse = await asyncio.wait_for(sse_feed.open_async(transcripts_url, script.options.call_sid,
                                                                 dict(headers)), open_timeout_s)
            except (OSError, TimeoutError) as exc:
                recorder.error(f"transcript feed: {exc or 'timed out subscribing'}")
                return result
            feed_task = asyncio.create_task(_read_sse_feed(sse, recorder, feed_done))
        elif feed is not None:
            try:
                # The ingest's credentials: with auth on, `rtaa serve` lets the streamer read its own call.
                feed_ws = await connect(feed, additional_headers=list(headers), open_timeout=open_timeout_s,
                                        proxy=_proxy_for(feed), compression=None, max_size=MAX_FEED_MESSAGE_BYTES)
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                recorder.error(f"transcript feed {describe_connect_error(feed, exc)}")
                return result
            feed_task = asyncio.create_task(_read_feed(feed_ws, recorder, feed_done))
        try:
            ws = await connect(url, additional_headers=list(headers), open_timeout=open_timeout_s,
                               proxy=_proxy_for(url), compression=None)
        except Exception as exc:  # noqa: BLE001
            recorder.error(describe_connect_error(url, exc))
            return result
        result.connected = True
        reader = asyncio.create_task(_read_exotel(ws, recorder))
        try:
            pacer = Pacer(speed)
            await _send_script(ws, script, pacer, recorder, reader, on_progress)
            result.pacing = pacer.stats()
            if result.stop_sent and feed_task is not None:
                # rtaa's own feed ends each call with call_ended; a foreign one (Redis) may never say
                await _wait_for_end(recorder, feed_done, reader, wait_final_s, expect_end=feed_ws is not None)
            if not reader.done():
                await ws.close(1000, "stream stopped" if result.stop_sent else "caller gave up")
            await reader
        finally:
            reader.cancel()
            _note_close(ws, result)
    finally:
        if feed_ws is not None:
            await feed_ws.close()
        if feed_task is not None:
            feed_task.cancel()
            await asyncio.gather(feed_task, return_exceptions=True)
        recorder.finish()
        result.duration_s = round(time.monotonic() - started, 3)
    return result


async def _send_script(ws: ClientConnection, script: CallScript, pacer: Pacer, recorder: CallRecorder,
                       reader: asyncio.Task[None],
                       on_progress: Callable[[CallResult, float], None] | None) -> None:
    pacer.start()
    for step in script:
        if step.kind == "hold":
            recorder.hold()
            continue
        delay = pacer.delay(step.at_s)
        if delay > 0.25:  # long waits (holds): wake up at once if the server closes meanwhile
            await asyncio.wait((reader,), timeout=delay)
        await wait_async(pacer, step.at_s)
        if reader.done():  # the server closed (or the socket broke): nothing more to send
            return
        try:
            await ws.send(step.text)  # type: ignore[arg-type]
        except websockets.ConnectionClosed:
            return
        recorder.sent(step, time.time())
        if step.kind == "media":
            late = pacer.sent(step.at_s)
            if on_progress is not None:
                on_progress(recorder.result, late)


async def _read_exotel(ws: ClientConnection, recorder: CallRecorder) -> None:
    try:
        async for message in ws:
            recorder.server_message(message, time.time())
    except websockets.ConnectionClosed:
        pass


async def _read_feed(ws: ClientConnection, recorder: CallRecorder, done: asyncio.Event) -> None:
    try:
        async for message in ws:
            recorder.feed_message(message, time.time())
            if recorder.result.call_ended is not None:
                break
    except websockets.ConnectionClosed as exc:
        if exc.rcvd is not None and exc.rcvd.code not in CLEAN_CLOSES:
            recorder.error(f"transcript feed closed with {exc.rcvd.code} {exc.rcvd.reason!r}")
    finally:
        done.set()


async def _read_redis_feed(state: Any, recorder: CallRecorder, done: asyncio.Event) -> None:
    try:
        await redis_feed.read_async(state, recorder.feed_message, lambda: recorder.result.call_ended is not None)
    except (OSError, redis_feed.redis_errors()) as exc:
        recorder.error(f"transcript feed: redis: {type(exc).__name__}: {exc}")
    finally:
        done.set()


async def _webhook_subscription(unsubscribe: Callable[[], None]) -> None:
    """Holds the call's webhook subscription (messages arrive by themselves) until cancelled."""
    try:
        await asyncio.get_running_loop().create_future()
    finally:
        unsubscribe()


async def _read_sse_feed(state: Any, recorder: CallRecorder, done: asyncio.Event) -> None:
    try:
        await sse_feed.read_async(state, recorder.feed_message, lambda: recorder.result.call_ended is not None)
    except (OSError, *sse_feed.sse_errors()) as exc:
        recorder.error(f"transcript feed: sse: {type(exc).__name__}: {exc}")
    finally:
        done.set()


async def _wait_for_end(recorder: CallRecorder, feed_done: asyncio.Event, reader: asyncio.Task[None],
                        timeout_s: float, expect_end: bool = True) -> None:
    """After stop: until ``call_ended`` arrives or the feed closes, bounded by ``timeout_s``."""
    waiter = asyncio.create_task(feed_done.wait())
    try:
        await asyncio.wait((waiter,), timeout=timeout_s)
    finally:
        waiter.cancel()
    if expect_end and recorder.result.call_ended is None and not feed_done.is_set():
        recorder.error(f"no call_ended on the transcript feed within {timeout_s:g} s of stop")


def _note_close(ws: ClientConnection, result: CallResult) -> None:
    protocol = ws.protocol
    if protocol.close_rcvd is not None:
        result.close_code = protocol.close_rcvd.code
        result.close_reason = protocol.close_rcvd.reason
        result.closed_by = "server" if protocol.close_rcvd_then_sent else "caller"
    elif ws.close_code is not None:
        result.close_code = ws.close_code  # 1006: the TCP connection dropped without a close frame
        result.closed_by = None
