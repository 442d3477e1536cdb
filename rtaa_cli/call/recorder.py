"""What happened on one virtual call: sans-I/O, the same for every driver.

A driver tells the :class:`CallRecorder` what it saw -- streams opened and how each closed, media
frames and other messages sent (with the wall time), holds and reconnect pauses, the server's
messages on the Exotel socket, the transcript feed's messages (through
:class:`~rtaa_cli.feeds.recorder.FeedRecorder`, the one feed bookkeeping), errors and the call's
failure -- and reads one :class:`CallResult`. Latency is :mod:`rtaa_cli.latency`'s one definition
(the :class:`~rtaa_cli.latency.SendLog` is fed here, per media frame); the feed URL is
:func:`rtaa_cli.feeds.url.feed_url_for`'s one rule. ``rtaa replay`` reports the result as JSON
(:meth:`CallResult.to_dict`); the soak turns it into its record (``CallRecord.from_result``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Protocol, Sequence

from rtaa_cli.feeds.parse import FieldMapping
from rtaa_cli.feeds.recorder import FeedRecorder, Transcript
from rtaa_cli.feeds.redis_feed import is_redis
from rtaa_cli.feeds.sse_feed import is_sse
from rtaa_cli.feeds.url import feed_url_for, redact_url
from rtaa_cli.feeds.webhook import is_webhook
from rtaa_cli.latency import LatencySamples, SendLog, latency_summary
from rtaa_cli.pacing import PacingStats, Pacer
from rtaa_cli.protocols.closecodes import CLEAN_CLOSES
from rtaa_cli.protocols.exotel import ExotelProtocolError, Media, parse_event

# Bounds on what one call keeps (counts are always complete; beyond these, items are dropped).
MAX_SERVER_MESSAGES_KEPT = 1000
MAX_ERRORS_KEPT = 100

FeedTap = Literal["redis", "webhook", "sse", "ws"]
ClosedBy = Literal["server", "caller"]


class _CloseFrame(Protocol):
    code: int
    reason: str


class ProtocolState(Protocol):
    """What :func:`close_of` reads of a websockets connection's sans-I/O ``protocol``."""

    @property
    def close_rcvd(self) -> _CloseFrame | None: ...
    @property
    def close_rcvd_then_sent(self) -> bool | None: ...
    @property
    def close_code(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Close:
    """How one stream ended."""

    code: int | None  # None: not closed (a bad input the server left open)
    reason: str = ""
    by: ClosedBy | None = None  # who started the closing handshake; None: no close frame


def close_of(protocol: ProtocolState) -> Close:
    """The close of a websockets connection (asyncio or sync: both have the sans-I/O ``protocol``)."""
    rcvd = protocol.close_rcvd
    if rcvd is not None:
        return Close(rcvd.code, rcvd.reason, "server" if protocol.close_rcvd_then_sent else "caller")
    return Close(protocol.close_code)  # 1006: the TCP connection dropped without a close frame


def feed_tap(url: str) -> FeedTap:
    """Which tap reads a ``--transcripts`` URL (docs/transcript-feed.md)."""
    if is_redis(url):
        return "redis"
    if is_webhook(url):
        return "webhook"
    if is_sse(url):
        return "sse"
    return "ws"


class Script(Protocol):
    """What the recorder reads of a :class:`~rtaa_cli.call.script.CallScript` or ``BadInputScript``."""

    @property
    def options(self) -> Any: ...
    @property
    def frames(self) -> Sequence[bytes]: ...
    @property
    def kind(self) -> str: ...
    @property
    def audio_ms(self) -> float: ...
    @property
    def padding_bytes(self) -> int: ...
    @property
    def expected_closes(self) -> tuple[int | None, ...]: ...


@dataclass
class CallResult:
    call_sid: str
    stream_sid: str
    url: str = ""
    kind: str = "normal"  # the script's behaviour (soak: normal, hold, disconnect, second_stream, bad:<what>)
    connected: bool = False  # a stream was opened
    streams: int = 0  # streams opened
    frames_total: int = 0
    audio_ms_total: float = 0.0
    frames_sent: int = 0
    audio_ms_sent: float = 0.0
    bytes_sent: int = 0  # PCM bytes of the media frames sent, over every stream
    padding_bytes: int = 0
    messages_sent: int = 0
    dtmf_sent: int = 0
    holds_done: int = 0
    stop_sent: bool = False
    started_at: float = 0.0  # wall clock
    ended_at: float = 0.0
    duration_s: float = 0.0
    pacer: Pacer | None = None  # the send schedule's lateness (pacing)
    closes: list[Close] = field(default_factory=list)  # one per stream, except those the caller dropped
    expected_closes: tuple[int | None, ...] = ()  # a bad input's acceptable closes (None: left open)
    failure: str | None = None  # why the call failed, when the driver judges it (soak)
    server_hangup: bool = False  # the server closed 1000 before stop and the driver was told that is fine
    # wall-time spans in which the caller sent no media on purpose (holds, reconnect pauses)
    media_gaps: list[tuple[float, float]] = field(default_factory=list)
    server_message_counts: dict[str, int] = field(default_factory=dict)
    server_messages: list[dict[str, Any]] = field(default_factory=list)
    transcripts: list[Transcript] = field(default_factory=list)
    transcripts_dropped: int = 0
    feed_url: str | None = None
    transcripts_observed: bool = False  # the call's feed was opened (delivery can be judged)
    feed_messages: int = 0  # messages that arrived on the call's transcript feed
    feed_unrecognised: int = 0  # of those, not understood
    marked_results: int = 0  # results whose text carried the emulator's text mark (rtaa_cli/textmark.py)
    repeated_finals: int = 0  # marked finals that arrived more than once
    mark_connections: dict[str, int] = field(default_factory=dict)  # emulator connection -> marked results
    gaps: int = 0  # `gap` messages: audio the pipeline says no final will cover (docs/transcript-feed.md)
    gap_ms: float = 0.0  # their total length
    latency: LatencySamples = field(default_factory=LatencySamples)  # rtaa_cli.latency rules
    call_ended: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def close(self) -> Close:
        """The last stream's close (the only one for replay and smoke)."""
        return self.closes[-1] if self.closes else Close(None)

    @property
    def close_code(self) -> int | None:
        return self.close.code

    @property
    def close_reason(self) -> str:
        return self.close.reason

    @property
    def closed_by(self) -> ClosedBy | None:
        return self.close.by

    @property
    def pacing(self) -> PacingStats | None:
        return None if self.pacer is None else self.pacer.stats()

    @property
    def clean(self) -> bool:
        """Stop sent and the Exotel socket closed normally (1000/1001)."""
        return self.connected and self.stop_sent and self.close_code in CLEAN_CLOSES

    def finals(self) -> list[Transcript]:
        """Final results with text (the ones an agent would see)."""
        return [t for t in self.transcripts if t.is_final and t.text.strip()]

    def to_dict(self) -> dict[str, Any]:
        """``rtaa replay --json``'s document (docs/replay.md): one stream's fields."""
        data = {k: v for k, v in asdict(self).items() if k in _REPLAY_FIELDS}
        pacing = self.pacing
        data["pacing"] = pacing.as_dict() if pacing else None
        c = self.close
        data["close"] = {"code": c.code, "reason": c.reason, "by": c.by}
        data["clean"] = self.clean
        data["latency"] = latency_summary(self.latency)
        data["finals"] = self.latency.finals
        return dict(sorted(data.items(), key=lambda kv: _REPLAY_ORDER.get(kv[0], len(_REPLAY_ORDER))))


# replay's JSON keys, in its order (docs/replay.md); the soak's fields go into its own record
_REPLAY_ORDER = {k: i for i, k in enumerate((
    "call_sid", "stream_sid", "url", "connected", "frames_total", "audio_ms_total", "frames_sent", "audio_ms_sent",
    "bytes_sent", "padding_bytes", "messages_sent", "dtmf_sent", "holds_done", "stop_sent", "duration_s", "pacing",
    "server_message_counts", "server_messages", "transcripts", "transcripts_dropped", "feed_url", "feed_messages",
    "feed_unrecognised", "marked_results", "repeated_finals", "gaps", "gap_ms", "latency", "call_ended", "errors",
    "close", "clean", "finals"))}
_REPLAY_FIELDS = frozenset(_REPLAY_ORDER) - {"pacing", "close", "clean", "latency", "finals"}


class CallRecorder:
    """Sans-I/O bookkeeping of one call; drivers feed it what they sent and saw, with wall times."""

    def __init__(self, script: Script, url: str = "", transcripts_url: str | None = None,
                 on_transcript: Callable[[Transcript], None] | None = None, *,
                 mapping: FieldMapping | None = None, keep_transcripts: bool = True) -> None:
        o = script.options
        self.send_log = SendLog()
        self.feed = FeedRecorder(o.call_sid, self.send_log, mapping=mapping, keep_transcripts=keep_transcripts,
                                 on_transcript=on_transcript)
        # the one feed URL rule: the call's own feed for this call_sid
        self.feed_url = feed_url_for(transcripts_url, o.call_sid) if transcripts_url else None
        self.ms_per_byte = 1000.0 / (o.sample_rate * 2)
        self.result = CallResult(call_sid=o.call_sid, stream_sid=o.stream_sid, url=redact_url(url), kind=script.kind,
                                 frames_total=len(script.frames), audio_ms_total=script.audio_ms,
                                 padding_bytes=script.padding_bytes, expected_closes=script.expected_closes,
                                 feed_url=self.feed_url and redact_url(self.feed_url),
                                 transcripts=self.feed.transcripts, latency=self.feed.samples)
        self._counts: Counter[str] = Counter()
        self._t0 = 0.0

    # -- the call's life ----------------------------------------------------------------------------

    def started(self, wall: float, mono: float) -> None:
        """The call starts now (after any wait for its start time)."""
        self.result.started_at, self._t0 = wall, mono

    def feed_opened(self) -> None:
        self.result.transcripts_observed = True

    def stream_opened(self) -> None:
        self.result.connected = True
        self.result.streams += 1

    def stream_closed(self, close: Close) -> None:
        self.result.closes.append(close)

    def error(self, message: str) -> None:
        errors = self.result.errors
        if len(errors) < MAX_ERRORS_KEPT:
            errors.append(message)

    def fail(self, reason: str) -> None:
        """The call failed (the first reason stands)."""
        if self.result.failure is None:
            self.result.failure = reason

    def finish(self, wall: float | None = None, mono: float | None = None, pacer: Pacer | None = None) -> None:
        """The call is over (at ``wall``/``mono``, when the driver has clocks): its pacing, its end time and
        the feed's problems (errors, messages not understood)."""
        r = self.result
        r.pacer = pacer
        if wall is not None:
            r.ended_at = wall
        if mono is not None:
            r.duration_s = round(mono - self._t0, 3)
        for line in self.feed.problems():
            self.error(line)

    # -- what the caller sent -----------------------------------------------------------------------

    def media_sent(self, nbytes: int, wall: float) -> None:
        """One media frame of ``nbytes`` PCM bytes left at ``wall``: the send log of the latency definition."""
        r = self.result
        r.messages_sent += 1
        r.frames_sent += 1
        r.bytes_sent += nbytes
        r.audio_ms_sent = ms = r.bytes_sent * self.ms_per_byte
        self.send_log.record(ms, wall)

    def message_sent(self, kind: str) -> None:
        """Any other message (connected, start, dtmf, stop)."""
        r = self.result
        r.messages_sent += 1
        if kind == "dtmf":
            r.dtmf_sent += 1
        elif kind == "stop":
            r.stop_sent = True

    def sent(self, step: Any, wall: float) -> None:
        """A :class:`~rtaa_cli.call.script.Step` was sent at ``wall``."""
        if step.kind == "media":
            self.media_sent(step.nbytes, wall)
        else:
            self.message_sent(step.kind)

    def paused(self, kind: Literal["hold", "reconnect"], wall_from: float, wall_to: float) -> None:
        """No media from ``wall_from`` to ``wall_to`` on purpose."""
        if kind == "hold":
            self.result.holds_done += 1
        self.result.media_gaps.append((wall_from, wall_to))

    def server_hung_up(self) -> None:
        self.result.server_hangup = True

    # -- what arrived ------------------------------------------------------------------------------

    def server_message(self, data: str | bytes, wall: float) -> None:
        """A frame the server sent on the Exotel socket (media/mark/clear are normal)."""
        kept: dict[str, Any]
        if isinstance(data, bytes):
            self._counts["binary"] += 1
            self.error(f"server sent a binary frame ({len(data)} bytes)")
            kept = {"event": "binary", "bytes": len(data)}
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
                    kept.update(asdict(event))
        self.result.server_message_counts = dict(self._counts)
        if len(self.result.server_messages) < MAX_SERVER_MESSAGES_KEPT:
            kept["at"] = wall
            self.result.server_messages.append(kept)

    def feed_message(self, data: str | bytes | dict[str, Any], wall: float, call_id: str | None = None) -> Transcript | None:
        """A transcript-feed message (any tap); see :class:`~rtaa_cli.feeds.recorder.FeedRecorder`."""
        t = self.feed.message(data, wall, call_id)
        r, f = self.result, self.feed
        r.feed_messages, r.feed_unrecognised, r.transcripts_dropped = f.feed_messages, f.feed_unrecognised, f.transcripts_dropped
        r.marked_results, r.repeated_finals = f.marked_results, f.repeated_finals
        r.gaps, r.gap_ms = f.gaps, round(f.gap_ms, 1)
        if f.mark_connections:
            r.mark_connections = {str(k): v for k, v in f.mark_connections.items()}
        r.call_ended = dict(f.call_ended) if f.call_ended is not None else None
        return t

    @property
    def ended(self) -> bool:
        """The feed said ``call_ended`` for this call."""
        return self.feed.call_ended is not None
