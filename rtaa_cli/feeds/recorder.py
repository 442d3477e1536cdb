"""Sans-I/O bookkeeping of one call's transcript feed, shared by replay's asyncio caller and the
gevent caller of soak and smoke: messages in (with the wall time they arrived), counts, kept
transcripts and latency samples (:mod:`rtaa_cli.latency`) out.

A tap (WebSocket, SSE, Redis, webhook) calls :meth:`FeedRecorder.message` for every message that
arrived on the call's feed; it may pass the call id it knows from where the message came from (a
Redis stream per call) for schemas that do not name the call.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from rtaa_cli import textmark
from rtaa_cli.feeds.parse import FeedError, FieldMapping, parse_message
from rtaa_cli.latency import LatencySamples, SendLog
from rtaa_cli.protocols.feed import FeedEvent, Kind

MAX_TRANSCRIPTS_KEPT = 20_000
MAX_ERRORS_KEPT = 20


@dataclass
class Transcript:
    seq: int | None
    is_final: bool
    speech_final: bool
    from_finalize: bool
    text: str
    audio_start_ms: float | None
    audio_end_ms: float | None
    received_at: float  # caller's wall clock
    latency_ms: float | None  # rtaa_cli.latency definition
    provider_connection: int | None = None


class FeedRecorder:
    """One call's feed: counts every message, keeps this call's transcripts, samples latency."""

    def __init__(self, call_id: str, send_log: SendLog, *, mapping: FieldMapping | None = None,
                 keep_transcripts: bool = True, on_transcript: Callable[[Transcript], None] | None = None) -> None:
        self.call_id = call_id
        self.send_log = send_log
        self.mapping = mapping
        self.keep_transcripts = keep_transcripts
        self.on_transcript = on_transcript
        self.samples = LatencySamples()
        self.transcripts: list[Transcript] = []
        self.transcripts_dropped = 0
        self.feed_messages = 0  # every message that arrived on this call's feed
        self.feed_unrecognised = 0  # of those, not understood (FeedError)
        self.unrecognised_reasons: Counter[str] = Counter()
        self.other_calls = 0  # understood, but another call's (a firehose or a misrouted message)
        self.call_started = False
        self.gaps = 0  # `gap` messages: audio the pipeline says no final will cover (docs/transcript-feed.md)
        self.gap_ms = 0.0  # their total length
        self.call_ended: Mapping[str, Any] | None = None
        self.errors: list[str] = []
        # the emulator's text watermark (rtaa_cli/textmark.py) in this call's results
        self.marked_results = 0  # results whose text carried a mark
        self.marked_finals: set[tuple[int, int]] = set()  # (connection, audio end) of marked finals seen
        self.repeated_finals = 0  # a marked final that arrived again (published more than once)
        self.mark_connections: Counter[int] = Counter()  # emulator connection -> marked results from it

    @property
    def ended(self) -> bool:
        return self.call_ended is not None

    def error(self, text: str) -> None:
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(text)

    def message(self, raw: str | bytes | Mapping[str, Any], wall: float, call_id: str | None = None) -> Transcript | None:
        """One message as it arrived; ``call_id``: the call the tap knows it belongs to, if any."""
        self.feed_messages += 1
        try:
            event = parse_message(raw, self.mapping)
        except FeedError as exc:
            self.feed_unrecognised += 1
            if len(self.unrecognised_reasons) < 10 or exc.reason in self.unrecognised_reasons:
                self.unrecognised_reasons[exc.reason] += 1  # bounded: a few distinct reasons
            return None
        return self.event(event, wall, call_id)

    def event(self, event: FeedEvent, wall: float, call_id: str | None = None) -> Transcript | None:
        """One normalised event (taps that parse themselves call this directly)."""
        owner = event.call_id if event.call_id is not None else call_id
        if owner is not None and owner != self.call_id:
            self.other_calls += 1
            return None
        if event.kind == Kind.CALL_STARTED:
            self.call_started = True
            return None
        if event.kind == Kind.CALL_ENDED:
            self.call_ended = event.raw or {"type": Kind.CALL_ENDED}
            return None
        if event.kind == Kind.GAP:
            self.gaps += 1
            lost = event.raw.get("lost_ms") if event.raw is not None else None
            if type(lost) not in (int, float) and event.audio_start_ms is not None and event.audio_end_ms is not None:
                lost = event.audio_end_ms - event.audio_start_ms
            self.gap_ms += float(lost) if type(lost) in (int, float) and lost > 0 else 0.0
            return None
        if event.kind != Kind.TRANSCRIPT:
            return None
        start, end = event.audio_start_ms, event.audio_end_ms
        marks = textmark.decode(event.text) if event.text else []
        if marks:
            self._count_marks(marks)
            if end is None:  # a feed without offsets: the mark says where the result ends
                end = float(max(m.audio_end_ms for m in marks))
        latency = None if end is None else self.send_log.latency_ms(end, wall)
        if end is not None and latency is None and event.text.strip():
            self.error(f"result covers audio not sent yet (audio_end_ms={end:g})")
        self.samples.add(event.is_final, event.text, end, latency, wall)
        t = Transcript(event.seq, event.is_final, event.speech_final, event.from_finalize, event.text,
                       start, end, wall, latency, event.provider_connection)
        if self.keep_transcripts:
            if len(self.transcripts) < MAX_TRANSCRIPTS_KEPT:
                self.transcripts.append(t)
            else:
                self.transcripts_dropped += 1
        if self.on_transcript is not None:
            self.on_transcript(t)
        return t

    def _count_marks(self, marks: list[textmark.Mark]) -> None:
        self.marked_results += 1
        for m in marks:
            self.mark_connections[m.connection] += 1
            if m.is_final:
                key = (m.connection, m.audio_end_ms)
                if key in self.marked_finals:
                    self.repeated_finals += 1
                else:
                    self.marked_finals.add(key)

    def problems(self) -> list[str]:
        """Lines for the report: messages that arrived but did not count, and why."""
        out = list(self.errors)
        if self.feed_unrecognised:
            reason, n = self.unrecognised_reasons.most_common(1)[0]
            head = (f"{self.feed_messages} messages arrived, none understood"
                    if self.feed_unrecognised == self.feed_messages else
                    f"{self.feed_unrecognised} of {self.feed_messages} messages not understood")
            out.append(f"transcript feed: {head} ({n}x: {reason})")
        if self.samples.unmeasured:
            out.append(f"transcript feed: latency not measured for {self.samples.unmeasured} results "
                       "(no audio offsets in the feed and no text mark: give --feed-map audio_end_ms=PATH)")
        return out
