"""The virtual caller over real WebSockets on 127.0.0.1: order, numbering, bytes, DTMF, holds,
auth/headers/custom parameters, server messages, transcripts with latency, closes."""
from __future__ import annotations

import asyncio
import base64

import orjson
import pytest

from rtaa_cli.audio import frame_padding, load_audio
from rtaa_cli.call.asyncio_driver import run_call
from rtaa_cli.call.recorder import CallRecorder
from rtaa_cli.call.script import CallOptions, CallScript, Step
from rtaa_cli.feeds.url import feed_url_for, redact_url
from rtaa_cli.latency import latency_summary
from rtaa_cli.protocols.exotel import Connected, Dtmf, Media, Start, Stop, build_clear, build_mark, build_media
from helpers.recording_server import RecordingServer
from helpers.paths import FIXTURES

CALL_PCM = load_audio(FIXTURES / "call.wav").pcm


def _options(**overrides: object) -> CallOptions:
    base = dict(call_sid="CA-test", stream_sid="ST-test", account_sid="AC-test", from_="+911", to="+912",
                custom_parameters={"agent": "42", "lang": "en"})
    base.update(overrides)
    return CallOptions(**base)  # type: ignore[arg-type]


def test_full_call_arrives_in_order_numbered_and_byte_for_byte() -> None:
    script = CallScript.from_pcm(CALL_PCM, _options())
    with RecordingServer() as server:
        result = asyncio.run(run_call(server.url(), script, speed=0,
                                      headers=[("X-Env", "test"), ("X-Trace", "abc")]))
        (conn,) = server.wait_for_connections(1)

    events = conn.events
    assert isinstance(events[0], Connected) and isinstance(events[1], Start) and isinstance(events[-1], Stop)
    media = conn.of(Media)
    assert len(events) == 2 + len(media) + 1  # nothing else, stop last
    assert [e.sequence_number for e in events[1:]] == list(range(1, len(events)))
    assert [m.chunk for m in media] == list(range(1, len(media) + 1))
    assert [m.timestamp_ms for m in media] == [36 * k for k in range(1, len(media) + 1)]
    assert all(len(m.payload) == 576 for m in media)
    padding = frame_padding(len(CALL_PCM), 8000, 36)
    assert b"".join(m.payload for m in media) == CALL_PCM + bytes(padding)  # nothing lost or duplicated

    start = events[1]
    assert (start.call_sid, start.stream_sid, start.account_sid) == ("CA-test", "ST-test", "AC-test")
    assert (start.from_, start.to, start.sample_rate) == ("+911", "+912", 8000)
    assert start.custom_parameters == {"agent": "42", "lang": "en"}
    assert events[-1] == Stop("ST-test", len(events) - 1, "CA-test", "AC-test", "stopped")
    assert conn.headers["x-env"] == "test" and conn.headers["x-trace"] == "abc"

    assert result.clean and result.close_code == 1000 and result.closed_by == "caller"
    assert result.frames_sent == len(media) == result.frames_total
    assert result.bytes_sent == len(CALL_PCM) + padding and result.padding_bytes == padding
    assert result.audio_ms_sent == pytest.approx((len(CALL_PCM) + padding) / 16)
    assert result.stop_sent and result.errors == []


def test_basic_auth_from_url_and_16k_100ms_frames() -> None:
    pcm16 = load_audio(FIXTURES / "stereo_44k.wav", 16000).pcm
    script = CallScript.from_pcm(pcm16, _options(sample_rate=16000, frame_ms=100))
    with RecordingServer() as server:
        result = asyncio.run(run_call(server.url(userinfo="exotel:s3cr%40t"), script, speed=0))
        (conn,) = server.wait_for_connections(1)
    expected = "Basic " + base64.b64encode(b"exotel:s3cr@t").decode()
    assert conn.headers["authorization"] == expected
    media = conn.of(Media)
    assert all(len(m.payload) == 3200 for m in media)
    assert [m.timestamp_ms for m in media[:3]] == [100, 200, 300]
    assert conn.of(Start)[0].sample_rate == 16000
    assert b"".join(m.payload for m in media).rstrip(b"\x00") == pcm16.rstrip(b"\x00")
    assert result.clean and "s3cr" not in result.url  # password redacted in the report


