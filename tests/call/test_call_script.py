"""The caller core without sockets (rtaa_cli/call/): the script's plan and messages, the soak's
behaviours as scripts, bad inputs, and the recorder's one result -- as replay reports it and as the
soak's record."""
from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass

import orjson
import pytest

from rtaa_cli import textmark
from rtaa_cli.call.asyncio_driver import run_call
from rtaa_cli.call.gevent_driver import CallSpec
from rtaa_cli.call.recorder import CallRecorder, Close, close_of, feed_tap
from rtaa_cli.call.script import BAD_INPUT_KINDS, BadInputScript, CallOptions, CallScript, Segment
from rtaa_cli.pacing import Pacer
from rtaa_cli.protocols.exotel import (ExotelProtocolError, Media, Start, Stop, StreamEncoder, parse_event)
from rtaa_cli.soak.scenario import BAD_INPUTS
from rtaa_cli.soak.stats import CallRecord
from rtaa_cli.watermark import Marker

FRAME = 576  # 36 ms at 8 kHz
FRAMES = [bytes([k % 251, k // 251]) * (FRAME // 2) for k in range(100)]


def _options(**kw: object) -> CallOptions:
    return CallOptions(**{"call_sid": "CA1", "stream_sid": "ST1", **kw})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- script


def test_the_plan_tiles_the_frames_with_events_in_order() -> None:
    # same frame (10, at 0.36 s): hold, then the reconnect, then DTMF; a second stream at frame 50
    script = CallScript(FRAMES, _options(dtmf=[("5", 0.36)], holds=[(2.0, 0.36)], reconnects=[(0.5, 0.35)],
                                         second_streams=[1.8]))
    assert script.segments == [
        Segment("media", 0, 10), Segment("hold", 10, pause_s=2.0), Segment("reconnect", 10, pause_s=0.5),
        Segment("dtmf", 10, digit="5"), Segment("media", 10, 50), Segment("second_stream", 50),
        Segment("media", 50, 100)]
    assert script.streams == 3
    media = [s for s in script.segments if s.kind == "media"]
    assert [k for s in media for k in range(s.start, s.end)] == list(range(100))  # every frame once, in order


def test_a_script_that_switches_streams_has_no_one_stream_message_view() -> None:
    script = CallScript(FRAMES, _options(reconnects=[(0.5, 1.0)]))
    with pytest.raises(ValueError, match="gevent_driver"):
        list(script)
    with pytest.raises(ValueError, match="one stream"):  # before any socket is opened
        asyncio.run(run_call("ws://127.0.0.1:9/never", script))


@pytest.mark.parametrize("watermark", [False, True])
def test_media_messages_are_the_codecs_bytes_of_the_calls_audio(watermark: bool) -> None:
    script = CallScript(FRAMES[:20], _options(watermark=watermark))
    pcm = Marker("CA1", sample_rate=8000).mark_frames(FRAMES[:20]) if watermark else FRAMES[:20]
    enc = StreamEncoder("ST1", "CA1")
    enc.sequence_number = 1  # after start
    assert [s.text for s in script if s.kind == "media"] == [enc.media(p) for p in pcm]
    # the soak's payloads: the same bytes; unmarked ones encoded once per process for every call
    shared = script.payloads(shared=True)
    assert [base64.b64decode(shared[k]) for k in range(20)] == list(pcm)
    again = CallScript(FRAMES[:20], _options(call_sid="CA2", watermark=watermark)).payloads(shared=True)
    assert (again is shared) is not watermark


def test_soak_behaviours_become_scripts_at_the_nearest_frame() -> None:
    spec = CallSpec(url="ws://x", call_sid="CAs", frames=FRAMES, kind="hold", hold_at_s=3.0, hold_s=15.0)
    script = spec.script()
    assert isinstance(script, CallScript) and script.kind == "hold"
    assert [s for s in script.segments if s.kind == "hold"] == [Segment("hold", 83, pause_s=15.0)]  # round(3/0.036)
    first, *_, stop = list(script)[1:]
    start = parse_event(first.text)
    assert isinstance(start, Start) and start.custom_parameters == {"rtaa": "soak"} and start.account_sid == "AC_rtaa_soak"
    stop_event = parse_event(stop.text)
    assert isinstance(stop_event, Stop) and stop_event.reason == "callended"
    late = CallSpec(url="ws://x", call_sid="CAs", frames=FRAMES[:10], kind="hold", hold_at_s=3.0).script()
    assert isinstance(late, CallScript) and [s.kind for s in late.segments] == ["media"]  # a hold past the audio: none
    for kind, at_s, k in (("disconnect", 0.0, 1), ("disconnect", 99.0, 99), ("second_stream", 1.0, 28)):
        switched = CallSpec(url="ws://x", call_sid="CAs", frames=FRAMES, kind=kind, disconnect_at_s=at_s,
                            second_stream_at_s=at_s, reconnect_after_s=0.5).script()
        assert isinstance(switched, CallScript) and switched.streams == 2
        (switch,) = [s for s in switched.segments if s.kind in ("reconnect", "second_stream")]
        assert (switch.kind, switch.start) == ("reconnect" if kind == "disconnect" else kind, k)


@pytest.mark.parametrize("what", BAD_INPUT_KINDS)
def test_bad_input_scripts_send_good_frames_then_exactly_their_bad_input(what: str) -> None:
    assert set(BAD_INPUT_KINDS) == set(BAD_INPUTS)  # every scenario bad input has a script, and no more
    spec = CallSpec(url="ws://x", call_sid="CAb", frames=FRAMES, kind="bad:" + what, oversize_bytes=3000)
    script = spec.script()
    assert isinstance(script, BadInputScript) and script.expected_closes == BAD_INPUTS[what]
    texts = list(script.messages(script.encoder()))
    events: list[object] = []
    for text in texts:
        try:
            events.append(parse_event(text))
        except ExotelProtocolError as exc:
            events.append(exc.kind.value)
    names = [type(e).__name__ if not isinstance(e, str) else e for e in events]
    if what == "media_before_start":
        assert names == ["Connected", "Media"]
    elif what == "wrong_sample_rate":
        assert names == ["Connected", "Start", "Media"] and events[1].sample_rate == 11025  # type: ignore[attr-defined]
    elif what == "frames_after_stop":
        assert names == ["Connected", "Start"] + ["Media"] * 5 + ["Stop"] + ["Media"] * 3
    else:
        assert names[:7] == ["Connected", "Start"] + ["Media"] * 5 and len(names) == 8
        last = {"malformed_json": "malformed_json", "bad_base64": "bad_base64", "oversize": "Media"}[what]
        assert names[7] == last
        if what == "oversize":
            assert len(orjson.loads(texts[-1])["media"]["payload"]) == 3000 * 3 // 4 * 4 // 3
    # the good frames are the call's raw audio (a bad-input call is never marked)
    assert [e.payload for e in events if isinstance(e, Media)][:1] == [FRAMES[0]]


# -------------------------------------------------------------------------------------- recorder


def test_feed_url_rule_and_tap_choice() -> None:
    recorder = CallRecorder(CallScript(FRAMES, _options()), "ws://u:pw@h/x", "ws://u:pw@h:1")
    assert recorder.feed_url == "ws://u:pw@h:1/v1/transcripts/CA1"
    assert (recorder.result.url, recorder.result.feed_url) == ("ws://u:***@h/x", "ws://u:***@h:1/v1/transcripts/CA1")
    assert CallRecorder(CallScript(FRAMES, _options())).feed_url is None
    assert [feed_tap(u) for u in ("redis://h/0?stream=k", "webhook://h:1/p", "https://h/sse", "ws://h")] == \
        ["redis", "webhook", "sse", "ws"]


def test_latency_follows_the_calls_audio_across_streams() -> None:
    recorder = CallRecorder(CallScript(FRAMES[:4], _options(second_streams=[0.072])))
    recorder.stream_opened()
    for k, wall in enumerate((10.0, 10.036)):
        recorder.media_sent(FRAME, wall)
    recorder.stream_opened()  # the second stream carries frames 2 and 3 (audio 72-144 ms)
    recorder.media_sent(FRAME, 10.5)
    recorder.media_sent(FRAME, 10.536)
    t = recorder.feed_message(orjson.dumps({"type": "transcript", "interaction_id": "CA1", "is_final": True,
                                            "text": "hi", "audio_end_ms": 100.0}), 11.0)
    assert t is not None and t.latency_ms == pytest.approx(500.0)  # 100 ms is in frame 2, sent at 10.5
    r = recorder.result
    assert (r.streams, r.frames_sent, r.bytes_sent, r.audio_ms_sent) == (2, 4, 4 * FRAME, 144.0)


@dataclass
class _Frame:
    code: int
    reason: str


@dataclass
class _Protocol:
    close_rcvd: _Frame | None
    close_rcvd_then_sent: bool | None
    close_code: int | None


def test_close_of_a_connection() -> None:
    assert close_of(_Protocol(_Frame(1011, "boom"), True, 1011)) == Close(1011, "boom", "server")
    assert close_of(_Protocol(_Frame(1000, "bye"), False, 1000)) == Close(1000, "bye", "caller")
    assert close_of(_Protocol(None, None, 1006)) == Close(1006)  # TCP dropped without a close frame


def _soak_result(frames_sent: int, kind: str = "normal", hangup: bool = False) -> CallRecorder:
    spec = CallSpec(url="ws://x", call_sid="CAr", frames=FRAMES[:10], kind=kind)
    recorder = CallRecorder(spec.script(), spec.url, keep_transcripts=False)
    recorder.started(100.0, 5.0)
    recorder.stream_opened()
    pacer = Pacer(1.0, clock=lambda: 0.0)
    pacer.start(0.0)
    for k in range(frames_sent):
        pacer.sent(k * 0.036, k * 0.036 + 0.002)  # 2 ms late each
        recorder.media_sent(FRAME, 100.0 + k * 0.036)
    recorder.paused("hold", 100.2, 101.2)
    if hangup:
        recorder.server_hung_up()
    recorder.stream_closed(Close(1000 if hangup else 1011, "bye"))
    recorder.feed_message(orjson.dumps({"type": "transcript", "interaction_id": "CAr", "is_final": True,
                                        "text": "x " + " ".join(textmark.encode(3, 36.0, True)),
                                        "audio_end_ms": 36.0}), 100.5)
    recorder.fail("closed by server mid-call: 1011 bye")
    recorder.fail("a later reason does not replace the first")
    recorder.finish(109.0, 14.0, pacer)
    return recorder


def test_the_soak_record_is_made_of_the_one_result() -> None:
    r = _soak_result(10).result
    rec = CallRecord.from_dict(orjson.loads(orjson.dumps(CallRecord.from_result(r).to_dict())))  # worker -> master
    assert (rec.call_sid, rec.kind, rec.started_at, rec.ended_at) == ("CAr", "normal", 100.0, 109.0)
    assert rec.streams == 1 and (rec.closes, rec.close_reasons) == ([1011], ["bye"])
    assert rec.failure == "closed by server mid-call: 1011 bye"
    assert (rec.frames_sent, rec.audio_bytes_sent, rec.audio_ms_sent) == (10, 10 * FRAME, 360.0)
    assert rec.lateness.count == 10 and rec.drift_ms == pytest.approx(2.0)
    assert rec.media_gaps == [(100.2, 101.2)] and rec.transcripts_observed is False
    assert (rec.results, rec.finals, rec.final_audio_end_ms, rec.feed_messages) == (1, 1, 36.0, 1)
    assert rec.final == [(100.5, pytest.approx(500.0))]  # frame 0 (0-36 ms) left at 100.0
    assert (rec.marked_results, rec.mark_connections) == (1, {"3": 1})  # the emulator's text mark, by connection
    assert r.transcripts == []  # the soak keeps counts and samples, not every transcript


def test_a_call_cut_short_reports_its_audio_in_bytes_only() -> None:
    assert CallRecord.from_result(_soak_result(4).result).audio_ms_sent == 0.0
    assert CallRecord.from_result(_soak_result(4).result).audio_bytes_sent == 4 * FRAME
    assert CallRecord.from_result(_soak_result(4, hangup=True).result).audio_ms_sent == 144.0  # the bot hung up


def test_a_bad_input_record_carries_its_acceptable_closes() -> None:
    spec = CallSpec(url="ws://x", call_sid="CAb", frames=FRAMES, kind="bad:frames_after_stop")
    recorder = CallRecorder(spec.script())
    recorder.stream_opened()
    recorder.stream_closed(Close(None, "server did not close within 5 s"))
    rec = CallRecord.from_result(recorder.result)
    assert rec.is_bad_input and rec.expected_closes == [1000, 1001, 1008, None] and rec.closes == [None]
    assert (rec.frames_sent, rec.audio_ms_sent) == (0, 0.0)


def test_replays_json_keeps_its_keys() -> None:
    """docs/replay.md's document: the soak's fields stay in the soak's record."""
    recorder = CallRecorder(CallScript(FRAMES[:3], _options()), "ws://h/x")
    recorder.stream_opened()
    for step in CallScript(FRAMES[:3], _options()):
        recorder.sent(step, 1.0)
    recorder.stream_closed(Close(1000, "stream stopped", "caller"))
    recorder.finish(2.0, 1.0, Pacer(0))
    data = recorder.result.to_dict()
    assert list(data) == [
        "call_sid", "stream_sid", "url", "connected", "frames_total", "audio_ms_total", "frames_sent", "audio_ms_sent",
        "bytes_sent", "padding_bytes", "messages_sent", "dtmf_sent", "holds_done", "stop_sent", "duration_s", "pacing",
        "server_message_counts", "server_messages", "transcripts", "transcripts_dropped", "feed_url", "feed_messages",
        "feed_unrecognised", "marked_results", "repeated_finals", "gaps", "gap_ms", "latency", "call_ended", "errors",
        "close", "clean", "finals"]
    assert data["close"] == {"code": 1000, "reason": "stream stopped", "by": "caller"} and data["clean"] is True
    assert (data["messages_sent"], data["frames_sent"], data["stop_sent"]) == (6, 3, True)
