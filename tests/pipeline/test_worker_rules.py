"""The worker's per-call provider rules (rtaa_cli.pipeline.worker_rules) driven directly: events in,
actions out, time and jitter passed in by the test (no sockets, no event loop, no real clock). The same
rules over real sockets: tests/pipeline/test_pipeline_streaming.py, test_pipeline_race.py, test_pipeline_outage.py."""
from __future__ import annotations

import random

import pytest

from rtaa_cli.pipeline.config import WorkerConfig
from rtaa_cli.pipeline.providers.base import ProviderError
from rtaa_cli.pipeline.timeline import CallTimeline
from rtaa_cli.pipeline.worker_rules import (REPLAY_CLOSED_REASON, Action, CallRules, Link, Phase, Retry,
                                            ResultVerdict, backoff_s)

RATE = 8000
FRAME = 576  # 36 ms at 8 kHz, 16-bit
BPMS = RATE * 2 / 1000  # bytes per ms
DOWN = ProviderError("deepgram unreachable: OSError")


def rules(**cfg: float) -> CallRules:
    c = WorkerConfig(**cfg)  # type: ignore[arg-type]
    return CallRules(c, CallTimeline(RATE, c.replay_limit_s), now=0.0)


def frames(r: CallRules, n: int, start: int = 0) -> bytes:
    """``n`` frames of distinct bytes into the timeline (what the shell appends before asking the rules)."""
    pcm = b"".join(bytes([(start + k) % 251]) * FRAME for k in range(n))
    for k in range(n):
        r.timeline.append(pcm[k * FRAME:(k + 1) * FRAME], 0.0)
    return pcm


def open_now(r: CallRules, now: float = 0.0) -> int:
    """need -> OPEN -> connected -> replay sent -> ready. Returns the connection's base."""
    assert r.need(now) is Action.OPEN
    replay = r.connected()
    r.ready(r.timeline.end, now)
    return replay.base


# -- the link's state table ----------------------------------------------------------------------------


def test_state_table_of_needs_and_frames() -> None:
    r = rules()
    assert r.link is Link.IDLE and r.frame(0.0) is Action.OPEN and r.link is Link.CONNECTING
    assert r.frame(0.0) is Action.JOIN and r.need(0.0) is Action.JOIN  # single flight
    retry = r.open_failed(DOWN, 0.1, rand=0.0)
    assert isinstance(retry, Retry) and r.link is Link.BACKOFF and r.outage
    assert r.frame(0.2) is Action.BUFFER  # outage: frames wait in the replay buffer
    assert r.need(0.2) is Action.JOIN  # the end waits for the opening
    assert r.retry() and r.link is Link.CONNECTING and r.attempt == 2
    assert r.frame(0.3) is Action.BUFFER  # still the outage while attempt 2 runs
    r.connected()
    assert r.link is Link.REPLAYING and r.frame(0.4) is Action.BUFFER
    assert r.ready(r.timeline.end, 0.5) == 2 and r.link is Link.OPEN and not r.outage
    assert r.frame(0.6) is Action.SEND and r.need(0.6) is Action.SEND
    assert r.closed(1) is Action.REOPEN and r.link is Link.IDLE and r.outage
    assert r.frame(0.7) is Action.BUFFER  # lost mid-call: buffered until the reopen is live
    assert r.need(0.7) is Action.OPEN  # the reopen (the shell starts it at once)


def test_a_permanent_refusal_fails_at_once_and_every_need_fails_fast() -> None:
    r = rules()
    assert r.need(0.0) is Action.OPEN
    refused = ProviderError("deepgram refused the stream: HTTP 401", permanent=True, status=401)
    assert r.open_failed(refused, 0.1, rand=0.5) is None
    assert r.link is Link.FAILED and r.failure is refused
    assert r.frame(0.2) is Action.FAIL and r.need(0.2) is Action.FAIL
    frames(r, 1)
    assert r.end_step() is Action.FAIL  # audio no final covers, and no provider: the end fails (a gap)


def test_no_connection_is_needed_at_the_end_when_every_byte_sent_is_finalised() -> None:
    r = rules()
    assert r.begin_end() and not r.begin_end()  # idempotent
    assert r.end_step() is Action.DONE
    r2 = rules()
    frames(r2, 3)
    r2.begin_end()
    assert r2.end_step() is Action.CLOSE_STREAM and r2.need(0.0) is Action.OPEN
    r2.ended()
    assert r2.phase is Phase.ENDED and r2.link is Link.IDLE
    assert rules().need(0.0) is Action.OPEN
    ended = rules()
    ended.ended()
    assert ended.need(0.0) is Action.CALL_ENDED  # nothing opens for a call that is over


def test_an_opening_abandoned_by_the_end_stops_without_a_failure() -> None:
    r = rules()
    r.need(0.0)
    r.open_failed(DOWN, 0.0, rand=0.0)
    r.ended()
    assert r.link is Link.IDLE and r.failure is None
    r2 = rules()
    r2.need(0.0)
    r2.open_failed(DOWN, 0.0, rand=0.0)
    r2.phase = Phase.ENDED  # the call ended during the backoff sleep
    assert r2.retry() is False and r2.link is Link.IDLE and r2.failure is None


