"""What a virtual call sends and when: sans-I/O, the same for every driver.

* :class:`CallOptions` -- the call's identity (call/stream/account SIDs, ``start``'s fields) and its
  events at audio offsets: DTMF, holds (no media for a while), reconnects (the TCP connection drops
  without a close frame and a new stream of the same call carries on) and second streams (a second
  stream opens while the first still streams and carries the rest of the audio).
* :class:`CallScript` -- the plan over the call's PCM frames: :attr:`CallScript.segments` (runs of
  media frames between the events, in order; what a driver that opens streams walks) and, for one
  stream, every message with its due offset (iterating the script yields :class:`Step`\\ s, built by
  the Exotel codec :class:`~rtaa_cli.protocols.exotel.StreamEncoder`). Lazy: a 60-minute call is
  encoded one frame at a time.
* :class:`BadInputScript` -- one stream that sends one bad input, unpaced (the soak's bad-input
  calls; the close each deserves is ``rtaa_cli.soak.scenario.BAD_INPUTS``).

Placement: an event at audio offset ``s`` goes right before the first frame whose audio starts at or
after ``s`` (holds first, then stream switches, then DTMF at the same offset); offsets past the audio
go before ``stop``. A hold (or a reconnect's pause) of ``d`` seconds delays every later step by
``d``. ``stop`` is due one frame after the last frame (when that frame's audio has played).
"""
from __future__ import annotations

import base64
import binascii
import functools
import os
import uuid
from dataclasses import dataclass, field
from typing import Iterator, Literal, Protocol, Sequence

import orjson

from rtaa_cli import robustmark
from rtaa_cli.audio import DEFAULT_FRAME_MS, frame_padding, frames
from rtaa_cli.protocols.exotel import DEFAULT_SAMPLE_RATE, StreamEncoder, b64_payloads, build_media
from rtaa_cli.watermark import Marker

SegmentKind = Literal["media", "hold", "dtmf", "reconnect", "second_stream"]
StepKind = Literal["connected", "start", "media", "dtmf", "hold", "stop"]
_ORDER = {"hold": 0, "reconnect": 1, "second_stream": 1, "dtmf": 2}  # events at the same frame


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
    reconnects: Sequence[tuple[float, float]] = ()  # (pause s, audio offset s): drop, then a new stream
    second_streams: Sequence[float] = ()  # audio offsets: a new stream opens and carries the rest
    dtmf_duration_ms: int = 250
    stop_reason: str = "stopped"
    watermark: bool = False  # mark the audio's LSBs with the call (rtaa_cli.watermark): emulator attribution
    robust_mark: bool = robustmark.DEFAULT_ON  # with watermark: also the robust mark (rtaa_cli.robustmark)


@dataclass(frozen=True, slots=True)
class Step:
    at_s: float  # stream offset: when it is due, relative to the first message
    kind: StepKind
    text: str | None  # the JSON frame; None for a hold marker (nothing to send)
    audio_end_ms: float = 0.0  # audio sent once this step is sent
    nbytes: int = 0  # PCM bytes in a media frame


@dataclass(frozen=True, slots=True)
class Segment:
    """One part of the plan: a run of media frames, or an event before frame ``start``."""

    kind: SegmentKind
    start: int  # media: its first frame; an event: the frame it precedes (len(frames): before stop)
    end: int = 0  # media: one past its last frame
    pause_s: float = 0.0  # hold / reconnect: seconds without media (every later step moves by it)
    digit: str = ""  # dtmf


def new_stream_sid() -> str:
    return "ST" + uuid.uuid4().hex[:24]


class Payloads(Protocol):
    """Base64 payloads by frame index (a tuple, or :class:`FramePayloads` built when asked)."""

    def __len__(self) -> int: ...
    def __getitem__(self, k: int, /) -> str: ...


class FramePayloads:
    """The base64 payload of each frame, (watermarked with the call and) encoded when asked for: the
    frames may be shared by every call of a process, a marked copy per call would not be."""

    __slots__ = ("frames", "marker", "samples")

    def __init__(self, frame_list: Sequence[bytes], marker: Marker | None) -> None:
        self.frames, self.marker = frame_list, marker
        # every frame but the (padded) last has this size, so frame k starts at sample k * samples
        self.samples = len(frame_list[0]) // 2 if frame_list else 0

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, k: int) -> str:
        pcm = self.frames[k]
        if self.marker is not None:
            pcm = self.marker.mark(pcm, k * self.samples)
        return binascii.b2a_base64(pcm, newline=False).decode("ascii")


