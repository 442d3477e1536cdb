"""The ingest's stream rules (rtaa_cli.pipeline.ingest_rules) driven directly: events in, decisions and
errors out, time passed in by the test (no sockets, no event loop, no real clock). The same rules over
real sockets: tests/pipeline/test_pipeline_ingest.py, test_pipeline_access.py, test_pipeline_limits.py."""
from __future__ import annotations


import pytest

from helpers.ingest import Ingest
from rtaa_cli.protocols.closecodes import Close
from rtaa_cli.pipeline.config import IngestConfig
from rtaa_cli.pipeline.ingest_rules import (AWAITING_START, DISCARD, DROPPED_REASON, FORWARD, GARBAGE_ONLY_LIMIT,
                                            OWNED_REASON, STOPPED, STREAMING, SUPERSEDED, SUPERSEDED_REASON,
                                            IngestRules, Rule, Stream, StreamRuleError)

FRAME = 576  # 36 ms at 8 kHz, 16-bit


def refused(fn, *args, **kwargs) -> StreamRuleError:
    with pytest.raises(StreamRuleError) as info:
        fn(*args, **kwargs)
    return info.value


def test_media_before_start_is_refused_and_after_start_forwarded() -> None:
    ing = Ingest()
    s = ing.stream()
    err = refused(ing.rules.media, s, FRAME, 0.0)
    assert (err.kind, err.close_code, err.reason) == (Rule.MEDIA_BEFORE_START, Close.POLICY_VIOLATION,
                                                      "media before start")
    assert s.state is AWAITING_START
    ing.start(ing.stream(), "CA1")
    s2 = ing.stream()
    ing.start(s2, "CA2")
    assert ing.rules.media(s2, FRAME, 0.1) is FORWARD
    assert s2.last_audio == 0.1


def test_a_second_start_on_one_stream_is_refused_whatever_the_state() -> None:
    ing = Ingest()
    s = ing.stream()
    ing.start(s, "CA1")
    assert refused(ing.start, s, "CA1").kind is Rule.DUPLICATE_START
    assert ing.rules.stop(s) == "CA1"
    assert refused(ing.start, s, "CA1").kind is Rule.DUPLICATE_START  # stopped: still one start per stream


def test_the_newest_stream_wins_and_the_older_one_is_discarded_not_stopped() -> None:
    ing = Ingest()
    old, new = ing.stream(), ing.stream()
    assert ing.start(old, "CA1").superseded is None
    started = ing.start(new, "CA1", stream_sid="ST2")
    assert started.superseded is old and not started.new_call
    assert old.state is SUPERSEDED and new.state is STREAMING
    assert ing.rules.current == {"CA1": new}
    assert ing.rules.media(old, FRAME, 0.1) is DISCARD  # its frames no longer feed the call
    assert ing.rules.media(new, FRAME, 0.1) is FORWARD
    assert ing.rules.stop(old) is None  # the old stream's stop must not end the call the new one feeds
    assert ing.rules.disconnected(old, 1.0) is None  # nor its disconnect start a grace
    assert SUPERSEDED_REASON  # the shell closes ``superseded`` 1001 with it


def test_stop_ends_the_call_once_and_media_after_it_is_refused() -> None:
    ing = Ingest()
    s = ing.stream()
    ing.start(s, "CA1")
    assert ing.rules.stop(s) == "CA1"
    assert ing.rules.stop(s) is None  # a second stop ends nothing
    assert s.state is STOPPED and ing.rules.current == {}
    assert refused(ing.rules.media, s, FRAME, 0.2).kind is Rule.MEDIA_AFTER_STOP
    assert ing.rules.disconnected(s, 0.3) is None  # stopped: no grace, the call already ended


def test_a_drop_without_stop_waits_for_a_resume_and_a_resume_cancels_the_grace() -> None:
    ing = Ingest(reconnect_grace_s=5.0)
    first = ing.stream()
    ing.start(first, "CA1")
    dropped = ing.rules.disconnected(first, 10.0)
    assert dropped is not None and (dropped.interaction_id, dropped.grace_s, dropped.reason) == ("CA1", 5.0,
                                                                                                 DROPPED_REASON)
    assert ing.rules.grace == {"CA1": 15.0} and ing.rules.current == {}
    second = ing.stream()
    started = ing.start(second, "CA1", now=12.0)
    assert started.resumed and not started.new_call and started.superseded is None
    assert ing.rules.grace == {}
    assert ing.rules.grace_expired("CA1") is None  # a timer that fires anyway ends nothing


def test_a_grace_that_runs_out_ends_the_call_with_stream_dropped() -> None:
    ing = Ingest(reconnect_grace_s=5.0)
    s = ing.stream()
    ing.start(s, "CA1")
    ing.rules.disconnected(s, 0.0)
    assert ing.rules.grace_expired("CA1") == DROPPED_REASON
    assert ing.rules.grace == {} and ing.rules.grace_expired("CA1") is None  # once