def test_dtmf_and_hold_placement_and_wall_clock_gap() -> None:
    # 1.8 s of audio (50 frames), a 6 s hold at 0.72 s (frame 20), DTMF 7 at 0.3 s (frame 9)
    # and # past the end; speed 10 keeps it quick: the hold must still show as >= 0.6 s of wall time.
    pcm = CALL_PCM[: 50 * 576]
    speed = 10.0
    script = CallScript.from_pcm(pcm, _options(dtmf=[("7", 0.3), ("#", 99.0)], holds=[(6.0, 0.72)]))
    with RecordingServer() as server:
        result = asyncio.run(run_call(server.url(), script, speed=speed))
        (conn,) = server.wait_for_connections(1)

    kinds = [type(e).__name__ for e in conn.events]
    assert kinds.count("Dtmf") == 2 and kinds.count("Media") == 50
    assert kinds.index("Dtmf") == 2 + 9  # after connected, start and frames 0..8
    assert conn.of(Dtmf)[0].digit == "7" and conn.of(Dtmf)[0].duration_ms == 250
    assert kinds[-2:] == ["Dtmf", "Stop"] and conn.of(Dtmf)[1].digit == "#"

    start_t = conn.times_of(Start)[0]
    media_t = conn.times_of(Media)
    # frame 20 is due (20 * 0.036 + 6) / 10 s after the start; never earlier (loose 10 ms for the loop)
    assert media_t[20] - start_t >= (20 * 0.036 + 6.0) / speed - 0.01
    assert media_t[20] - media_t[19] >= 0.5  # the hold is a real gap (0.6 s scheduled)
    assert result.holds_done == 1 and result.dtmf_sent == 2
    assert result.duration_s >= (50 * 0.036 + 6.0) / speed - 0.01
    assert result.pacing is not None and result.pacing.frames == 50


def test_real_time_pacing_reports_lateness_and_takes_the_audio_duration() -> None:
    pcm = CALL_PCM[: 14 * 576]  # 0.504 s
    script = CallScript.from_pcm(pcm, _options())
    with RecordingServer() as server:
        result = asyncio.run(run_call(server.url(), script, speed=1.0))
        (conn,) = server.wait_for_connections(1)
    media_t = conn.times_of(Media)
    assert media_t[-1] - media_t[0] >= 13 * 0.036 - 0.005  # frames are never early
    assert result.pacing is not None
    assert result.pacing.frames == 14
    assert 0.0 <= result.pacing.late_p50_ms <= result.pacing.late_p99_ms <= result.pacing.late_max_ms
    assert result.pacing.late_max_ms < 1000  # generous: a loaded 2-core box, never a hang


def test_server_closing_1011_mid_stream_stops_the_sender_and_is_reported() -> None:
    # Real time, so the server's close (after 20 frames, ~0.7 s) lands long before the 27 s call ends.
    script = CallScript.from_pcm(CALL_PCM, _options())
    with RecordingServer(close_after_media=20, close_code=1011, close_reason="worker crashed") as server:
        result = asyncio.run(run_call(server.url(), script, speed=1.0))
        (conn,) = server.wait_for_connections(1)
    assert (result.close_code, result.close_reason, result.closed_by) == (1011, "worker crashed", "server")
    assert not result.clean and not result.stop_sent
    assert 20 <= result.frames_sent < result.frames_total
    assert len(conn.of(Media)) == 20 and not conn.of(Stop)


