"""The wire-protocol modules' builders and parsers agree: what the emulator builds, the provider reads;
what the pipeline builds, every feed reader reads; the control messages the SDK writes, the emulator reads."""
from __future__ import annotations

import json

import orjson
import pytest
from deepgram.listen.v1.types.listen_v1close_stream import ListenV1CloseStream
from deepgram.listen.v1.types.listen_v1finalize import ListenV1Finalize
from deepgram.listen.v1.types.listen_v1keep_alive import ListenV1KeepAlive

from rtaa_cli.feeds.parse import parse_message
from rtaa_cli.protocols import deepgram as dg
from rtaa_cli.protocols import feed


def test_results_built_by_the_emulator_side_parse_back() -> None:
    words = [dg.build_word("hello", 1.0, 1.4, 0.9, punctuated_word="Hello"),
             dg.build_word("world", 1.5, 2.0, 0.7, speaker=1, language="en")]
    data = dg.build_results(channel=0, channels=1, start=1.0, duration=1.25, is_final=True, speech_final=True,
                            from_finalize=False, alternatives=[dg.build_alternative("Hello world", 0.8, words)],
                            metadata={"request_id": "r"})
    msg = orjson.loads(data)
    assert msg["type"] == "Results" and msg["channel_index"] == [0, 1]
    r = dg.parse_results(msg)
    assert r is not None
    assert (r.is_final, r.speech_final, r.from_finalize, r.text) == (True, True, False, "Hello world")
    assert (r.start, r.end, r.confidence) == (1.0, 2.25, 0.8)
    assert [(w.word, w.start, w.end, w.confidence) for w in r.words] == [("Hello", 1.0, 1.4, 0.9),
                                                                         ("world", 1.5, 2.0, 0.7)]
    # the same message forwarded as is on a feed reads as a transcript in ms
    ev = parse_message(data)
    assert (ev.kind, ev.text, ev.is_final, ev.audio_start_ms, ev.audio_end_ms) == (
        "transcript", "Hello world", True, 1000.0, 2250.0)


@pytest.mark.parametrize("msg", [
    {"type": "Results"},  # no channel
    {"type": "Results", "channel": {"alternatives": []}},
    {"type": "Results", "channel": {"alternatives": [{"words": [{"start": 1}]}]}},  # a word without text
    {"type": "Results", "channel": {"alternatives": ["x"]}},
])
def test_results_without_a_usable_alternative_are_none(msg: dict) -> None:
    assert dg.parse_results(msg) is None


def test_server_messages_carry_their_type() -> None:
    assert orjson.loads(dg.build_metadata(request_id="r", sha256="s", created="c", duration=0.0, channels=0)) == {
        "type": "Metadata", "transaction_key": "deprecated", "request_id": "r", "sha256": "s", "created": "c",
        "duration": 0.0, "channels": 0}
    meta = orjson.loads(dg.build_metadata(request_id="r", sha256="s", created="c", duration=1.0, channels=1,
                                          model_info={"u": {"name": "n", "version": "v", "arch": "a"}}))
    assert meta["models"] == ["u"] and meta["model_info"]["u"]["arch"] == "a"
    assert orjson.loads(dg.build_utterance_end(0, 1, 2.5)) == {"type": "UtteranceEnd", "channel": [0, 1],
                                                               "last_word_end": 2.5}
    assert orjson.loads(dg.build_speech_started(1, 2, 0.12345)) == {"type": "SpeechStarted", "channel": [1, 2],
                                                                    "timestamp": 0.123}
    assert orjson.loads(dg.build_schema_error("why", "orig"))["variant"] == "SchemaError"
    assert orjson.loads(dg.build_configure_success("r", None)) == {"type": "ConfigureSuccess", "request_id": "r"}
    assert orjson.loads(dg.build_configure_failure("r", "C", "d"))["type"] == "ConfigureFailure"
    # a feed that forwards Deepgram's stream as is: the messages without a transcript are understood, not results
    for data in (dg.build_utterance_end(0, 1, 0.0), dg.build_speech_started(0, 1, 0.0),
                 dg.build_metadata(request_id="r", sha256="s", created="c", duration=0.0, channels=0)):
        assert parse_message(data).kind == feed.OTHER


@pytest.mark.parametrize("kind, model", [(dg.ControlType.KEEP_ALIVE, ListenV1KeepAlive),
                                         (dg.ControlType.FINALIZE, ListenV1Finalize),
                                         (dg.ControlType.CLOSE_STREAM, ListenV1CloseStream)])
def test_control_messages_as_the_sdk_writes_them_parse(kind: dg.ControlType, model: type) -> None:
    sdk_text = json.dumps(model(type=kind.value).dict())  # what the SDK's send_keep_alive() etc. write
    assert dg.parse_control(sdk_text)[0] is kind
    assert dg.parse_control(dg.build_control(kind))[0] is kind
    assert dg.is_close_stream(sdk_text) is (kind is dg.ControlType.CLOSE_STREAM)


def test_control_parse_of_garbage() -> None:
    assert dg.parse_control("not json") == (None, None)
    assert dg.parse_control("[1]") == (None, [1])
    assert dg.parse_control('{"type": "Nope"}') == (None, {"type": "Nope"})
    assert dg.parse_control('{"type": 3}')[0] is None
    assert dg.is_close_stream(b"") and not dg.is_close_stream(b"\x00\x01")
    assert not dg.is_close_stream('{"note": "CloseStream"}')  # names it, is not it


def test_feed_messages_built_by_the_pipeline_parse_back() -> None:
    t = feed.transcript_message(interaction_id="CA1", stream_sid="S1", seq=3, is_final=True, speech_final=False,
                                from_finalize=True, text="hi", confidence=0.5, words=[feed.word("hi", 1.0, 1.2, 0.5)],
                                audio_start_ms=1000.0, audio_end_ms=1200.0, provider="fake", provider_connection=2,
                                received_at=5.0)
    wire = orjson.dumps(t)
    ev = parse_message(wire)
    assert ev == feed.parse(orjson.loads(wire))
    assert (ev.kind, ev.call_id, ev.seq, ev.text, ev.is_final, ev.from_finalize, ev.provider_connection) == (
        "transcript", "CA1", 3, "hi", True, True, 2)
    assert (ev.audio_start_ms, ev.audio_end_ms) == (1000.0, 1200.0)
    gap = parse_message(orjson.dumps(feed.gap_message("CA1", "S1", feed.GapCause.REPLAY_TRIM, 10.0, 30.0, 20.0, 1.0)))
    assert (gap.kind, gap.audio_start_ms, gap.audio_end_ms, gap.raw["cause"], gap.raw["lost_ms"]) == (
        "gap", 10.0, 30.0, "replay_trim", 20.0)
    assert parse_message(orjson.dumps(feed.call_started_message("CA1", "S1", 1.0))).kind == "call_started"
    ended = parse_message(orjson.dumps(feed.call_ended_message("CA1", "stopped", 2.0)))
    assert (ended.kind, ended.call_id, ended.raw["reason"]) == ("call_ended", "CA1", "stopped")


def test_feed_parse_leaves_other_schemas_to_the_reader() -> None:
    assert feed.parse({"type": "Results", "interaction_id": "CA1"}) is None  # not a feed kind
    assert feed.parse({"type": "transcript"}) is None  # names no call
    assert feed.parse({"type": ["transcript"], "interaction_id": "CA1"}) is None
    newer = parse_message(orjson.dumps({"type": "summary", "interaction_id": "CA1"}))
    assert (newer.kind, newer.call_id) == (feed.OTHER, "CA1")
