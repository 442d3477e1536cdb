"""Exotel codec: every event in both spellings and number types, every malformed case with its
close code and reason, and the builders/encoder round-trip through the parser."""
from __future__ import annotations

import base64

import orjson
import pytest

from rtaa_cli.protocols.closecodes import Close
from rtaa_cli.protocols.exotel import (
    Clear,
    Connected,
    Dtmf,
    ErrorKind,
    ExotelProtocolError,
    Mark,
    Media,
    Start,
    Stop,
    StreamEncoder,
    build_clear,
    build_connected,
    build_dtmf,
    build_mark,
    b64_payloads,
    build_media,
    build_start,
    build_stop,
    parse_event,
)

PCM = bytes(range(256)) * 2 + b"\x01\x02"  # 514 bytes, even
B64 = base64.b64encode(PCM).decode()

START = Start("ST1", "CA1", "AC1", "+911", "+912", {"k": "v"}, "raw", 16000, "256kbps", 1)

# (name, message, expected event) -- snake_case with strings, camelCase with numbers, and mixes.
VALID = [
    ("connected", {"event": "connected"}, Connected()),
    ("connected-extra-fields", {"event": "connected", "protocol": "Call", "version": "1.0"}, Connected()),
    ("start-snake-strings", {"event": "start", "sequence_number": "1", "stream_sid": "ST1",
                             "start": {"stream_sid": "ST1", "call_sid": "CA1", "account_sid": "AC1",
                                       "from": "+911", "to": "+912", "custom_parameters": {"k": "v"},
                                       "media_format": {"encoding": "raw", "sample_rate": "16000",
                                                        "bit_rate": "256kbps"}}}, START),
    ("start-camel-numbers", {"event": "start", "sequenceNumber": 1, "streamSid": "ST1",
                             "start": {"streamSid": "ST1", "callSid": "CA1", "accountSid": "AC1",
                                       "from": "+911", "to": "+912", "customParameters": {"k": "v"},
                                       "mediaFormat": {"encoding": "raw", "sampleRate": 16000,
                                                       "bitRate": "256kbps"}}}, START),
    ("start-sid-only-inside", {"event": "start", "sequence_number": 1,
                               "start": {"stream_sid": "ST1", "call_sid": "CA1", "account_sid": "AC1",
                                         "from": "+911", "to": "+912", "custom_parameters": {"k": "v"},
                                         "media_format": {"encoding": "raw", "sample_rate": 16000.0,
                                                          "bit_rate": "256kbps"}}}, START),
    ("start-minimal-defaults", {"event": "start", "stream_sid": "ST1", "start": {"call_sid": "CA1"}},
     Start("ST1", "CA1", "", "", "", {}, "raw", 8000, "", 0)),
    ("start-numeric-custom-param", {"event": "start", "stream_sid": "S", "start": {"call_sid": "C",
                                    "custom_parameters": {"n": 5, "b": True}}},
     Start("S", "C", "", "", "", {"n": "5", "b": "true"}, "raw", 8000, "", 0)),
    ("media-snake-strings", {"event": "media", "sequence_number": "3", "stream_sid": "ST1",
                             "media": {"chunk": "2", "timestamp": "72", "payload": B64}},
     Media("ST1", 3, 2, 72, PCM)),
    ("media-camel-numbers", {"event": "media", "sequenceNumber": 3, "streamSid": "ST1",
                             "media": {"chunk": 2, "timestamp": 72, "payload": B64}},
     Media("ST1", 3, 2, 72, PCM)),
    ("media-server-to-caller", {"event": "media", "stream_sid": "ST1", "media": {"payload": B64}},
     Media("ST1", 0, 0, 0, PCM)),
    ("media-empty-payload", {"event": "media", "stream_sid": "S", "media": {"payload": ""}},
     Media("S", 0, 0, 0, b"")),
    ("dtmf-snake", {"event": "dtmf", "sequence_number": "9", "stream_sid": "ST1",
                    "dtmf": {"digit": "5", "duration": "250"}}, Dtmf("ST1", 9, "5", 250)),
    ("dtmf-camel-int-digit", {"event": "dtmf", "sequenceNumber": 9, "streamSid": "ST1",
                              "dtmf": {"digit": 5, "duration": 250}}, Dtmf("ST1", 9, "5", 250)),
    ("dtmf-star", {"event": "dtmf", "stream_sid": "S", "dtmf": {"digit": "*"}}, Dtmf("S", 0, "*", 0)),
    ("mark-snake", {"event": "mark", "sequence_number": "10", "stream_sid": "ST1", "mark": {"name": "m1"}},
     Mark("ST1", 10, "m1")),
    ("mark-camel", {"event": "mark", "sequenceNumber": 10, "streamSid": "ST1", "mark": {"name": "m1"}},
     Mark("ST1", 10, "m1")),
    ("clear-snake", {"event": "clear", "stream_sid": "ST1"}, Clear("ST1")),
    ("clear-camel", {"event": "clear", "streamSid": "ST1"}, Clear("ST1")),
    ("stop-snake", {"event": "stop", "sequence_number": "11", "stream_sid": "ST1",
                    "stop": {"call_sid": "CA1", "account_sid": "AC1", "reason": "callended"}},
     Stop("ST1", 11, "CA1", "AC1", "callended")),
    ("stop-camel", {"event": "stop", "sequenceNumber": 11, "streamSid": "ST1",
                    "stop": {"callSid": "CA1", "accountSid": "AC1", "reason": "stopped"}},
     Stop("ST1", 11, "CA1", "AC1", "stopped")),
    ("stop-bare", {"event": "stop", "stream_sid": "ST1"}, Stop("ST1", 0, "", "", "")),
]