def test_server_messages_are_recorded_and_never_disturb_the_stream() -> None:
    chatter = [build_media("ST-test", 1, 1, 20, b"\x00\x01" * 80), build_mark("ST-test", 2, "greeting"),
               build_clear("ST-test"), "not json", '{"event":"hangup"}']
    script = CallScript.from_pcm(CALL_PCM[: 30 * 576], _options())
    with RecordingServer(to_caller=chatter) as server:
        result = asyncio.run(run_call(server.url(), script, speed=0))
        (conn,) = server.wait_for_connections(1)
    assert result.clean and len(conn.of(Media)) == 30
    assert result.server_message_counts == {"media": 1, "mark": 1, "clear": 1, "invalid": 2}
    kept = result.server_messages
    assert kept[0]["event"] == "media" and kept[0]["bytes"] == 160
    assert kept[1]["event"] == "mark" and kept[1]["name"] == "greeting"
    assert kept[2] == {**kept[2], "event": "clear", "stream_sid": "ST-test"}
    assert "message is not valid JSON" in result.errors[0]
    assert "unknown event 'hangup'" in result.errors[1]


def test_server_closing_normally_after_stop_is_clean() -> None:
    # Like Exotel, the caller closes right after stop, so either side's 1000 may be first.
    script = CallScript.from_pcm(CALL_PCM[: 10 * 576], _options())
    with RecordingServer(close_on_stop=True) as server:
        result = asyncio.run(run_call(server.url(), script, speed=0))
        (conn,) = server.wait_for_connections(1)
    assert result.clean and result.close_code == 1000 and conn.of(Stop)
    assert (result.closed_by, result.close_reason) in {("server", "bye"), ("caller", "bye"), ("caller", "stream stopped")}


def test_transcripts_feed_latency_and_call_ended() -> None:
    script = CallScript.from_pcm(CALL_PCM[: 60 * 576], _options())
    with RecordingServer(transcript_every=10, other_interaction=True) as server:
        result = asyncio.run(run_call(server.url(), script, speed=4.0,
                                      transcripts_url=server.url("/v1/transcripts"), wait_final_s=5))
        server.wait_for_connections(1)
    # 6 published during the stream + 1 on stop; the other interaction's copies are ignored
    assert [t.seq for t in result.transcripts] == [1, 2, 3, 4, 5, 6, 7]
    assert all("not mine" not in t.text for t in result.transcripts)
    assert [t.is_final for t in result.transcripts] == [False, True, False, True, False, True, True]
    assert result.transcripts[-1].from_finalize and result.call_ended is not None
    assert result.transcripts[0].audio_end_ms == pytest.approx(360.0)
    for t in result.transcripts:  # published as soon as the frame arrived: small, never negative
        assert t.latency_ms is not None and 0 <= t.latency_ms < 2000, t
    summary = latency_summary(result.latency)
    assert summary["final"]["count"] == 4 and summary["first_partial"]["count"] == 3
    assert result.errors == [] and result.clean


def test_per_call_feed_url_and_missing_call_ended_is_bounded() -> None:
    script = CallScript.from_pcm(CALL_PCM[: 20 * 576], _options(call_sid="CA/odd id"))
    with RecordingServer(transcript_every=10, send_call_ended=False) as server:
        result = asyncio.run(run_call(server.url(), script, speed=0,
                                      transcripts_url=f"ws://127.0.0.1:{server.port}", wait_final_s=0.3))
        server.wait_for_connections(1)
    assert result.feed_url.endswith("/v1/transcripts/CA%2Fodd%20id")
    assert len(result.transcripts) == 3  # frames 10 and 20, then the final on stop
    assert result.call_ended is None
    assert result.errors == ["no call_ended on the transcript feed within 0.3 s of stop"]
    assert result.clean  # the Exotel side still closed normally


def test_connection_refused_is_reported_not_raised() -> None:
    with RecordingServer() as server:
        port = server.port
    script = CallScript.from_pcm(CALL_PCM[:576], _options())
    result = asyncio.run(run_call(f"ws://127.0.0.1:{port}/x", script, speed=0, open_timeout_s=5))
    assert not result.connected and not result.clean
    assert result.errors == [f"ws://127.0.0.1:{port}/x: connection refused"]


# ------------------------------------------------------------------------------- sans-I/O parts