# -- backoff -----------------------------------------------------------------------------------------


def test_connect_failures_back_off_exponentially_with_jitter_and_give_up_at_the_window() -> None:
    """Defaults: base 0.2 s, cap 2 s, window 15 s. Jitter 0 halves each step; the last attempt is made
    at the window's end, and the call fails about one window after the loss."""
    r = rules()
    now = 0.0
    assert r.need(now) is Action.OPEN
    delays, attempts_at = [], [now]
    while True:
        retry = r.open_failed(DOWN, now, rand=0.0)
        if retry is None:
            break
        assert r.link is Link.BACKOFF and r.retry_at == now + retry.delay_s
        delays.append(round(retry.delay_s, 6))
        now += retry.delay_s
        assert r.retry()
        attempts_at.append(now)
    assert delays[:6] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]  # base * 2**n * 0.5, capped at 2 * 0.5
    assert attempts_at[-1] == pytest.approx(15.0)  # the last attempt exactly at the window's end
    assert all(d <= 1.0 for d in delays)
    assert r.link is Link.FAILED and r.failure is not None
    assert str(r.failure) == f"provider unavailable for 15 s ({len(attempts_at)} attempts): {DOWN}"


def test_jitter_spreads_calls_that_lost_the_provider_together() -> None:
    assert backoff_s(1, 0.2, 2.0, 0.0) == pytest.approx(0.1)
    assert backoff_s(1, 0.2, 2.0, 0.999) == pytest.approx(0.1999)
    assert backoff_s(10, 0.2, 2.0, 0.5) == pytest.approx(1.5)  # capped, then jittered
    assert backoff_s(10_000, 0.2, 2.0, 0.0) == pytest.approx(1.0)  # no overflow on long outages


def test_events_out_of_order_are_refused() -> None:
    r = rules()
    with pytest.raises(AssertionError):
        r.open_failed(DOWN, 0.0, rand=0.0)  # no attempt in flight
    with pytest.raises(AssertionError):
        r.connected()
    r.need(0.0)
    with pytest.raises(AssertionError):
        r.retry()  # not backing off


def test_a_connection_that_closes_during_its_replay_is_a_failed_attempt() -> None:
    r = rules()
    frames(r, 5)
    r.need(0.0)
    r.connected()
    assert r.closed(1) is Action.NOTHING  # not current yet: the replay's failure decides
    retry = r.replay_failed(0.1, rand=0.0)
    assert isinstance(retry, Retry) and r.link is Link.BACKOFF and r.outage
    assert r.connections_open == 0
    r2 = rules(reconnect_window_s=0.05)
    r2.need(0.0)
    r2.connected()
    r2.closed(1)
    assert r2.replay_failed(0.1, rand=0.0) is None
    assert REPLAY_CLOSED_REASON in str(r2.failure)


# -- replay ------------------------------------------------------------------------------------------


def test_a_reconnect_replays_exactly_the_audio_no_final_covers() -> None:
    r = rules()
    pcm = frames(r, 10)  # 360 ms
    base = open_now(r)
    assert base == 0
    r.sent(r.timeline.end, 0.1)
    # a final covering the first 108 ms (3 frames) arrives
    assert r.result(base, 0.0, 0.108, is_final=True, has_text=True)[0] is ResultVerdict.PUBLISH
    assert r.closed(1) is Action.REOPEN
    more = frames(r, 4, start=10)  # arrive during the outage: buffered
    assert r.frame(0.2) is Action.BUFFER
    assert r.need(0.3) is Action.OPEN
    replay = r.connected()
    assert (replay.number, replay.duplicate, replay.gap) == (2, False, None)
    assert replay.base == 3 * FRAME  # the new connection's time zero: the end of the last final
    assert r.timeline.since(replay.base) == pcm[3 * FRAME:] + more  # exactly the unacknowledged audio
    r.ready(r.timeline.end, 0.4)
    assert r.conn_sent == r.timeline.end


def test_a_replay_trimmed_at_the_buffer_limit_reports_the_gap_once() -> None:
    r = rules(replay_limit_s=0.1)  # 100 ms: 1600 bytes
    open_now(r)
    r.closed(1)
    frames(r, 10)  # 360 ms during the outage: 260 ms trimmed
    r.need(0.0)
    replay = r.connected()
    assert replay.gap == (0, r.timeline.end - 1600)
    assert replay.base == r.timeline.end - 1600
    r.ready(r.timeline.end, 0.0)
    r.closed(2)
    r.need(0.0)
    assert r.connected().gap is None  # reported once


def test_never_two_connections_open_and_a_duplicate_is_named() -> None:
    r = rules()
    open_now(r)
    assert r.connections_open == 1
    r.link = Link.CONNECTING  # force a second connect in (what single-flight prevents)
    assert r.connected().duplicate


# -- results -----------------------------------------------------------------------------------------