@pytest.mark.parametrize("name,message,expected", VALID, ids=[v[0] for v in VALID])
def test_parse_valid(name: str, message: dict, expected: object) -> None:
    text = orjson.dumps(message).decode()
    assert parse_event(text) == expected
    assert parse_event(text.encode()) == expected  # a text frame's UTF-8 bytes


def _media(**media: object) -> dict:
    return {"event": "media", "sequence_number": "3", "stream_sid": "S",
            "media": {"chunk": "1", "timestamp": "36", "payload": B64, **media}}


I, U = Close.INVALID_PAYLOAD, Close.UNSUPPORTED_DATA

# (name, raw frame, close code, reason)
MALFORMED = [
    ("not-json", "{not json", I, "message is not valid JSON"),
    ("empty-frame", "", I, "message is not valid JSON"),
    ("not-utf8", b"\xff\xfe{}", I, "message is not valid JSON"),
    ("array", "[1, 2]", I, "message must be a JSON object"),
    ("string", '"media"', I, "message must be a JSON object"),
    ("null", "null", I, "message must be a JSON object"),
    ("no-event", {"stream_sid": "S"}, I, "event: missing field"),
    ("event-not-string", {"event": 5}, I, "event: must be a string"),
    ("unknown-event", {"event": "hangup"}, U, "event: unknown event 'hangup'"),
    ("unknown-event-case", {"event": "Media"}, U, "event: unknown event 'Media'"),
    ("media-no-stream-sid", {"event": "media", "media": {"payload": B64}}, I, "stream_sid: missing field"),
    ("media-stream-sid-int", {"event": "media", "stream_sid": 7, "media": {"payload": B64}}, I,
     "stream_sid: must be a string"),
    ("media-stream-sid-empty", {"event": "media", "stream_sid": "", "media": {"payload": B64}}, I,
     "stream_sid: must not be empty"),
    ("media-no-media", {"event": "media", "stream_sid": "S"}, I, "media: missing field"),
    ("media-media-string", {"event": "media", "stream_sid": "S", "media": "x"}, I, "media: must be an object"),
    ("media-no-payload", {"event": "media", "stream_sid": "S", "media": {"chunk": "1"}}, I,
     "media.payload: missing field"),
    ("media-payload-int", _media(payload=12), I, "media.payload: must be a string"),
    ("media-bad-base64-chars", _media(payload="AAA*"), I, "media.payload: invalid base64"),
    ("media-bad-base64-padding", _media(payload="AAA"), I, "media.payload: invalid base64"),
    ("media-base64-whitespace", _media(payload="AA AA"), I, "media.payload: invalid base64"),
    ("media-base64-newline", _media(payload=B64[:8] + "\n" + B64[8:]), I, "media.payload: invalid base64"),
    ("media-base64-non-ascii", _media(payload="AAé="), I, "media.payload: invalid base64"),
    ("media-odd-bytes", _media(payload=base64.b64encode(b"abc").decode()), I,
     "media.payload: odd byte count, not 16-bit PCM"),
    ("media-negative-chunk", _media(chunk=-1), I, "media.chunk: must be >= 0, got -1"),
    ("media-negative-chunk-string", _media(chunk="-1"), I, "media.chunk: must be a non-negative integer, got '-1'"),
    ("media-timestamp-float", _media(timestamp=1.5), I, "media.timestamp: must be a non-negative integer, got 1.5"),
    ("media-timestamp-words", _media(timestamp="soon"), I,
     "media.timestamp: must be a non-negative integer, got 'soon'"),
    ("media-timestamp-bool", _media(timestamp=True), I, "media.timestamp: must be a non-negative integer, got True"),
    ("media-timestamp-list", _media(timestamp=[1]), I, "media.timestamp: must be a non-negative integer, got [1]"),
    ("media-timestamp-huge", _media(timestamp="1" * 40), I,
     "media.timestamp: must be a non-negative integer, got '111111111111111111111111111111111111..."),
    ("media-timestamp-huge-number", _media(timestamp=10**19), I, "media.timestamp: too large"),
    ("media-unicode-digits", _media(chunk="²"), I, "media.chunk: must be a non-negative integer, got '²'"),
    ("media-negative-seq", {**_media(), "sequence_number": -3}, I, "sequence_number: must be >= 0, got -3"),
    ("media-seq-empty-string", {**_media(), "sequence_number": ""}, I,
     "sequence_number: must be a non-negative integer, got ''"),
    ("start-no-start", {"event": "start", "stream_sid": "S"}, I, "start: missing field"),
    ("start-start-list", {"event": "start", "stream_sid": "S", "start": []}, I, "start: must be an object"),
    ("start-no-call-sid", {"event": "start", "stream_sid": "S", "start": {}}, I, "start.call_sid: missing field"),
    ("start-call-sid-int", {"event": "start", "stream_sid": "S", "start": {"call_sid": 5}}, I,
     "start.call_sid: must be a string"),
    ("start-no-stream-sid", {"event": "start", "start": {"call_sid": "C"}}, I, "stream_sid: missing field"),
    ("start-media-format-string", {"event": "start", "stream_sid": "S",
                                   "start": {"call_sid": "C", "media_format": "8000"}}, I,
     "start.media_format: must be an object"),
    ("start-sample-rate-words", {"event": "start", "stream_sid": "S",
                                 "start": {"call_sid": "C", "media_format": {"sample_rate": "8k"}}}, I,
     "start.media_format.sample_rate: must be a non-negative integer, got '8k'"),
    ("start-sample-rate-zero", {"event": "start", "stream_sid": "S",
                                "start": {"call_sid": "C", "media_format": {"sample_rate": 0}}}, I,
     "start.media_format.sample_rate: must be > 0"),
    ("start-sample-rate-negative", {"event": "start", "stream_sid": "S",
                                    "start": {"call_sid": "C", "media_format": {"sampleRate": -8000}}}, I,
     "start.media_format.sample_rate: must be >= 0, got -8000"),
    ("start-custom-params-list", {"event": "start", "stream_sid": "S",
                                  "start": {"call_sid": "C", "custom_parameters": ["a"]}}, I,
     "start.custom_parameters: must be an object"),
    ("start-custom-param-object", {"event": "start", "stream_sid": "S",
                                   "start": {"call_sid": "C", "custom_parameters": {"a": {"b": 1}}}}, I,
     "start.custom_parameters.a: must be a string"),
    ("start-from-int", {"event": "start", "stream_sid": "S", "start": {"call_sid": "C", "from": 9100}}, I,
     "start.from: must be a string"),
    ("dtmf-no-dtmf", {"event": "dtmf", "stream_sid": "S"}, I, "dtmf: missing field"),
    ("dtmf-no-digit", {"event": "dtmf", "stream_sid": "S", "dtmf": {"duration": "1"}}, I, "dtmf.digit: missing field"),
    ("dtmf-empty-digit", {"event": "dtmf", "stream_sid": "S", "dtmf": {"digit": ""}}, I,
     "dtmf.digit: must be a non-empty string"),
    ("dtmf-digit-list", {"event": "dtmf", "stream_sid": "S", "dtmf": {"digit": [5]}}, I,
     "dtmf.digit: must be a non-empty string"),
    ("dtmf-negative-duration", {"event": "dtmf", "stream_sid": "S", "dtmf": {"digit": "1", "duration": -5}}, I,
     "dtmf.duration: must be >= 0, got -5"),
    ("mark-no-name", {"event": "mark", "stream_sid": "S", "mark": {}}, I, "mark.name: missing field"),
    ("mark-name-int", {"event": "mark", "stream_sid": "S", "mark": {"name": 3}}, I, "mark.name: must be a string"),
    ("mark-no-mark", {"event": "mark", "stream_sid": "S"}, I, "mark: missing field"),
    ("clear-no-sid", {"event": "clear"}, I, "stream_sid: missing field"),
    ("stop-no-sid", {"event": "stop", "stop": {}}, I, "stream_sid: missing field"),
    ("stop-stop-string", {"event": "stop", "stream_sid": "S", "stop": "bye"}, I, "stop: must be an object"),
    ("stop-reason-int", {"event": "stop", "stream_sid": "S", "stop": {"reason": 1}}, I, "stop.reason: must be a string"),
]