def test_call_script_offsets_holds_dtmf_and_stop() -> None:
    frames = [bytes(576)] * 5
    script = CallScript(frames, _options(dtmf=[("1", 0.0), ("2", 0.1)], holds=[(2.0, 0.072), (1.0, 10.0)]))
    steps = [(s.kind, round(s.at_s, 6)) for s in script]
    assert steps == [("connected", 0.0), ("start", 0.0), ("dtmf", 0.0), ("media", 0.0), ("media", 0.036),
                     ("hold", 0.072), ("media", 2.072), ("dtmf", 2.108), ("media", 2.108), ("media", 2.144),
                     ("hold", 2.18), ("stop", 3.18)]
    assert script.duration_s == pytest.approx(3.18)
    media = [s for s in script if s.kind == "media"]
    assert [s.audio_end_ms for s in media] == [36.0, 72.0, 108.0, 144.0, 180.0]


def test_call_script_exact_frame_boundary_is_not_pushed_by_float_noise() -> None:
    script = CallScript([bytes(576)] * 10, _options(dtmf=[("5", 0.108)]))
    kinds = [s.kind for s in script]
    assert kinds.index("dtmf") == 2 + 3  # before frame 3, which starts at exactly 0.108 s


def test_recorder_latency_uses_the_send_log() -> None:
    script = CallScript([bytes(576)] * 3, _options())
    recorder = CallRecorder(script)
    for step, wall in zip([s for s in script if s.kind == "media"], [100.0, 100.036, 100.072]):
        recorder.sent(step, wall)
    t = recorder.feed_message(orjson.dumps({"type": "transcript", "interaction_id": "CA-test", "seq": 1,
                                            "is_final": True, "text": "hi", "audio_end_ms": 50.0}), 100.5)
    assert t is not None and t.latency_ms == pytest.approx(464.0)  # 50 ms is in frame 2, sent at 100.036
    assert recorder.feed_message(b'{"type":"transcript","interaction_id":"other"}', 101) is None
    assert recorder.feed_message(b"garbage", 101) is None and recorder.result.feed_unrecognised == 1
    assert recorder.result.feed_messages == 3
    recorder.finish()
    assert recorder.result.errors == ["transcript feed: 1 of 3 messages not understood (1x: not JSON)"]


def test_feed_url_and_redaction_helpers() -> None:
    assert feed_url_for("ws://h:1", "CA1") == "ws://h:1/v1/transcripts/CA1"
    assert feed_url_for("ws://h:1/", "CA1") == "ws://h:1/v1/transcripts/CA1"
    # one rule for replay, soak and smoke: a base and rtaa serve's feed base mean the per-call feed
    assert feed_url_for("ws://h:1/v1/transcripts", "CA1") == "ws://h:1/v1/transcripts/CA1"
    assert feed_url_for("ws://h:1/v1/transcripts/", "CA1") == "ws://h:1/v1/transcripts/CA1"
    assert feed_url_for("ws://h:1/feed", "CA1") == "ws://h:1/feed"  # a foreign feed: as is, filtered by call id
    assert feed_url_for("ws://h/feeds/{call_sid}?x=1", "CA 1") == "ws://h/feeds/CA%201?x=1"
    assert redact_url("ws://u:p@h:9/x") == "ws://u:***@h:9/x"
    assert redact_url("ws://h/x") == "ws://h/x"


def test_latency_summary_first_partials_and_finals() -> None:
    from rtaa_cli.latency import LatencySamples

    samples = LatencySamples()
    for final, text, latency in [(False, "a", 100), (False, "a b", 300), (True, "a b", 500), (False, "", 10),
                                 (False, "c", 50), (True, "c", 700), (True, "", 5000)]:
        samples.add(final, text, 1000.0, latency, 0.0)
    summary = latency_summary(samples)
    assert summary["first_partial"] == {"count": 2, "p50_ms": 50.0, "p95_ms": 100.0, "p99_ms": 100.0, "max_ms": 100.0}
    # the empty final (5000 ms) is not a final result: it must not reach the percentiles
    assert summary["final"]["count"] == 2 and summary["final"]["max_ms"] == 700.0
    assert samples.results == 7 and samples.finals == 2


def test_step_is_small() -> None:
    assert not hasattr(Step(0.0, "media", ""), "__dict__")  # slots: one per frame in flight
