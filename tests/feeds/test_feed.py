"""The one caller core's feed side, sans-I/O: the transcript-feed parser (rtaa's schema, Deepgram's,
field mappings), the feed-URL rule, the shared recorder and the latency rules -- and that replay's
and soak's code paths give identical figures for the same recorded stream."""
from __future__ import annotations

import orjson
import pytest

from rtaa_cli.call.recorder import CallRecorder
from rtaa_cli.call.script import CallOptions, CallScript
from rtaa_cli.commands.replay import transcripts_line
from rtaa_cli.feeds.parse import FeedError, FieldMapping, parse_message
from rtaa_cli.feeds.recorder import FeedRecorder
from rtaa_cli.latency import SendLog, latency_summary
from rtaa_cli.soak.stats import CallRecord, SoakStats

T0 = 1000.0
FRAME_MS = 100.0  # 1600-byte frames at 8 kHz: 100 ms of audio each, sent every 100 ms from T0


def _send_log(frames: int) -> SendLog:
    log = SendLog()
    for k in range(1, frames + 1):
        log.record(k * FRAME_MS, T0 + k * FRAME_MS / 1000.0)  # frame k's end sent at T0 + k*0.1 s
    return log


def _msg(final: bool, text: str, end: float | None, call: str = "CA1") -> bytes:
    m = {"type": "transcript", "interaction_id": call, "is_final": final, "text": text}
    if end is not None:
        m["audio_end_ms"] = end
    return orjson.dumps(m)


# A recorded stream: (message, arrival wall time). Frame k (end k*100 ms) was sent at T0 + k/10.
STREAM: list[tuple[bytes, float]] = [
    (_msg(False, "", 500), 1000.9),  # empty interim in silence: not a first partial
    (_msg(False, "hello", 1000), 1001.25),  # first partial of utterance 1: 250 ms
    (_msg(False, "hello there", 1500), 1001.9),  # same utterance: not counted
    (_msg(True, "hello there", 1800), 1002.1),  # final: 300 ms
    (_msg(False, "next", 2500), 1002.6),  # utterance 2: 100 ms
    (_msg(True, "", 3000), 1008.05),  # empty endpointing final, 5 s late: coverage only
    (_msg(True, "x", 3000, call="OTHER"), 1003.1),  # another call's: ignored
    (b'{"seq": 1, "type": "final", "text": "hi", "confidence": 0.9}', 1003.15),  # foreign: not understood
    (_msg(True, "next one", 2900), 1003.2),  # final: 300 ms
    (orjson.dumps({"type": "call_ended", "interaction_id": "CA1"}), 1003.3),
]


def test_recorder_first_partial_per_utterance_finals_and_coverage() -> None:
    rec = FeedRecorder("CA1", _send_log(30))
    for raw, at in STREAM:
        rec.message(raw, at)
    s = rec.samples
    assert [round(ms, 6) for _, ms in s.first_partial] == [250.0, 100.0]
    assert [round(ms, 6) for _, ms in s.final] == [300.0, 300.0]
    assert s.final_audio_end_ms == 3000 and s.results == 7 and s.finals == 2 and rec.ended
    assert (rec.feed_messages, rec.feed_unrecognised, rec.other_calls) == (10, 1, 1)
    rec.message(_msg(True, "late", 9999), 1004.0)  # covers audio never sent: an error, not a sample
    assert rec.errors == ["result covers audio not sent yet (audio_end_ms=9999)"] and len(s.final) == 2
    assert rec.problems()[1].startswith("transcript feed: 1 of 11 messages not understood (1x: unknown schema")


def _replay_path() -> CallRecorder:
    script = CallScript([bytes(1600)] * 30, CallOptions(call_sid="CA1", stream_sid="ST1"))
    recorder = CallRecorder(script)
    media = [s for s in script if s.kind == "media"]
    for k, step in enumerate(media, start=1):
        assert step.audio_end_ms == k * FRAME_MS
        recorder.sent(step, T0 + k * FRAME_MS / 1000.0)
    for raw, at in STREAM:
        recorder.feed_message(raw, at)
    recorder.finish()
    return recorder


def _soak_path(stream: list[tuple[bytes, float]] = STREAM) -> SoakStats:
    """The soak's way: the gevent driver's recorder (no transcripts kept) and the record made of its result."""
    script = CallScript([bytes(1600)] * 30, CallOptions(call_sid="CA1", stream_sid="ST1"))
    recorder = CallRecorder(script, keep_transcripts=False)
    for k in range(1, 31):
        recorder.media_sent(1600, T0 + k * FRAME_MS / 1000.0)
    for raw, at in stream:
        recorder.feed_message(raw, at)
    recorder.finish()
    rec = CallRecord.from_result(recorder.result)
    assert (rec.audio_bytes_sent, rec.audio_ms_sent, rec.frames_sent) == (30 * 1600, 3000.0, 30)
    stats = SoakStats(t0=T0, duration_s=10)
    stats.add(CallRecord.from_dict(orjson.loads(orjson.dumps(rec.to_dict()))))  # as sent worker -> master
    return stats