def test_finals_seen_twice_across_a_reconnect_are_published_once() -> None:
    r = rules()
    frames(r, 60)  # 2.16 s
    base1 = open_now(r)
    assert r.result(base1, 0.0, 0.5, is_final=False, has_text=True)[0] is ResultVerdict.PUBLISH
    verdict, start_ms, end_ms = r.result(base1, 0.0, 1.08, is_final=True, has_text=True)
    assert (verdict, start_ms, end_ms) == (ResultVerdict.PUBLISH, 0.0, 1080.0)
    r.closed(1)
    r.need(1.0)
    base2 = r.connected().base
    assert base2 == int(1080 * BPMS)
    r.ready(r.timeline.end, 1.1)
    # connection 2 repeats the last final (times on its own clock: negative offset = before its base)
    assert r.result(base2, -1.08, 0.0, is_final=True, has_text=True)[0] is ResultVerdict.DUPLICATE_FINAL
    assert r.result(base2, -0.5, 0.0, is_final=False, has_text=True)[0] is ResultVerdict.STALE
    verdict, start_ms, end_ms = r.result(base2, 0.0, 0.72, is_final=True, has_text=True)
    assert (verdict, start_ms, end_ms) == (ResultVerdict.PUBLISH, 1080.0, 1800.0)  # stream audio time
    assert r.result(base2, 0.0, 0.72, is_final=True, has_text=True)[0] is ResultVerdict.DUPLICATE_FINAL


def test_a_final_over_silence_moves_the_replay_point_and_is_not_published() -> None:
    r = rules()
    frames(r, 30)
    base = open_now(r)
    assert r.result(base, 0.0, 0.72, is_final=True, has_text=False)[0] is ResultVerdict.SILENT_FINAL
    assert r.timeline.final_end == int(720 * BPMS)
    assert r.result(base, 0.0, 0.72, is_final=True, has_text=False)[0] is ResultVerdict.STALE  # not counted
    assert r.result(base, 0.72, 0.8, is_final=False, has_text=False)[0] is ResultVerdict.STALE


# -- KeepAlive ---------------------------------------------------------------------------------------


def test_keepalive_is_due_after_the_interval_without_audio_during_a_hold() -> None:
    r = rules(keepalive_interval_s=4.0)
    frames(r, 1)
    open_now(r, now=0.0)
    r.sent(r.timeline.end, 10.0)  # the last audio before the hold
    assert r.keepalive(12.0) == (Action.NOTHING, 2.0)
    assert r.keepalive(14.0) == (Action.KEEPALIVE, 0.0)
    assert r.keepalive(14.0) == (Action.NOTHING, 4.0)  # the interval restarts at the KeepAlive
    assert r.keepalive(18.0)[0] is Action.KEEPALIVE
    r.sent(r.timeline.end, 19.5)  # the caller speaks again: audio resets the timer
    assert r.keepalive(22.0) == (Action.NOTHING, 1.5)
    assert r.keepalive(23.5)[0] is Action.KEEPALIVE
    # a 60 s hold: one KeepAlive per interval, none in between
    sent, t = 0, 23.5
    while t < 83.5:
        t += 0.5
        sent += r.keepalive(t)[0] is Action.KEEPALIVE
    assert sent == 15


def test_no_keepalive_without_an_open_connection_but_the_timer_restarts() -> None:
    r = rules(keepalive_interval_s=4.0)
    assert r.keepalive(4.0) == (Action.NOTHING, 0.0)  # due, nothing to send it on
    assert r.keepalive(5.0) == (Action.NOTHING, 3.0)


# -- single flight under any order of events ------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_never_two_connects_in_flight_under_random_event_orders(seed: int) -> None:
    """A model of the shell: needs and frames at random, attempts that open or fail, connections that
    drop. Invariants after every event: at most one attempt in flight, at most one connection open, the
    link OPEN exactly when a connection is current, and an OPEN only ever begins from IDLE."""
    rng = random.Random(seed)
    r = rules(reconnect_window_s=5.0)
    now = 0.0
    in_flight = 0  # attempts the model has started and not resolved
    open_conns: list[int] = []
    for _ in range(400):
        now += rng.random() * 0.3
        event = rng.choice(("frame", "need", "resolve", "resolve", "drop", "wake"))
        before = r.link
        if event in ("frame", "need"):
            if event == "frame":
                frames(r, 1)
            action = r.frame(now) if event == "frame" else r.need(now)
            if action is Action.OPEN:
                assert before is Link.IDLE
                in_flight += 1
            elif action is Action.FAIL:
                assert r.failure is not None
                break
        elif event == "resolve" and r.link is Link.CONNECTING:
            in_flight -= 1
            if rng.random() < 0.5:
                r.connected()
                open_conns.append(r.current)
                r.ready(r.timeline.end, now)
            elif r.open_failed(DOWN, now, rng.random()) is None:
                break
        elif event == "wake" and r.link is Link.BACKOFF:
            assert r.retry()
            in_flight += 1
        elif event == "drop" and open_conns:
            number = open_conns.pop()
            action = r.closed(number)
            assert action is Action.REOPEN and r.outage
        assert in_flight <= 1 and in_flight == (r.link is Link.CONNECTING)
        assert r.connections_open == len(open_conns) <= 1
        assert (r.link is Link.OPEN) == bool(open_conns) == (r.current != 0)