@pytest.mark.parametrize("name,raw,code,reason", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_parse_malformed(name: str, raw: object, code: int, reason: str) -> None:
    data = raw if isinstance(raw, (str, bytes)) else orjson.dumps(raw).decode()
    with pytest.raises(ExotelProtocolError) as info:
        parse_event(data)
    assert info.value.close_code == code
    assert info.value.reason == reason
    assert str(info.value) == reason
    assert len(info.value.reason.encode()) <= 120
    assert isinstance(info.value, ValueError)


# The rule each malformed case breaks, as a value: the ingest counts by it (rtaa_bad_input_total{kind}).
_KIND_BY_REASON_START = {"message is not valid JSON": ErrorKind.MALFORMED_JSON,
                         "message must be a JSON object": ErrorKind.MALFORMED_JSON,
                         "event: unknown event": ErrorKind.UNKNOWN_EVENT,
                         "media.payload: invalid base64": ErrorKind.BAD_BASE64,
                         "media.payload: odd byte count": ErrorKind.BAD_AUDIO}


@pytest.mark.parametrize("name,raw,code,reason", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_each_malformed_case_carries_the_kind_of_the_rule_it_broke(name: str, raw: object, code: int,
                                                                    reason: str) -> None:
    data = raw if isinstance(raw, (str, bytes)) else orjson.dumps(raw).decode()
    with pytest.raises(ExotelProtocolError) as info:
        parse_event(data)
    expected = next((k for start, k in _KIND_BY_REASON_START.items() if reason.startswith(start)),
                    ErrorKind.INVALID_FIELD)
    assert info.value.kind is expected


@pytest.mark.parametrize("raw", [
    {"event": "media", "stream_sid": "S", "media": {"chunk": "base64", "payload": B64}},
    {"event": "media", "stream_sid": "S", "media": {"chunk": "16-bit", "payload": B64}},
    {"event": "start", "stream_sid": "S", "start": {"call_sid": "C", "custom_parameters": {"base64": {}}}},
], ids=["chunk-named-base64", "chunk-named-16-bit", "custom-parameter-named-base64"])
def test_the_kind_does_not_depend_on_what_the_reason_quotes(raw: object) -> None:
    """A reason quotes the caller's input; a kind read back from the text would take a chunk "base64" for
    bad base64. The kind is set where the rule is checked."""
    with pytest.raises(ExotelProtocolError) as info:
        parse_event(orjson.dumps(raw))
    assert info.value.kind is ErrorKind.INVALID_FIELD, info.value.reason


def test_reason_is_capped_at_120_bytes_even_with_multibyte_text() -> None:
    error = ExotelProtocolError(Close.INVALID_PAYLOAD, "é" * 200)
    assert len(error.reason.encode("utf-8")) <= 120
    assert error.reason.endswith("...")
    long_event = {"event": "x" * 500}
    with pytest.raises(ExotelProtocolError) as info:
        parse_event(orjson.dumps(long_event))
    assert info.value.close_code == Close.UNSUPPORTED_DATA
    assert len(info.value.reason.encode()) <= 120


def test_builders_emit_documented_snake_case_with_string_numbers() -> None:
    start = orjson.loads(build_start("ST", "CA", "AC", "+1", "+2", {"k": "v"}, sample_rate=16000))
    assert start == {"event": "start", "sequence_number": "1", "stream_sid": "ST",
                     "start": {"stream_sid": "ST", "call_sid": "CA", "account_sid": "AC", "from": "+1", "to": "+2",
                               "custom_parameters": {"k": "v"},
                               "media_format": {"encoding": "raw", "sample_rate": "16000", "bit_rate": "256kbps"}}}
    media = orjson.loads(build_media("ST", 3, 2, 72, PCM))
    assert media == {"event": "media", "sequence_number": "3", "stream_sid": "ST",
                     "media": {"chunk": "2", "timestamp": "72", "payload": B64}}
    assert orjson.loads(build_dtmf("ST", 9, "5", 250)) == {
        "event": "dtmf", "sequence_number": "9", "stream_sid": "ST", "dtmf": {"digit": "5", "duration": "250"}}
    assert orjson.loads(build_mark("ST", 10, "m1")) == {
        "event": "mark", "sequence_number": "10", "stream_sid": "ST", "mark": {"name": "m1"}}
    assert orjson.loads(build_stop("ST", 11, "CA", "AC", "callended")) == {
        "event": "stop", "sequence_number": "11", "stream_sid": "ST",
        "stop": {"call_sid": "CA", "account_sid": "AC", "reason": "callended"}}
    assert orjson.loads(build_clear("ST")) == {"event": "clear", "stream_sid": "ST"}
    assert orjson.loads(build_connected()) == {"event": "connected"}


def test_builders_round_trip_through_parser() -> None:
    assert parse_event(build_connected()) == Connected()
    assert parse_event(build_media("ST", 3, 2, 72, PCM)) == Media("ST", 3, 2, 72, PCM)
    assert parse_event(build_dtmf("ST", 9, "#", 100)) == Dtmf("ST", 9, "#", 100)
    assert parse_event(build_mark("ST", 4, "m")) == Mark("ST", 4, "m")
    assert parse_event(build_clear("ST")) == Clear("ST")
    assert parse_event(build_stop("ST", 5, "CA", "AC")) == Stop("ST", 5, "CA", "AC", "stopped")


def test_stream_encoder_numbers_every_message_and_times_media() -> None:
    enc = StreamEncoder("ST", "CA", "AC", sample_rate=8000)
    frame = b"\x01\x00" * 288  # 36 ms at 8 kHz
    events = [parse_event(enc.connected()), parse_event(enc.start("+1", "+2", {"a": "b"}))]
    events += [parse_event(enc.media(frame)) for _ in range(3)]
    events.append(parse_event(enc.dtmf("7", 200)))
    events.append(parse_event(enc.mark("after-dtmf")))
    events += [parse_event(enc.media(frame[:200])) for _ in range(1)]  # a short frame: 12.5 ms
    events.append(parse_event(enc.stop("callended")))

    assert events[0] == Connected()
    assert events[1] == Start("ST", "CA", "AC", "+1", "+2", {"a": "b"}, "raw", 8000, "128kbps", 1)
    assert [e.sequence_number for e in events[1:]] == list(range(1, 9))
    media = [e for e in events if isinstance(e, Media)]
    assert [m.chunk for m in media] == [1, 2, 3, 4]
    assert [m.timestamp_ms for m in media] == [36, 72, 108, 120]  # floor of audio ms incl. the chunk
    assert b"".join(m.payload for m in media) == frame * 3 + frame[:200]
    assert events[5] == Dtmf("ST", 5, "7", 200)
    assert events[-1] == Stop("ST", 8, "CA", "AC", "callended")
    assert enc.audio_ms == pytest.approx(120.5)


@pytest.mark.parametrize("rate,frame_ms", [(16000, 20), (24000, 100)])
def test_stream_encoder_timestamps_at_other_rates(rate: int, frame_ms: int) -> None:
    enc = StreamEncoder("ST", "CA", sample_rate=rate)
    enc.start()
    frame = bytes(rate * frame_ms // 1000 * 2)
    stamps = [parse_event(enc.media(frame)).timestamp_ms for _ in range(5)]
    assert stamps == [frame_ms * k for k in range(1, 6)]


def test_pre_encoded_media_is_byte_identical_to_build_media() -> None:
    # the load generator's fast path (base64 once per process) must put the same bytes on the wire
    frames = (b"\x01\x00" * 288, bytes(range(256)) * 2, b"\xff\xfe" * 100, b"")
    for sid in ("ST0123456789abcdef", 'ST"odd%s\\sid\u00e9'):  # JSON-escaped and %-safe
        slow, fast = StreamEncoder(sid, "CA", sample_rate=8000), StreamEncoder(sid, "CA", sample_rate=8000)
        slow.start()
        fast.start()
        for pcm, b64 in zip(frames * 2, b64_payloads(frames) * 2):
            assert fast.media_b64(b64, len(pcm)) == slow.media(pcm)
        assert (fast.sequence_number, fast.chunk, fast.audio_bytes) == (slow.sequence_number, slow.chunk, slow.audio_bytes)
        assert fast.stop() == slow.stop()
