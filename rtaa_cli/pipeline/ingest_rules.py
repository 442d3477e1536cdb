"""The ingest's stream rules, sans I/O: which Exotel stream feeds which call, and when a stream or call ends.

In the manner of h11: the ingest's socket handler (:mod:`rtaa_cli.pipeline.ingest`) feeds events in
(a message arrived, a start, a media frame of N bytes, a stop, a disconnect, a timer ran out) with the
time from its clock, and carries out what comes back: a decision (forward the frame, discard it, publish
END for a call, begin or cancel a resume grace) or a :class:`StreamRuleError` whose ``kind``
(:class:`Rule`) names the rule broken, with the close code and reason to send. Nothing here touches a
socket, the bus, metrics, logs or a real clock, so every rule is tested by driving a
:class:`IngestRules` directly (tests/pipeline/test_ingest_rules.py).

Per stream (:class:`StreamState`):

| state \\ event | start | media | stop | disconnect |
|---|---|---|---|---|
| ``AWAITING_START`` | checks below -> ``STREAMING`` | ``MEDIA_BEFORE_START`` | ignored | nothing |
| ``STREAMING`` | ``DUPLICATE_START`` | forward | -> ``STOPPED``, END the call | resume grace |
| ``SUPERSEDED`` | ``DUPLICATE_START`` | discard | ignored | nothing |
| ``STOPPED`` | ``DUPLICATE_START`` | ``MEDIA_AFTER_STOP`` | ignored | nothing |

A start is refused, in this order, when the server is shutting down, the interaction id is missing or
too long, the rate is not served, the call is live (or in its grace) and owned by another principal,
a new call would exceed the principal's or the server's call cap, or the call's audio already has
another rate. A start for a call with a current stream supersedes that stream (newest wins: it is
closed 1001 and its frames are discarded from now on); a start within a call's resume grace continues
the call. The same holds when the newer stream arrived at another ingest process
(:meth:`IngestRules.superseded_elsewhere`, told by the Redis bus). Every stream in a state but ``AWAITING_START`` is also held to the audio budget and the hold
limit; every message to the message rate; a stream that is closing drains its frames silently.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum, StrEnum
from typing import Protocol, TypeVar

from rtaa_cli.protocols.closecodes import Close
from rtaa_cli.pipeline.config import IngestConfig
from rtaa_cli.pipeline.ratelimit import TokenBucket, audio_bucket

SUPERSEDED_REASON = "superseded by a newer stream for this call"
OWNED_REASON = "call owned by another principal"
PRINCIPAL_CAP_REASON = "too many calls for this principal"
SHUTDOWN_REASON = "server shutting down"
GARBAGE_ONLY_LIMIT = 50  # unknown events before any start: not an Exotel stream
GARBAGE_REASON = f"no Exotel stream: {GARBAGE_ONLY_LIMIT} unknown events and no start"
MAX_INTERACTION_ID = 128  # it names metrics-free state, log lines, feed paths and the provider's tag
DROPPED_REASON = "stream dropped"  # a call's END reason when its resume grace ran out


class Rule(StrEnum):
    """Why a stream is closed. The value is the ``kind`` of ``rtaa_bad_input_total`` (the two idle
    limits are counted in ``rtaa_idle_closes_total{limit}`` instead, a shutdown not at all)."""

    RATE_LIMIT = "rate_limit"
    BINARY_FRAME = "binary_frame"
    GARBAGE_ONLY = "garbage_only"
    MEDIA_BEFORE_START = "media_before_start"
    MEDIA_AFTER_STOP = "media_after_stop"
    AUDIO_RATE = "audio_rate"
    DUPLICATE_START = "duplicate_start"
    INVALID_FIELD = "invalid_field"  # the interaction key is missing or too long
    WRONG_SAMPLE_RATE = "wrong_sample_rate"
    CALL_HIJACK = "call_hijack"
    OVER_PRINCIPAL_CAPACITY = "over_principal_capacity"
    OVER_CAPACITY = "over_capacity"
    START_TIMEOUT = "start"  # idle limit: no start in time
    HOLD = "hold"  # idle limit: a started stream without audio for too long
    SHUTTING_DOWN = "shutting_down"
    # closes websockets makes by itself (the rules never see the frame); the shell counts them by these
    OVERSIZE = "oversize"  # 1009: a frame over max_size
    INVALID_UTF8 = "invalid_utf8"  # 1007: a text frame that is not UTF-8
    PROTOCOL_ERROR = "protocol_error"  # 1002: a broken frame


IDLE_RULES = frozenset({Rule.START_TIMEOUT, Rule.HOLD})


class StreamRuleError(Exception):
    """A stream broke a rule: close it with ``close_code`` and ``reason``. ``ends_call``: the call it
    fed ends now, without a resume grace (the limit was the caller's doing)."""

    def __init__(self, kind: Rule, close_code: Close, reason: str, ends_call: bool = False,
                 interaction_id: str | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.close_code = close_code
        self.reason = reason
        self.ends_call = ends_call
        self.interaction_id = interaction_id  # the call a refused start named (the stream does not keep it)


class StreamState(Enum):
    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"  # started and the current stream of its call
    SUPERSEDED = "superseded"  # a newer stream of its call took over
    STOPPED = "stopped"  # sent stop (or its call was ended): it feeds nothing any more


class MediaAction(Enum):
    """What to do with a media frame the rules accept."""

    FORWARD = "forward"  # publish it on the call's channel
    DISCARD = "discard"  # a superseded stream's frame: its call is fed by the newer stream


AWAITING_START, STREAMING, SUPERSEDED, STOPPED = (StreamState.AWAITING_START, StreamState.STREAMING,
                                                  StreamState.SUPERSEDED, StreamState.STOPPED)
FORWARD, DISCARD = MediaAction.FORWARD, MediaAction.DISCARD


class Stream:
    """The rules' view of one caller connection. The ingest's connection object extends it."""

    __slots__ = ("owner", "interaction_id", "stream_sid", "sample_rate", "state", "closing", "unknown_events",
                 "messages", "audio", "bytes_per_s", "last_audio")

    def __init__(self, owner: str, messages: TokenBucket) -> None:
        self.owner = owner  # the principal's name (from the handshake)
        self.interaction_id: str | None = None
        self.stream_sid = ""
        self.sample_rate = 0  # of its start; fixes the call's rate at this stream's first published frame
        self.state = AWAITING_START
        self.closing = False  # a close is under way: its frames are drained, nothing is decided for it
        self.unknown_events = 0
        self.messages = messages
        self.audio: TokenBucket | None = None  # audio seconds (set at start; None: no limit)
        self.bytes_per_s = 16000.0  # of its start's rate (16-bit mono)
        self.last_audio = 0.0  # clock time of the last media frame (or of the start)


S = TypeVar("S", bound=Stream)


class LiveCall(Protocol):
    """What the rules read of a live call: the rate fixed by its first audio (None: no audio yet)."""

    @property
    def sample_rate(self) -> int | None: ...


class StartFields(Protocol):
    """The fields of an Exotel start the rules use (:class:`rtaa_cli.protocols.exotel.Start`)."""

    @property
    def stream_sid(self) -> str: ...

    @property
    def call_sid(self) -> str: ...

    @property
    def custom_parameters(self) -> dict[str, str]: ...

    @property
    def sample_rate(self) -> int: ...


class Started:
    """A start accepted: ``stream`` feeds call ``interaction_id`` from now on."""

    __slots__ = ("interaction_id", "new_call", "resumed", "superseded")

    def __init__(self, interaction_id: str, new_call: bool, resumed: bool, superseded: Stream | None) -> None:
        self.interaction_id = interaction_id
        self.new_call = new_call  # no live call had this id: the stream's principal owns it now
        self.resumed = resumed  # the call was in its resume grace: cancel the grace timer
        self.superseded = superseded  # the call's previous stream: close it 1001 SUPERSEDED_REASON


class Dropped:
    """A call's current stream went away without stop. ``grace_s`` > 0: wait that long for a stream to
    resume it, then call :meth:`IngestRules.grace_expired`; otherwise END it now with ``reason``."""

    __slots__ = ("interaction_id", "grace_s", "reason")

    def __init__(self, interaction_id: str, grace_s: float, reason: str) -> None:
        self.interaction_id = interaction_id
        self.grace_s = grace_s
        self.reason = reason


class IngestRules:
    """Every stream's and call's rule state in one ingest process. ``calls`` is the bus's view of this
    process's live calls (read only: the worker, not the ingest, decides when a call is gone)."""

    def __init__(self, cfg: IngestConfig, calls: Mapping[str, LiveCall]) -> None:
        key = cfg.interaction_key
        if key not in ("call_sid", "stream_sid") and not key.startswith("custom:"):
            raise ValueError(f"interaction key must be call_sid, stream_sid or custom:<name>, not {key!r}")
        self.cfg = cfg
        self.calls = calls
        self.current: dict[str, Stream] = {}  # interaction -> its newest stream
        self.grace: dict[str, float] = {}  # interaction -> when its resume grace ends
        self.owners: dict[str, str] = {}  # interaction -> principal name of the stream that opened the call
        self.accepting = True

    # -- streams ----------------------------------------------------------------------------------
    def message_bucket(self, now: float) -> TokenBucket:
        """A new stream's message rate limit."""
        return TokenBucket(self.cfg.max_messages_per_s, self.cfg.rate_burst, now)

    def message(self, s: Stream, now: float) -> bool:
        """Any message arrived. False: the stream is closing, drop the message unread. Raises when over
        the message rate."""
        if s.closing:
            return False
        if not s.messages.take(now):
            raise StreamRuleError(Rule.RATE_LIMIT, Close.POLICY_VIOLATION, "message rate limit exceeded")
        return True

    def begin_close(self, s: Stream) -> bool:
        """The ingest is about to close ``s``; False if a close is already under way (close once)."""
        if s.closing:
            return False
        s.closing = True
        return True

    def binary(self, s: Stream) -> None:
        """A binary frame: always raises (Exotel sends JSON text)."""
        raise StreamRuleError(Rule.BINARY_FRAME, Close.UNSUPPORTED_DATA, "binary frames are not Exotel messages")

    def call_gone(self, s: Stream) -> None:
        """The bus refused a frame because the call has already ended under this stream: always raises."""
        raise StreamRuleError(Rule.MEDIA_AFTER_STOP, Close.POLICY_VIOLATION, "media after the call ended")

    def unknown_event(self, s: Stream) -> None:
        """An event the codec does not know: ignored (Exotel adds events), unless the stream never started
        and sent nothing else ``GARBAGE_ONLY_LIMIT`` times (then raises: not an Exotel stream)."""
        s.unknown_events += 1
        if s.state is AWAITING_START and s.unknown_events >= GARBAGE_ONLY_LIMIT:
            raise StreamRuleError(Rule.GARBAGE_ONLY, Close.UNSUPPORTED_DATA, GARBAGE_REASON)

    def media(self, s: Stream, nbytes: int, now: float) -> MediaAction:
        """A media frame of ``nbytes`` PCM bytes: forward or discard it, or raise."""
        state = s.state
        if state is STREAMING or state is SUPERSEDED:
            audio = s.audio
            if audio is not None and not audio.take(now, nbytes / s.bytes_per_s):
                raise StreamRuleError(Rule.AUDIO_RATE, Close.POLICY_VIOLATION,
                                      f"audio faster than {self.cfg.max_audio_speed:g} x real time", ends_call=True)
            s.last_audio = now
            return FORWARD if state is STREAMING else DISCARD
        if state is STOPPED:
            raise StreamRuleError(Rule.MEDIA_AFTER_STOP, Close.POLICY_VIOLATION, "media after stop")
        raise StreamRuleError(Rule.MEDIA_BEFORE_START, Close.POLICY_VIOLATION, "media before start")

    def interaction_id(self, ev: StartFields) -> str | None:
        key = self.cfg.interaction_key
        if key == "call_sid":
            return ev.call_sid
        if key == "stream_sid":
            return ev.stream_sid
        return ev.custom_parameters.get(key[len("custom:"):]) or None

    def start(self, s: Stream, ev: StartFields, now: float) -> Started:
        """A start: ``s`` feeds its call from now on, or raises (the stream is refused, no call touched)."""
        if s.state is not AWAITING_START:
            raise StreamRuleError(Rule.DUPLICATE_START, Close.POLICY_VIOLATION, "second start on one stream")
        if not self.accepting:
            raise StreamRuleError(Rule.SHUTTING_DOWN, Close.GOING_AWAY, SHUTDOWN_REASON)
        cfg = self.cfg
        iid = self.interaction_id(ev)
        s.stream_sid = ev.stream_sid
        if iid is None:
            raise StreamRuleError(Rule.INVALID_FIELD, Close.INVALID_PAYLOAD,
                                  f"start.custom_parameters.{cfg.interaction_key[7:]}: missing (interaction key)")
        if len(iid) > MAX_INTERACTION_ID:
            raise StreamRuleError(Rule.INVALID_FIELD, Close.INVALID_PAYLOAD,
                                  f"interaction id ({cfg.interaction_key}) longer than {MAX_INTERACTION_ID} characters")
        s.interaction_id = iid
        if ev.sample_rate not in cfg.sample_rates:
            raise StreamRuleError(Rule.WRONG_SAMPLE_RATE, Close.INVALID_PAYLOAD,
                                  f"sample rate {ev.sample_rate} not served (use one of {list(cfg.sample_rates)})")
        existing = self.calls.get(iid)
        if existing is not None and self.owners.get(iid) != s.owner:
            # Only the principal that opened a call may continue or take it over (also inside the grace).
            s.interaction_id = None  # never this call's stream: its close must not touch the call
            raise StreamRuleError(Rule.CALL_HIJACK, Close.POLICY_VIOLATION, OWNED_REASON, interaction_id=iid)
        if existing is None and cfg.max_calls_per_principal and \
                self.live_calls_of(s.owner) >= cfg.max_calls_per_principal:
            raise StreamRuleError(Rule.OVER_PRINCIPAL_CAPACITY, Close.TRY_AGAIN_LATER, PRINCIPAL_CAP_REASON)
        if existing is None and len(self.calls) >= cfg.max_calls:
            raise StreamRuleError(Rule.OVER_CAPACITY, Close.TRY_AGAIN_LATER, "at capacity, try again later")
        if existing is not None and existing.sample_rate not in (None, ev.sample_rate):
            raise StreamRuleError(Rule.WRONG_SAMPLE_RATE, Close.INVALID_PAYLOAD,
                                  f"sample rate {ev.sample_rate} differs from this call's {existing.sample_rate}")
        if existing is None:
            self._own(iid, s.owner)
        s.state = STREAMING
        s.sample_rate = ev.sample_rate
        # The start timeout is met; the audio budget and the hold limit begin.
        s.bytes_per_s = 2.0 * ev.sample_rate
        s.audio = audio_bucket(cfg.max_audio_speed, cfg.audio_burst_s, now)
        s.last_audio = now
        resumed = self.grace.pop(iid, None) is not None
        older = self.current.get(iid)
        self.current[iid] = s
        superseded = None
        if older is not None and older is not s and older.state is STREAMING:
            # Newest wins: the older stream stops feeding this call before the new one's first frame.
            older.state = SUPERSEDED
            superseded = older
        return Started(iid, existing is None, resumed, superseded)

    def stop(self, s: Stream) -> str | None:
        """A stop (or the end of ``s``'s call by a limit): the interaction to END now, or None (the stream
        fed no call, or no longer does)."""
        if s.state is not STREAMING:
            return None
        s.state = STOPPED
        iid = s.interaction_id
        assert iid is not None
        if self.current.get(iid) is s:
            del self.current[iid]
        return iid

    def superseded_elsewhere(self, iid: str) -> Stream | None:
        """A newer stream of call ``iid`` began at another ingest process (scale-out): this one feeds the
        call no more. Returns its current stream, to close 1001 ``SUPERSEDED_REASON`` (its frames are
        discarded from now on), or None; a resume grace of the call ends without an END."""
        self.grace.pop(iid, None)
        s = self.current.pop(iid, None)
        if s is None or s.state is not STREAMING:
            return None
        s.state = SUPERSEDED
        return s

    def start_expired(self, s: Stream) -> None:
        """The start timeout ran out: raises if ``s`` has not started (and is not already closing)."""
        if s.state is AWAITING_START and not s.closing:
            raise StreamRuleError(Rule.START_TIMEOUT, Close.POLICY_VIOLATION,
                                  f"no start within {self.cfg.start_timeout_s:g} s", ends_call=True)

    def hold_left(self, s: Stream, now: float) -> float | None:
        """The hold limit's check: seconds until the next check, None (no more checks: ``s`` is closing
        or superseded), or raises once ``s`` had no audio for ``max_hold_s``."""
        if s.closing or s.state is SUPERSEDED:
            return None
        left = self.cfg.max_hold_s - (now - s.last_audio)
        if left > 0.001:
            return left
        raise StreamRuleError(Rule.HOLD, Close.POLICY_VIOLATION, f"no audio for {self.cfg.max_hold_s:g} s",
                              ends_call=True)

    # -- calls ------------------------------------------------------------------------------------
    def disconnected(self, s: Stream, now: float) -> Dropped | None:
        """``s`` closed. If it was its call's current stream and never sent stop, the call waits for a
        resume (or, while shutting down, ends now)."""
        iid = s.interaction_id
        if iid is None or s.state is not STREAMING or self.current.get(iid) is not s:
            return None
        del self.current[iid]
        if not self.accepting:
            return Dropped(iid, 0.0, "shutdown")
        grace_s = self.cfg.reconnect_grace_s
        if grace_s > 0:
            self.grace[iid] = now + grace_s
        return Dropped(iid, max(grace_s, 0.0), DROPPED_REASON)

    def grace_expired(self, iid: str) -> str | None:
        """The timer of ``iid``'s resume grace fired: the END reason, or None (resumed meanwhile). The
        timer is the shell's (its clock decides when), so no deadline is compared here."""
        if self.grace.pop(iid, None) is None:
            return None
        return DROPPED_REASON if iid not in self.current else None

    def shutdown(self, streams: Iterable[S]) -> tuple[list[str], list[S]]:
        """Stop accepting. Returns the calls in their resume grace and those of ``streams`` that are their
        call's current stream: END all these calls now (reason "shutdown"); the streams feed nothing more."""
        self.accepting = False
        in_grace = list(self.grace)
        self.grace.clear()
        ended = []
        for s in streams:
            iid = s.interaction_id
            if iid is not None and s.state is STREAMING and self.current.get(iid) is s:
                s.state = STOPPED  # later frames from it are reported, not sent
                del self.current[iid]
                ended.append(s)
        return in_grace, ended

    # -- owners -----------------------------------------------------------------------------------
    def owner_of(self, iid: str) -> str | None:
        """The principal that opened the live call ``iid`` (None: no such call now)."""
        return self.owners.get(iid) if iid in self.calls else None

    def live_calls_of(self, name: str) -> int:
        return sum(1 for iid in self.calls if self.owners.get(iid) == name)

    def _own(self, iid: str, name: str) -> None:
        self.owners[iid] = name
        if len(self.owners) > 2 * len(self.calls) + 64:  # amortised: forget calls that ended
            self.owners = {k: v for k, v in self.owners.items() if k in self.calls}