@functools.lru_cache(maxsize=16)
def _shared_payloads(frame_tuple: tuple[bytes, ...]) -> tuple[str, ...]:
    return b64_payloads(frame_tuple)


class CallScript:
    """Every message of one call, in order, with its due offset (placement: the module docstring)."""

    def __init__(self, frame_list: Sequence[bytes], options: CallOptions, padding_bytes: int = 0,
                 kind: str = "normal") -> None:
        if options.sample_rate * options.frame_ms % 1000:
            raise ValueError("frame_ms must hold whole samples")
        self.frames = frame_list
        self.options = options
        self.kind = kind  # the soak's behaviour name (normal, hold, disconnect, second_stream)
        self.padding_bytes = padding_bytes
        self.frame_s = options.frame_ms / 1000.0
        self.audio_bytes = sum(len(f) for f in frame_list)
        self.audio_ms = self.audio_bytes * 1000.0 / (options.sample_rate * 2)
        self.hold_s = sum(d for d, _ in options.holds)
        self.duration_s = len(frame_list) * self.frame_s + self.hold_s  # when stop is due
        self.segments = self._plan()
        self.streams = 1 + sum(s.kind in ("reconnect", "second_stream") for s in self.segments)
        self.expected_closes: tuple[int | None, ...] = ()  # a bad input's acceptable closes; none here

    @classmethod
    def from_pcm(cls, pcm: bytes, options: CallOptions) -> CallScript:
        """Frame ``pcm`` (zero-padding the last frame, see :func:`rtaa_cli.audio.frames`)."""
        return cls(frames(pcm, options.sample_rate, options.frame_ms), options,
                   frame_padding(len(pcm), options.sample_rate, options.frame_ms))

    def _plan(self) -> list[Segment]:
        n, o = len(self.frames), self.options

        def at(offset: float) -> int:
            return min(n, max(0, _ceil_div(offset, self.frame_s)))

        events = [Segment("hold", at(offset), pause_s=d) for d, offset in o.holds]
        events += [Segment("reconnect", at(offset), pause_s=p) for p, offset in o.reconnects]
        events += [Segment("second_stream", at(offset)) for offset in o.second_streams]
        events += [Segment("dtmf", at(offset), digit=digit) for digit, offset in o.dtmf]
        events.sort(key=lambda s: (s.start, _ORDER[s.kind]))  # stable: given order within a kind
        plan, k = [], 0
        for event in events:
            if event.start > k:
                plan.append(Segment("media", k, event.start))
                k = event.start
            plan.append(event)
        if k < n:
            plan.append(Segment("media", k, n))
        return plan

    def encoder(self, stream_sid: str | None = None) -> StreamEncoder:
        """The codec for one stream of this call (the first stream's SID unless given)."""
        o = self.options
        return StreamEncoder(stream_sid or o.stream_sid, o.call_sid, o.account_sid, o.sample_rate)

    def start_message(self, enc: StreamEncoder) -> str:
        o = self.options
        return enc.start(o.from_, o.to, o.custom_parameters)

    def payloads(self, shared: bool = False) -> Payloads:
        """Each frame's base64 payload, marked when the options say so. ``shared``: unmarked audio is
        encoded once per process (a load generator's calls share their frames) instead of lazily."""
        o = self.options
        if o.watermark:
            return FramePayloads(self.frames, Marker(o.call_sid, robust=o.robust_mark, sample_rate=o.sample_rate))
        if shared:
            return _shared_payloads(tuple(self.frames))
        return FramePayloads(self.frames, None)

    def __iter__(self) -> Iterator[Step]:
        """One stream's messages (a script with stream switches is played by a driver that opens
        streams, :mod:`rtaa_cli.call.gevent_driver`)."""
        if self.streams > 1:
            raise ValueError("this script switches streams: play it with rtaa_cli.call.gevent_driver")
        o = self.options
        enc = self.encoder()
        yield Step(0.0, "connected", enc.connected())
        yield Step(0.0, "start", self.start_message(enc))
        payloads, frame_list, frame_s, shift = self.payloads(), self.frames, self.frame_s, 0.0
        for seg in self.segments:
            if seg.kind == "media":
                for k in range(seg.start, seg.end):
                    nbytes = len(frame_list[k])
                    yield Step(k * frame_s + shift, "media", enc.media_b64(payloads[k], nbytes), enc.audio_ms, nbytes)
            elif seg.kind == "hold":
                yield Step(seg.start * frame_s + shift, "hold", None, enc.audio_ms)
                shift += seg.pause_s
            elif seg.kind == "dtmf":
                yield Step(seg.start * frame_s + shift, "dtmf", enc.dtmf(seg.digit, o.dtmf_duration_ms), enc.audio_ms)
        yield Step(len(frame_list) * frame_s + shift, "stop", enc.stop(o.stop_reason), enc.audio_ms)