def test_only_the_principal_that_opened_a_call_may_continue_it_also_inside_the_grace() -> None:
    ing = Ingest(reconnect_grace_s=5.0)
    owner = ing.stream("alice")
    ing.start(owner, "CA1")
    thief = ing.stream("mallory")
    err = refused(ing.start, thief, "CA1")
    assert (err.kind, err.close_code, err.reason, err.interaction_id) == (Rule.CALL_HIJACK, Close.POLICY_VIOLATION,
                                                                          OWNED_REASON, "CA1")
    assert thief.interaction_id is None  # its close must not touch the call
    assert owner.state is STREAMING and ing.rules.current == {"CA1": owner}
    ing.rules.disconnected(owner, 0.0)
    assert refused(ing.start, ing.stream("mallory"), "CA1").kind is Rule.CALL_HIJACK
    assert ing.start(ing.stream("alice"), "CA1").resumed


def test_capacity_per_principal_and_per_server_count_live_calls() -> None:
    ing = Ingest(max_calls=3, max_calls_per_principal=2)
    ing.start(ing.stream("alice"), "A1")
    ing.start(ing.stream("alice"), "A2")
    err = refused(ing.start, ing.stream("alice"), "A3")
    assert (err.kind, err.close_code) == (Rule.OVER_PRINCIPAL_CAPACITY, Close.TRY_AGAIN_LATER)
    ing.start(ing.stream("bob"), "B1")
    assert refused(ing.start, ing.stream("bob"), "B2").kind is Rule.OVER_CAPACITY
    ing.start(ing.stream("alice"), "A1")  # a stream of a live call is not a new call
    del ing.calls["A1"]  # the worker finished it
    ing.start(ing.stream("bob"), "B2")
    assert ing.rules.live_calls_of("bob") == 2 and ing.rules.owner_of("A1") is None


def test_sample_rate_rules_and_the_interaction_key() -> None:
    ing = Ingest(interaction_key="custom:call")
    assert refused(ing.start, ing.stream(), "CA1").kind is Rule.INVALID_FIELD  # no custom parameter "call"
    err = refused(ing.start, ing.stream(), "CA1", 0.0, custom_parameters={"call": "x" * 129})
    assert (err.kind, err.close_code) == (Rule.INVALID_FIELD, Close.INVALID_PAYLOAD)
    err = refused(ing.start, ing.stream(), "CA1", 0.0, custom_parameters={"call": "K"}, sample_rate=11025)
    assert err.kind is Rule.WRONG_SAMPLE_RATE and "11025" in err.reason
    started = ing.start(ing.stream(), "CA1", custom_parameters={"call": "K"})
    assert started.interaction_id == "K"
    ing.calls["K"].sample_rate = 8000  # its first audio fixed the rate
    err = refused(ing.start, ing.stream(), "CA1", 0.0, custom_parameters={"call": "K"}, sample_rate=16000)
    assert err.kind is Rule.WRONG_SAMPLE_RATE and "differs" in err.reason
    with pytest.raises(ValueError):
        IngestRules(IngestConfig(interaction_key="nonsense"), {})


def test_a_new_rate_may_supersede_a_stream_that_sent_no_audio() -> None:
    ing = Ingest()
    old = ing.stream()
    ing.start(old, "CA1", sample_rate=8000)
    new = ing.stream()
    assert ing.start(new, "CA1", sample_rate=16000).superseded is old
    assert new.bytes_per_s == 32000.0


def test_message_rate_and_audio_budget_by_the_callers_clock() -> None:
    ing = Ingest(max_messages_per_s=10.0, rate_burst=5.0, max_audio_speed=2.0, audio_burst_s=1.0)
    s = ing.stream()
    assert all(ing.rules.message(s, 0.0) for _ in range(5))
    assert refused(ing.rules.message, s, 0.0).kind is Rule.RATE_LIMIT
    assert ing.rules.message(s, 0.1)  # refilled: 10 per second
    ing.start(s, "CA1")
    second = 16000  # bytes of 1 s at 8 kHz
    assert ing.rules.media(s, second, 0.0) is FORWARD  # the 1 s burst
    assert ing.rules.media(s, second, 0.5) is FORWARD  # 2 x real time refills 1 s in 0.5 s
    err = refused(ing.rules.media, s, second, 0.6)
    assert (err.kind, err.ends_call) == (Rule.AUDIO_RATE, True)
    assert err.reason == "audio faster than 2 x real time"


def test_unknown_events_are_ignored_unless_a_stream_sends_nothing_else() -> None:
    ing = Ingest()
    junk = ing.stream()
    for _ in range(GARBAGE_ONLY_LIMIT - 1):
        ing.rules.unknown_event(junk)
    err = refused(ing.rules.unknown_event, junk)
    assert (err.kind, err.close_code) == (Rule.GARBAGE_ONLY, Close.UNSUPPORTED_DATA)
    started = ing.stream()
    ing.start(started, "CA1")
    for _ in range(2 * GARBAGE_ONLY_LIMIT):
        ing.rules.unknown_event(started)  # a started call is never garbage


