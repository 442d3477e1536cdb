"""The worker's per-call provider decisions, sans I/O: when to connect, retry or give up, what to replay,
when a KeepAlive is due, which results to publish, and how a call's end proceeds.

In the manner of :mod:`rtaa_cli.pipeline.ingest_rules`: the worker's asyncio shell
(:class:`rtaa_cli.pipeline.worker.Interaction`) tells a :class:`CallRules` what happened (a frame to send,
an open attempt failed, a connection opened or closed, a result arrived) with the time from its clock, and
carries out what comes back: an :class:`Action`, a :class:`Retry` delay, a :class:`Replay` to send, a
:class:`ResultVerdict`. The provider's failure is a value (:attr:`CallRules.failure`), raised by the shell.
Nothing here touches a socket, a task, a metric, a log or a real clock (the jitter is passed in too), so
every decision is tested by driving a :class:`CallRules` directly (tests/pipeline/test_worker_rules.py).

Provider link (:class:`Link`), one per call; an opening is the whole CONNECTING -> (BACKOFF ->
CONNECTING)* -> REPLAYING path, and exactly one is in flight at a time:

| link \\ event | need (frame or end) | open ok | open failed | replay failed | connection closed |
|---|---|---|---|---|---|
| ``IDLE`` | ``OPEN`` -> ``CONNECTING`` (frames in an outage: ``BUFFER``) | - | - | - | - |
| ``CONNECTING`` | ``JOIN`` (frames in an outage: ``BUFFER``) | -> ``REPLAYING`` | -> ``BACKOFF`` or ``FAILED`` | - | - |
| ``BACKOFF`` | ``JOIN`` (frames: ``BUFFER``) | - | - | - | - |
| ``REPLAYING`` | ``JOIN`` (frames in an outage: ``BUFFER``) | - | - | -> ``BACKOFF`` or ``FAILED`` | (replay failed) |
| ``OPEN`` | ``SEND`` | - | - | - | -> ``IDLE``, outage, ``REOPEN`` while active |
| ``FAILED`` | ``FAIL`` | - | - | - | - |

An *outage* begins when an open attempt fails or the current connection is lost while the call is active,
and ends when a connection carries live audio again; during it frames stay in the bounded replay buffer
(the reopening sends them) instead of waiting, so the bus never backs up. Retries back off exponentially
with jitter inside ``reconnect_window_s`` from the opening's first attempt, and the last attempt is made at
the window's end: a provider that stays down fails the call about one window after the loss. A permanent
refusal (401, 400) fails it at once.
"""
from __future__ import annotations

from enum import Enum

from rtaa_cli.pipeline.config import WorkerConfig
from rtaa_cli.pipeline.providers.base import ProviderError
from rtaa_cli.pipeline.timeline import CallTimeline


def backoff_s(attempt: int, base_s: float, cap_s: float, rand: float) -> float:
    """Delay after failed attempt ``attempt`` (1, 2, ...): base * 2**(n-1), capped, times jitter in
    [0.5, 1) from ``rand`` in [0, 1), so calls that lost the provider together do not retry in step."""
    return min(cap_s, base_s * 2.0 ** min(attempt - 1, 30)) * (0.5 + rand / 2)


class Link(Enum):
    IDLE = "idle"  # no connection and no opening
    CONNECTING = "connecting"  # an open attempt is in flight
    BACKOFF = "backoff"  # an attempt failed; the next one is due at ``retry_at``
    REPLAYING = "replaying"  # connected; the audio no final covers is being sent to it
    OPEN = "open"  # the current connection carries live audio
    FAILED = "failed"  # the provider is given up on for this call


class Phase(Enum):
    """The call's own state."""

    ACTIVE = "active"
    ENDING = "ending"  # CloseStream sent or about to be: waiting for the finals
    ENDED = "ended"


class Action(Enum):
    SEND = "send"  # send on the current connection
    OPEN = "open"  # begin the opening (the only way a connect starts)
    JOIN = "join"  # an opening is under way: wait for it (a duplicate open prevented)
    BUFFER = "buffer"  # outage: the frame waits in the replay buffer, the reopening sends it
    FAIL = "fail"  # raise :attr:`CallRules.failure`
    CALL_ENDED = "call_ended"  # the call has ended: no connection will be opened for it
    REOPEN = "reopen"  # begin reopening now (a hold would send no frame to trigger it)
    NOTHING = "nothing"
    KEEPALIVE = "keepalive"  # send a KeepAlive on the current connection
    CLOSE_STREAM = "close_stream"  # send CloseStream and wait for the connection's close
    DONE = "done"  # the call's end is complete


class ResultVerdict(Enum):
    PUBLISH = "publish"
    DUPLICATE_FINAL = "duplicate_final"  # a final with text over audio a final already covered: counted, dropped
    SILENT_FINAL = "silent_final"  # a final without text: moves the replay point, nothing to publish
    STALE = "stale"  # an interim without text, or over finalised audio: dropped