def _ceil_div(offset_s: float, frame_s: float) -> int:
    # Frame index whose start is at or after offset_s, tolerant of float noise (0.108/0.036).
    q = offset_s / frame_s
    r = round(q)
    return int(r) if abs(q - r) < 1e-9 else int(q) + (q > 0)


# ------------------------------------------------------------------------------------ bad input

BAD_INPUT_KINDS = ("malformed_json", "bad_base64", "oversize", "wrong_sample_rate", "media_before_start",
                   "frames_after_stop")
WRONG_SAMPLE_RATE = 11025  # not an Exotel rate
GOOD_FRAMES = 5  # media frames sent before the bad one


class BadInputScript:
    """One stream that sends one bad input, unpaced: a few good frames (raw audio, never marked),
    then ``what`` (:data:`BAD_INPUT_KINDS`). The server is expected to close the stream; which codes
    are acceptable is the caller's to say (``expected_closes``)."""

    def __init__(self, frame_list: Sequence[bytes], options: CallOptions, what: str,
                 expected_closes: Sequence[int | None] = (), oversize_bytes: int = 2 * 1024 * 1024) -> None:
        if what not in BAD_INPUT_KINDS:
            raise ValueError(f"unknown bad input {what!r}")
        self.options = options
        self.what = what
        self.kind = "bad:" + what
        self.frames = [frame_list[i % len(frame_list)] for i in range(GOOD_FRAMES)]
        self.padding_bytes = 0
        self.audio_ms = 0.0  # none of it counts as the call's audio
        self.streams = 1
        self.expected_closes = tuple(expected_closes)
        self.oversize_bytes = oversize_bytes

    def encoder(self, stream_sid: str | None = None) -> StreamEncoder:
        o = self.options
        return StreamEncoder(stream_sid or o.stream_sid, o.call_sid, o.account_sid, o.sample_rate)

    def messages(self, enc: StreamEncoder) -> Iterator[str]:
        """The stream's messages in order, built as they are sent (the server may close meanwhile)."""
        o, what, good = self.options, self.what, self.frames
        if what == "media_before_start":
            yield enc.connected()
            yield enc.media(good[0])
            return
        yield enc.connected()
        if what == "wrong_sample_rate":
            enc.sample_rate = WRONG_SAMPLE_RATE
            yield enc.start(o.from_, o.to, o.custom_parameters)
            enc.sample_rate = o.sample_rate
            yield enc.media(good[0])
            return
        yield enc.start(o.from_, o.to, o.custom_parameters)
        for pcm in good:
            yield enc.media(pcm)
        if what == "malformed_json":
            yield '{"event": "media", "stream_sid": '
        elif what == "bad_base64":
            yield _with_payload(enc, good[0], "!!not*base64!!")
        elif what == "oversize":
            yield _with_payload(enc, b"", base64.b64encode(os.urandom(self.oversize_bytes * 3 // 4)).decode())
        elif what == "frames_after_stop":
            yield enc.stop("stopped")
            for pcm in good[:3]:
                yield enc.media(pcm)


def _with_payload(enc: StreamEncoder, pcm: bytes, payload: str) -> str:
    """The stream's next media message (numbered, not counted by the encoder) with ``payload`` instead."""
    msg = orjson.loads(build_media(enc.stream_sid, enc.sequence_number + 1, enc.chunk + 1, 0, pcm))
    msg["media"]["payload"] = payload
    return orjson.dumps(msg).decode()