def test_start_timeout_and_hold_limit() -> None:
    ing = Ingest(start_timeout_s=5.0, max_hold_s=600.0)
    idle = ing.stream()
    err = refused(ing.rules.start_expired, idle)
    assert (err.kind, err.reason) == (Rule.START_TIMEOUT, "no start within 5 s")
    s = ing.stream()
    ing.start(s, "CA1", now=100.0)
    ing.rules.start_expired(s)  # met: nothing
    ing.rules.media(s, FRAME, 200.0)
    assert ing.rules.hold_left(s, 300.0) == pytest.approx(500.0)  # re-armed from the last frame
    err = refused(ing.rules.hold_left, s, 800.0)
    assert (err.kind, err.ends_call, err.reason) == (Rule.HOLD, True, "no audio for 600 s")
    assert ing.rules.begin_close(s) and not ing.rules.begin_close(s)  # closed once
    assert ing.rules.hold_left(s, 900.0) is None  # closing: no more checks
    assert not ing.rules.message(s, 900.0)  # and its frames are drained


def test_binary_frames_and_frames_for_a_call_already_gone() -> None:
    ing = Ingest()
    s = ing.stream()
    assert refused(ing.rules.binary, s).close_code == Close.UNSUPPORTED_DATA
    err = refused(ing.rules.call_gone, s)
    assert (err.kind, err.reason) == (Rule.MEDIA_AFTER_STOP, "media after the call ended")


def test_shutdown_ends_current_and_waiting_calls_and_refuses_new_starts() -> None:
    ing = Ingest(reconnect_grace_s=5.0)
    live, dropped, old, new = ing.stream(), ing.stream(), ing.stream(), ing.stream()
    ing.start(live, "LIVE")
    ing.start(dropped, "DROP")
    ing.rules.disconnected(dropped, 0.0)
    ing.start(old, "SUP")
    ing.start(new, "SUP")
    in_grace, ended = ing.rules.shutdown([live, old, new])
    assert in_grace == ["DROP"] and ended == [live, new]  # the superseded stream feeds no call
    assert live.state is STOPPED and ing.rules.current == {} and ing.rules.grace == {}
    err = refused(ing.start, ing.stream(), "LATE")
    assert (err.kind, err.close_code) == (Rule.SHUTTING_DOWN, Close.GOING_AWAY)
    # A stream that drops during the shutdown ends its call now, without a grace.
    ing2 = Ingest()
    s = ing2.stream()
    ing2.start(s, "CA1")
    ing2.rules.accepting = False
    d = ing2.rules.disconnected(s, 0.0)
    assert d is not None and (d.grace_s, d.reason) == (0.0, "shutdown") and ing2.rules.grace == {}


def test_rule_values_are_the_bad_input_metric_kinds() -> None:
    """The shell counts ``rtaa_bad_input_total{kind=rule.value}``: the names the docs and dashboards use."""
    assert {r.value for r in Rule} >= {"rate_limit", "binary_frame", "garbage_only", "media_before_start",
                                       "media_after_stop", "audio_rate", "duplicate_start", "wrong_sample_rate",
                                       "call_hijack", "over_principal_capacity", "over_capacity"}


def _in_state(ing: Ingest, state: str) -> Stream:
    s = ing.stream()
    if state == "awaiting_start":
        return s
    ing.start(s, "CA1")
    if state == "superseded":
        ing.start(ing.stream(), "CA1")
    elif state == "stopped":
        ing.rules.stop(s)
    return s


def _outcome(ing: Ingest, s: Stream, event: str) -> str:
    try:
        if event == "start":
            ing.start(s, "CA1")
            return "started"
        if event == "media":
            return ing.rules.media(s, FRAME, 0.1).value
        if event == "stop":
            return "end call" if ing.rules.stop(s) else "ignored"
        return "grace" if ing.rules.disconnected(s, 0.2) else "nothing"
    except StreamRuleError as err:
        return err.kind.value


# The module docstring's table, row by row.
TABLE = {
    "awaiting_start": {"start": "started", "media": "media_before_start", "stop": "ignored", "disconnect": "nothing"},
    "streaming": {"start": "duplicate_start", "media": "forward", "stop": "end call", "disconnect": "grace"},
    "superseded": {"start": "duplicate_start", "media": "discard", "stop": "ignored", "disconnect": "nothing"},
    "stopped": {"start": "duplicate_start", "media": "media_after_stop", "stop": "ignored", "disconnect": "nothing"},
}


@pytest.mark.parametrize("state,event", [(st, ev) for st, row in TABLE.items() for ev in row])
def test_the_state_table(state: str, event: str) -> None:
    ing = Ingest()
    s = _in_state(ing, state)
    assert s.state.value == state
    assert _outcome(ing, s, event) == TABLE[state][event]