class Retry:
    """An attempt failed and the window is not over: wait ``delay_s``, then :meth:`CallRules.retry`."""

    __slots__ = ("attempt", "delay_s")

    def __init__(self, attempt: int, delay_s: float) -> None:
        self.attempt = attempt  # the attempt that failed (1: the first of this opening)
        self.delay_s = delay_s


class Replay:
    """A new connection: send it the audio from stream position ``base`` on (``CallTimeline.since``),
    then :meth:`CallRules.ready`. ``gap``: the (start, end) no final covers and the replay no longer holds."""

    __slots__ = ("number", "base", "duplicate", "gap")

    def __init__(self, number: int, base: int, duplicate: bool, gap: tuple[int, int] | None) -> None:
        self.number = number  # the call's connection number, from 1
        self.base = base  # stream position of the connection's first byte: its time zero
        self.duplicate = duplicate  # another connection of this call is still open (must never happen)
        self.gap = gap


REPLAY_CLOSED_REASON = "provider stream kept closing while the pending audio was replayed"
_OPENING = frozenset({Link.CONNECTING, Link.BACKOFF, Link.REPLAYING})


class CallRules:
    """One call's provider decisions. ``timeline`` is the call's audio in stream audio time (its replay
    buffer); the rules read and advance it, the shell appends frames to it."""

    __slots__ = ("cfg", "timeline", "link", "phase", "outage", "failure", "attempt", "window_end", "retry_at",
                 "connections_opened", "connections_open", "current", "conn_base", "conn_sent", "ready_at",
                 "last_sent")

    def __init__(self, cfg: WorkerConfig, timeline: CallTimeline, now: float) -> None:
        self.cfg = cfg
        self.timeline = timeline
        self.link = Link.IDLE
        self.phase = Phase.ACTIVE
        self.outage = False
        self.failure: ProviderError | None = None
        self.attempt = 0  # attempts of the current opening
        self.window_end = 0.0  # the current opening gives up after this time
        self.retry_at = 0.0
        self.connections_opened = 0
        self.connections_open = 0  # connected and not yet closed: > 1 would be a duplicate
        self.current = 0  # number of the connection that is REPLAYING or OPEN (0: none)
        self.conn_base = 0  # stream position of the current connection's first byte
        self.conn_sent = 0  # stream position sent on the current connection
        self.ready_at = 0.0  # when the current connection became usable (after its replay)
        self.last_sent = now  # last audio or KeepAlive sent (the KeepAlive cadence)

    @property
    def opening(self) -> bool:
        return self.link in _OPENING

    # -- needing the connection ------------------------------------------------------------------
    def need(self, now: float) -> Action:
        """Something other than a frame needs the connection (the eager open on start, a reopen, the end):
        ``SEND`` (it is open), ``OPEN`` (begin the opening now), ``JOIN``, ``FAIL`` or ``CALL_ENDED``."""
        link = self.link
        if link is Link.OPEN:
            return Action.SEND
        if link is Link.FAILED:
            return Action.FAIL
        if link is Link.IDLE:
            if self.phase is Phase.ENDED:
                return Action.CALL_ENDED
            self._begin(now)
            return Action.OPEN
        return Action.JOIN

    def frame(self, now: float) -> Action:
        """A frame (already in the timeline) is to go out: ``SEND``, ``BUFFER`` (outage), ``OPEN``, ``JOIN``
        (wait for the opening, then send it unless its replay did), ``FAIL`` or ``CALL_ENDED``."""
        link = self.link
        if link is Link.OPEN:
            return Action.SEND
        if link is Link.FAILED:
            return Action.FAIL
        if self.outage:
            return Action.BUFFER
        return self.need(now)

    def _begin(self, now: float) -> None:
        self.link = Link.CONNECTING
        self.attempt = 1
        self.window_end = now + self.cfg.reconnect_window_s

    # -- opening -----------------------------------------------------------------------------------
    def open_failed(self, error: ProviderError, now: float, rand: float) -> Retry | None:
        """The attempt failed. A :class:`Retry`, or None: given up (:attr:`failure` says why)."""
        assert self.link is Link.CONNECTING, self.link
        if error.permanent:
            self._give_up(error)
            return None
        return self._retry_or_give_up(error, now, rand)

    def replay_failed(self, now: float, rand: float) -> Retry | None:
        """The new connection closed before its replay completed (its close is :meth:`closed` too)."""
        assert self.link is Link.REPLAYING, self.link
        self.current = 0
        return self._retry_or_give_up(ProviderError(REPLAY_CLOSED_REASON), now, rand)

    def _retry_or_give_up(self, error: ProviderError, now: float, rand: float) -> Retry | None:
        self.outage = True
        left = self.window_end - now
        if left <= 0:
            self._give_up(ProviderError(
                f"provider unavailable for {self.cfg.reconnect_window_s:g} s ({self.attempt} attempts): {error}",
                status=error.status))
            return None
        self.link = Link.BACKOFF
        delay = min(left, backoff_s(self.attempt, self.cfg.reconnect_base_s, self.cfg.reconnect_cap_s, rand))
        self.retry_at = now + delay
        return Retry(self.attempt, delay)

    def _give_up(self, error: ProviderError) -> None:
        self.link = Link.FAILED
        self.failure = error

    def retry(self) -> bool:
        """The backoff is over: True to make the next attempt, False when the call ended meanwhile (the
        opening stops; nothing is given up)."""
        assert self.link is Link.BACKOFF, self.link
        if self.phase is Phase.ENDED:
            self.link = Link.IDLE
            return False
        self.link = Link.CONNECTING
        self.attempt += 1
        return True

    def cancelled(self) -> None:
        """The opening was abandoned (the call ended under it)."""
        if self.link in _OPENING:
            self.link = Link.IDLE
            self.current = 0

    def connected(self) -> Replay:
        """The attempt opened a connection: replay to it what no final covers (its ``base`` on)."""
        assert self.link is Link.CONNECTING, self.link
        self.link = Link.REPLAYING
        self.connections_opened += 1
        self.current = self.connections_opened
        duplicate = self.connections_open > 0
        self.connections_open += 1
        tl = self.timeline
        gap = tl.replay_gap()
        base = tl.unfinalized()[0]
        self.conn_base = base
        self.conn_sent = base
        return Replay(self.current, base, duplicate, gap)

    def ready(self, sent: int, now: float) -> int:
        """The replay went out up to ``sent``: the connection carries live audio from now on. Returns the
        attempts this opening took (> 1: a reopen after failures)."""
        assert self.link is Link.REPLAYING, self.link
        self.link = Link.OPEN
        self.outage = False
        self.conn_sent = sent
        self.ready_at = self.last_sent = now
        return self.attempt

    def closed(self, number: int) -> Action:
        """Connection ``number`` closed. ``REOPEN`` when it was the current one and the call is active."""
        self.connections_open -= 1
        if number != self.current or self.link is not Link.OPEN:
            return Action.NOTHING  # closed during its replay (replay_failed) or an older connection
        self.link = Link.IDLE
        self.current = 0
        if self.phase is Phase.ACTIVE:
            self.outage = True
            return Action.REOPEN
        return Action.NOTHING

    # -- audio -------------------------------------------------------------------------------------
    def sent(self, end: int, now: float) -> None:
        """Audio up to stream position ``end`` went out on the current connection."""
        self.conn_sent = end
        self.last_sent = now

    def keepalive(self, now: float) -> tuple[Action, float]:
        """The KeepAlive timer: (``NOTHING``, seconds until it is due), or once due (no audio or KeepAlive
        sent for ``keepalive_interval_s``: a hold) (``KEEPALIVE``, 0) with a connection open, (``NOTHING``, 0)
        without one; either way the interval restarts now."""
        wait = self.last_sent + self.cfg.keepalive_interval_s - now
        if wait > 0:
            return Action.NOTHING, wait
        self.last_sent = now
        return (Action.KEEPALIVE if self.link is Link.OPEN else Action.NOTHING), 0.0

    # -- results -----------------------------------------------------------------------------------
    def result(self, base: int, start_s: float, end_s: float, is_final: bool,
               has_text: bool) -> tuple[ResultVerdict, float, float]:
        """A result of the connection whose time zero is stream position ``base``: the verdict and its
        (start, end) in stream audio ms. A final marks its audio finalised (no replay needed)."""
        tl = self.timeline
        start_ms = tl.to_stream_ms(base, start_s)
        end_ms = tl.to_stream_ms(base, end_s)
        if is_final:
            if tl.is_stale(end_ms):
                return (ResultVerdict.DUPLICATE_FINAL if has_text else ResultVerdict.STALE), start_ms, end_ms
            tl.on_final(end_ms)
            return (ResultVerdict.PUBLISH if has_text else ResultVerdict.SILENT_FINAL), start_ms, end_ms
        if not has_text or tl.is_stale(end_ms):
            return ResultVerdict.STALE, start_ms, end_ms
        return ResultVerdict.PUBLISH, start_ms, end_ms

    # -- end ---------------------------------------------------------------------------------------
    def begin_end(self) -> bool:
        """The call ends: False if it is already ending (idempotent)."""
        if self.phase is not Phase.ACTIVE:
            return False
        self.phase = Phase.ENDING
        return True

    def end_step(self) -> Action:
        """The next step of the end: ``DONE`` (nothing was sent that a final has not covered, so no provider
        stream is needed), ``FAIL`` (given up on the provider), or ``CLOSE_STREAM`` (get the connection
        with :meth:`need`, send CloseStream, wait for its close; a close other than 1000 repeats this)."""
        tl = self.timeline
        idle = self.link is Link.IDLE or self.link is Link.FAILED
        if idle and tl.end == tl.final_end:
            return Action.DONE
        if self.link is Link.FAILED:
            return Action.FAIL
        return Action.CLOSE_STREAM

    def ended(self) -> None:
        """The call's connection and opening are dropped: nothing more is decided for it."""
        self.phase = Phase.ENDED
        if self.link is not Link.FAILED:
            self.link = Link.IDLE
        self.current = 0