def test_same_stream_same_latency_in_replay_and_soak() -> None:
    replay = latency_summary(_replay_path().result.latency)
    soak = _soak_path()
    for kind, hist in (("final", soak.final), ("first_partial", soak.first_partial)):
        assert replay[kind]["count"] == hist.n
        for q in (50, 95, 99):
            assert replay[kind][f"p{q}_ms"] == hist.percentile(q), (kind, q)
        assert replay[kind]["max_ms"] == hist.summary()["max"]
    # the 5 s empty final reaches neither path (it did reach replay's p95 before: 5350 ms)
    assert replay["final"]["p95_ms"] == 300.0 and replay["first_partial"]["max_ms"] == 250.0


def test_replay_summary_counts_finals_without_offsets() -> None:
    script = CallScript([bytes(1600)] * 3, CallOptions(call_sid="CA1", stream_sid="ST1"))
    recorder = CallRecorder(script)
    for k in range(23):
        recorder.feed_message(_msg(True, f"final {k}", None), T0 + k)
    recorder.finish()
    result = recorder.result
    assert len(result.finals()) == 23
    assert transcripts_line(result) == "23 results (23 final), final latency not measured (the feed carries no audio offsets)"
    assert any("latency not measured for 23 results" in e for e in result.errors)


def test_parser_schemas_and_reasons() -> None:
    e = parse_message(_msg(True, "hi", 120.0))
    assert (e.kind, e.call_id, e.is_final, e.text, e.audio_end_ms) == ("transcript", "CA1", True, "hi", 120.0)
    dg = parse_message({"type": "Results", "is_final": True, "start": 1.5, "duration": 0.5,
                        "channel": {"alternatives": [{"transcript": "deepgram words"}]}})
    assert (dg.call_id, dg.text, dg.audio_start_ms, dg.audio_end_ms) == (None, "deepgram words", 1500.0, 2000.0)
    for raw, reason in ((b"nope", "not JSON"), (b"[1]", "a JSON list, not an object"),
                        (b'{"seq": 1, "type": "final"}', "unknown schema (type 'final'; keys: seq, type)")):
        with pytest.raises(FeedError) as err:
            parse_message(raw)
        assert err.value.reason.startswith(reason)


def test_field_mapping() -> None:
    m = FieldMapping.parse("text=payload.words, is_final=type==final, call_id=meta.call, audio_end_s=payload.end,"
                           " seq=seq, ended=type==eos")
    msg = {"seq": 3, "type": "final", "meta": {"call": "CA9"}, "payload": {"words": "ok", "end": 1.25}}
    e = parse_message(msg, m)
    assert (e.kind, e.call_id, e.text, e.is_final, e.audio_end_ms, e.seq) == ("transcript", "CA9", "ok", True, 1250.0, 3)
    assert parse_message({**msg, "type": "partial"}, m).is_final is False
    assert parse_message({"type": "eos", "meta": {"call": "CA9"}}, m).kind == "call_ended"
    with pytest.raises(FeedError, match=r"text=payload.words: missing"):
        parse_message({"type": "final"}, m)
    assert FieldMapping.parse({"text": "alternatives.0.text"}).event(
        {"alternatives": [{"text": "first"}]}).text == "first"
    for bad, why in (("text", "expected FIELD=PATH"), ("is_final=x", "text=PATH is required"),
                     ("text=a..b", "not a dotted path"), ("text=a,colour=b", "unknown field(s) colour")):
        with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")):
            FieldMapping.parse(bad)


def test_gap_messages_are_counted_in_replay_soak_and_smoke_never_as_transcripts() -> None:
    """Issue 10 item 11: rtaa serve's `gap` message (docs/transcript-feed.md) is understood, counted with its
    length, and is neither a result nor 'not understood', on replay's and soak's paths alike."""
    gap = {"type": "gap", "interaction_id": "CA1", "stream_sid": "ST1", "cause": "replay_trim",
           "audio_start_ms": 1200.0, "audio_end_ms": 2224.0, "lost_ms": 1024.0, "at": T0}
    e = parse_message(orjson.dumps(gap))
    assert (e.kind, e.call_id, e.audio_start_ms, e.audio_end_ms) == ("gap", "CA1", 1200.0, 2224.0)
    other_call = dict(gap, interaction_id="CA2")
    stream = [(_msg(True, "before", 1200.0), T0 + 1.3), (orjson.dumps(gap), T0 + 2.5),
              (orjson.dumps(other_call), T0 + 2.5), (_msg(True, "after", 3000.0), T0 + 3.1)]
    replay = _replay_path_of(stream)
    r = replay.result
    assert (r.gaps, r.gap_ms, r.feed_unrecognised, len(r.finals())) == (1, 1024.0, 0, 2)
    assert "the pipeline reported 1 gap(s), 1024 ms of audio not transcribed" in transcripts_line(r)
    stats = _soak_path(stream)
    assert (stats.gaps, stats.gap_ms, stats.gap_calls, stats.feed_unrecognised) == (1, 1024.0, 1, 0)


def _replay_path_of(stream: list[tuple[bytes, float]]) -> CallRecorder:
    script = CallScript([bytes(1600)] * 30, CallOptions(call_sid="CA1", stream_sid="ST1"))
    recorder = CallRecorder(script)
    for k, step in enumerate((s for s in script if s.kind == "media"), start=1):
        recorder.sent(step, T0 + k * FRAME_MS / 1000.0)
    for raw, at in stream:
        recorder.feed_message(raw, at)
    recorder.finish()
    return recorder
