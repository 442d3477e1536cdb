"""Sans-I/O codec for Exotel's Voicebot/AgentStream WebSocket messages (see docs/exotel-protocol.md).

``parse_event`` turns one text frame into a frozen event dataclass or raises
:class:`ExotelProtocolError` carrying the RFC 6455 close code and a short reason that names the
rule broken (e.g. ``media.payload: invalid base64``). The ``build_*`` functions and
:class:`StreamEncoder` emit the documented snake_case form with numbers as strings.

Parsing is lenient where real peers differ and strict where data would be wrong:

* both spellings (``stream_sid``/``streamSid``, ``sequence_number``/``sequenceNumber``, ...);
* numbers as JSON integers or decimal strings (``7`` or ``"7"``); negatives are errors;
* required: ``event``; ``stream_sid`` on every event but ``connected``; ``start.call_sid``;
  ``media.payload`` (strict base64 of 16-bit PCM, so an even byte count); ``dtmf.digit``;
  ``mark.name``. Everything else is optional because server->caller messages (and some peers)
  omit it: missing numbers are 0, missing strings are ``""``, a missing ``media_format`` means
  Exotel's default (raw, 8000 Hz).

Close codes come from :mod:`rtaa_cli.protocols.closecodes`: 1007 for malformed JSON, a missing field, a
wrong type or bad base64; 1003 for an unknown event (binary frames are the transport's job).

This module says what one frame means. The rules over a stream's sequence of frames (start before media,
one start, nothing after stop) are the server's and live with the call rules they interleave with, in
:mod:`rtaa_cli.pipeline.ingest_rules`.
"""
from __future__ import annotations

import binascii
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable

import orjson

from rtaa_cli.protocols.closecodes import Close

# Rates Exotel streams at (``?sample-rate=`` on the stream URL); 8000 is the default.
SAMPLE_RATES = (8000, 16000, 24000)
DEFAULT_SAMPLE_RATE = 8000

_MAX_REASON_BYTES = 120
_MAX_DIGITS = 18  # decimal strings longer than this are not sequence numbers or timestamps
_MAX_INT = 10**_MAX_DIGITS - 1


class ErrorKind(StrEnum):
    """Which rule a frame broke, for machines (the value is the ingest's ``rtaa_bad_input_total{kind}``);
    the reason text is for people and may change."""

    MALFORMED_JSON = "malformed_json"  # not JSON, or not a JSON object
    INVALID_FIELD = "invalid_field"  # a field missing, mistyped or out of range
    BAD_BASE64 = "bad_base64"  # media.payload is not strict base64
    BAD_AUDIO = "bad_audio"  # media.payload decodes to an odd byte count (not 16-bit PCM)
    UNKNOWN_EVENT = "unknown_event"  # an event name this codec does not know (close 1003)


class ExotelProtocolError(ValueError):
    """A frame that breaks the protocol. ``close_code`` and ``reason`` are ready for ws.close();
    ``kind`` names the rule."""

    def __init__(self, close_code: int, reason: str, kind: ErrorKind = ErrorKind.INVALID_FIELD) -> None:
        encoded = reason.encode("utf-8")
        if len(encoded) > _MAX_REASON_BYTES:  # close reasons are capped at 123 bytes on the wire
            reason = encoded[: _MAX_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."
        super().__init__(reason)
        self.close_code = int(close_code)
        self.reason = reason
        self.kind = kind


def _invalid(reason: str, kind: ErrorKind = ErrorKind.INVALID_FIELD) -> ExotelProtocolError:
    return ExotelProtocolError(Close.INVALID_PAYLOAD, reason, kind)


def _snippet(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Connected:
    pass


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    from_: str
    to: str
    custom_parameters: dict[str, str] = field(hash=False)
    encoding: str
    sample_rate: int
    bit_rate: str
    sequence_number: int


@dataclass(frozen=True, slots=True)
class Media:
    stream_sid: str
    sequence_number: int
    chunk: int
    timestamp_ms: int
    payload: bytes = field(repr=False)  # decoded PCM (s16le mono)


@dataclass(frozen=True, slots=True)
class Dtmf:
    stream_sid: str
    sequence_number: int
    digit: str
    duration_ms: int


@dataclass(frozen=True, slots=True)
class Mark:
    stream_sid: str
    sequence_number: int
    name: str


@dataclass(frozen=True, slots=True)
class Clear:
    stream_sid: str


@dataclass(frozen=True, slots=True)
class Stop:
    stream_sid: str
    sequence_number: int
    call_sid: str
    account_sid: str
    reason: str


Event = Connected | Start | Media | Dtmf | Mark | Clear | Stop

# ------------------------------------------------------------------------------ field accessors


def _get(obj: dict[str, Any], snake: str, camel: str | None) -> Any:
    value = obj.get(snake)
    if value is None and camel is not None:
        value = obj.get(camel)
    return value


def _obj(msg: dict[str, Any], key: str, required: bool) -> dict[str, Any]:
    value = msg.get(key)
    if value is None:
        if required:
            raise _invalid(f"{key}: missing field")
        return {}
    if type(value) is not dict:
        raise _invalid(f"{key}: must be an object")
    return value


def _str(obj: dict[str, Any], snake: str, camel: str | None, path: str, required: bool = False) -> str:
    value = _get(obj, snake, camel)
    if value is None:
        if required:
            raise _invalid(f"{path}: missing field")
        return ""
    if type(value) is not str:
        raise _invalid(f"{path}: must be a string")
    if required and not value:
        raise _invalid(f"{path}: must not be empty")
    return value


def _int(obj: dict[str, Any], snake: str, camel: str | None, path: str, default: int = 0) -> int:
    """A non-negative integer given as a JSON number or a decimal string."""
    value = _get(obj, snake, camel)
    if value is None:
        return default
    kind = type(value)
    number: int
    if kind is int:
        number = value
    elif kind is str:
        if not (0 < len(value) <= _MAX_DIGITS and value.isascii() and value.isdigit()):
            raise _invalid(f"{path}: must be a non-negative integer, got {_snippet(value)}")
        return int(value)
    elif kind is float and value.is_integer():
        number = int(value)
    else:
        raise _invalid(f"{path}: must be a non-negative integer, got {_snippet(value)}")
    if number < 0:
        raise _invalid(f"{path}: must be >= 0, got {number}")
    if number > _MAX_INT:
        raise _invalid(f"{path}: too large")
    return number


def _stream_sid(msg: dict[str, Any], inner: dict[str, Any] | None = None) -> str:
    sid = _get(msg, "stream_sid", "streamSid")
    if sid is None and inner is not None:  # start repeats it inside the start object
        sid = _get(inner, "stream_sid", "streamSid")
    if sid is None:
        raise _invalid("stream_sid: missing field")
    if type(sid) is not str:
        raise _invalid("stream_sid: must be a string")
    if not sid:
        raise _invalid("stream_sid: must not be empty")
    return sid


def _seq(msg: dict[str, Any]) -> int:
    return _int(msg, "sequence_number", "sequenceNumber", "sequence_number")


# ------------------------------------------------------------------------------- event parsers


def _parse_connected(msg: dict[str, Any]) -> Connected:
    return _CONNECTED


def _parse_start(msg: dict[str, Any]) -> Start:
    start = _obj(msg, "start", required=True)
    fmt = _get(start, "media_format", "mediaFormat")
    if fmt is None:
        fmt = {}
    elif type(fmt) is not dict:
        raise _invalid("start.media_format: must be an object")
    sample_rate = _int(fmt, "sample_rate", "sampleRate", "start.media_format.sample_rate", DEFAULT_SAMPLE_RATE)
    if sample_rate == 0:
        raise _invalid("start.media_format.sample_rate: must be > 0")
    return Start(
        stream_sid=_stream_sid(msg, start),
        call_sid=_str(start, "call_sid", "callSid", "start.call_sid", required=True),
        account_sid=_str(start, "account_sid", "accountSid", "start.account_sid"),
        from_=_str(start, "from", None, "start.from"),
        to=_str(start, "to", None, "start.to"),
        custom_parameters=_custom_parameters(start),
        encoding=_str(fmt, "encoding", None, "start.media_format.encoding") or "raw",
        sample_rate=sample_rate,
        bit_rate=_str(fmt, "bit_rate", "bitRate", "start.media_format.bit_rate"),
        sequence_number=_seq(msg),
    )


def _custom_parameters(start: dict[str, Any]) -> dict[str, str]:
    params = _get(start, "custom_parameters", "customParameters")
    if params is None:
        return {}
    if type(params) is not dict:
        raise _invalid("start.custom_parameters: must be an object")
    out: dict[str, str] = {}
    for key, value in params.items():
        if type(value) is str:
            out[key] = value
        elif type(value) in (int, float, bool):  # URL query values some peers send unquoted
            out[key] = orjson.dumps(value).decode()
        else:
            raise _invalid(f"start.custom_parameters.{key[:40]}: must be a string")
    return out


def _parse_media(msg: dict[str, Any]) -> Media:
    media = msg.get("media")
    if type(media) is not dict:
        raise _invalid("media: missing field" if media is None else "media: must be an object")
    payload = media.get("payload")
    if type(payload) is not str:
        raise _invalid("media.payload: missing field" if payload is None else "media.payload: must be a string")
    try:
        pcm = binascii.a2b_base64(payload, strict_mode=True)
    except ValueError:  # binascii.Error, and non-ASCII text
        raise _invalid("media.payload: invalid base64", ErrorKind.BAD_BASE64) from None
    if len(pcm) & 1:
        raise _invalid("media.payload: odd byte count, not 16-bit PCM", ErrorKind.BAD_AUDIO)
    # Hot path (every 20-100 ms of every call): Exotel's own shape is taken inline; anything else
    # (camelCase, numbers as JSON numbers, missing fields, errors) goes through the generic helpers.
    sid, seq, chunk, stamp = msg.get("stream_sid"), msg.get("sequence_number"), media.get("chunk"), media.get("timestamp")
    if (type(sid) is str and sid and type(seq) is str and type(chunk) is str and type(stamp) is str
            and 0 < len(seq) <= _MAX_DIGITS and 0 < len(chunk) <= _MAX_DIGITS and 0 < len(stamp) <= _MAX_DIGITS
            and (seq + chunk + stamp).isascii() and seq.isdigit() and chunk.isdigit() and stamp.isdigit()):
        return _new_media(sid, int(seq), int(chunk), int(stamp), pcm)
    return Media(
        stream_sid=_stream_sid(msg),
        sequence_number=_seq(msg),
        chunk=_int(media, "chunk", None, "media.chunk"),
        timestamp_ms=_int(media, "timestamp", None, "media.timestamp"),
        payload=pcm,
    )


_MEDIA_FIELDS = tuple(Media.__dataclass_fields__)
_set_media = [getattr(Media, name).__set__ for name in _MEDIA_FIELDS]  # slot descriptors


def _new_media(stream_sid: str, sequence_number: int, chunk: int, timestamp_ms: int, payload: bytes) -> Media:
    # Same object as Media(...), without the frozen dataclass's per-field object.__setattr__ calls.
    obj = object.__new__(Media)
    s0, s1, s2, s3, s4 = _set_media
    s0(obj, stream_sid)
    s1(obj, sequence_number)
    s2(obj, chunk)
    s3(obj, timestamp_ms)
    s4(obj, payload)
    return obj


def _parse_dtmf(msg: dict[str, Any]) -> Dtmf:
    dtmf = _obj(msg, "dtmf", required=True)
    digit = dtmf.get("digit")
    if type(digit) is int and 0 <= digit <= 9:  # sloppy peers send the key as a number
        digit = str(digit)
    elif digit is None:
        raise _invalid("dtmf.digit: missing field")
    elif type(digit) is not str or not digit:
        raise _invalid("dtmf.digit: must be a non-empty string")
    return Dtmf(
        stream_sid=_stream_sid(msg),
        sequence_number=_seq(msg),
        digit=digit,
        duration_ms=_int(dtmf, "duration", None, "dtmf.duration"),
    )


def _parse_mark(msg: dict[str, Any]) -> Mark:
    mark = _obj(msg, "mark", required=True)
    return Mark(
        stream_sid=_stream_sid(msg),
        sequence_number=_seq(msg),
        name=_str(mark, "name", None, "mark.name", required=True),
    )


def _parse_clear(msg: dict[str, Any]) -> Clear:
    return Clear(stream_sid=_stream_sid(msg))


def _parse_stop(msg: dict[str, Any]) -> Stop:
    stop = _obj(msg, "stop", required=False)
    return Stop(
        stream_sid=_stream_sid(msg),
        sequence_number=_seq(msg),
        call_sid=_str(stop, "call_sid", "callSid", "stop.call_sid"),
        account_sid=_str(stop, "account_sid", "accountSid", "stop.account_sid"),
        reason=_str(stop, "reason", None, "stop.reason"),
    )


_CONNECTED = Connected()

_PARSERS: dict[str, Callable[[dict[str, Any]], Event]] = {
    "media": _parse_media,  # first: the hot path
    "connected": _parse_connected,
    "start": _parse_start,
    "dtmf": _parse_dtmf,
    "mark": _parse_mark,
    "clear": _parse_clear,
    "stop": _parse_stop,
}


def parse_event(data: str | bytes) -> Event:
    """Parse one text frame (``bytes`` = its UTF-8) of either direction into an event.

    Raises :class:`ExotelProtocolError` with the close code and reason to send.
    """
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise _invalid("message is not valid JSON", ErrorKind.MALFORMED_JSON) from None
    if type(msg) is not dict:
        raise _invalid("message must be a JSON object", ErrorKind.MALFORMED_JSON)
    event = msg.get("event")
    parser = _PARSERS.get(event) if type(event) is str else None
    if parser is None:
        if event is None:
            raise _invalid("event: missing field")
        if type(event) is not str:
            raise _invalid("event: must be a string")
        raise ExotelProtocolError(Close.UNSUPPORTED_DATA, f"event: unknown event {_snippet(event)}",
                                  ErrorKind.UNKNOWN_EVENT)
    return parser(msg)


# ------------------------------------------------------------------------------------ builders


def _dumps(msg: Any) -> str:
    return orjson.dumps(msg).decode()


def bit_rate_for(sample_rate: int) -> str:
    """Exotel's ``bit_rate`` label for 16-bit mono at ``sample_rate`` (8000 -> ``128kbps``)."""
    return f"{sample_rate * 16 // 1000}kbps"


def build_connected() -> str:
    return '{"event":"connected"}'


def build_start(
    stream_sid: str,
    call_sid: str,
    account_sid: str = "",
    from_: str = "",
    to: str = "",
    custom_parameters: dict[str, str] | None = None,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    sequence_number: int = 1,
    encoding: str = "raw",
    bit_rate: str | None = None,
) -> str:
    return _dumps({
        "event": "start",
        "sequence_number": str(sequence_number),
        "stream_sid": stream_sid,
        "start": {
            "stream_sid": stream_sid,
            "call_sid": call_sid,
            "account_sid": account_sid,
            "from": from_,
            "to": to,
            "custom_parameters": dict(custom_parameters or {}),
            "media_format": {
                "encoding": encoding,
                "sample_rate": str(sample_rate),
                "bit_rate": bit_rate if bit_rate is not None else bit_rate_for(sample_rate),
            },
        },
    })


def build_media(stream_sid: str, sequence_number: int, chunk: int, timestamp_ms: int, payload: bytes) -> str:
    """``payload`` is raw PCM; it is base64-encoded here."""
    return _dumps({
        "event": "media",
        "sequence_number": str(sequence_number),
        "stream_sid": stream_sid,
        "media": {
            "chunk": str(chunk),
            "timestamp": str(timestamp_ms),
            "payload": binascii.b2a_base64(payload, newline=False).decode("ascii"),
        },
    })


def b64_payloads(pcm_frames: tuple[bytes, ...]) -> tuple[str, ...]:
    """Each frame's base64 text, for :meth:`StreamEncoder.media_b64` (a load generator encodes its
    shared audio once per process instead of once per send)."""
    return tuple(binascii.b2a_base64(pcm, newline=False).decode("ascii") for pcm in pcm_frames)


def media_prefix(stream_sid: str) -> str:
    """The constant head of a stream's media messages (see :func:`build_media_b64`)."""
    return '{"event":"media","sequence_number":"%s","stream_sid":' + _dumps(stream_sid).replace("%", "%%") + \
        ',"media":{"chunk":"%s","timestamp":"%s","payload":"'


def build_media_b64(prefix: str, sequence_number: int, chunk: int, timestamp_ms: int, payload_b64: str) -> str:
    """:func:`build_media` byte for byte, from already base64-encoded audio and the stream's
    :func:`media_prefix`: one format and one concatenation per message (base64 has no character
    JSON would escape)."""
    return prefix % (sequence_number, chunk, timestamp_ms) + payload_b64 + '"}}'


def build_dtmf(stream_sid: str, sequence_number: int, digit: str, duration_ms: int = 250) -> str:
    return _dumps({
        "event": "dtmf",
        "sequence_number": str(sequence_number),
        "stream_sid": stream_sid,
        "dtmf": {"digit": digit, "duration": str(duration_ms)},
    })


def build_mark(stream_sid: str, sequence_number: int, name: str) -> str:
    return _dumps({
        "event": "mark",
        "sequence_number": str(sequence_number),
        "stream_sid": stream_sid,
        "mark": {"name": name},
    })


def build_clear(stream_sid: str) -> str:
    return _dumps({"event": "clear", "stream_sid": stream_sid})


def build_stop(stream_sid: str, sequence_number: int, call_sid: str, account_sid: str = "", reason: str = "stopped") -> str:
    return _dumps({
        "event": "stop",
        "sequence_number": str(sequence_number),
        "stream_sid": stream_sid,
        "stop": {"call_sid": call_sid, "account_sid": account_sid, "reason": reason},
    })


class StreamEncoder:
    """Builds one stream's messages with Exotel's numbering.

    ``sequence_number`` counts every numbered message from 1 (``connected`` carries none, so
    ``start`` is 1); ``chunk`` counts media messages from 1; a media ``timestamp`` is the ms of
    audio sent so far including that chunk (docs/exotel-protocol.md's example: chunk 2 of 36 ms -> 72).
    """

    __slots__ = ("stream_sid", "call_sid", "account_sid", "sample_rate", "sequence_number", "chunk", "audio_bytes",
                 "_media_prefix")

    def __init__(self, stream_sid: str, call_sid: str, account_sid: str = "", sample_rate: int = DEFAULT_SAMPLE_RATE) -> None:
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.account_sid = account_sid
        self.sample_rate = sample_rate
        self.sequence_number = 0  # last number used
        self.chunk = 0
        self.audio_bytes = 0
        self._media_prefix: str | None = None

    @property
    def audio_ms(self) -> float:
        """Audio sent so far, in ms (exact, not rounded)."""
        return self.audio_bytes * 1000.0 / (self.sample_rate * 2)

    def _next(self) -> int:
        self.sequence_number += 1
        return self.sequence_number

    def connected(self) -> str:
        return build_connected()

    def start(self, from_: str = "", to: str = "", custom_parameters: dict[str, str] | None = None) -> str:
        return build_start(self.stream_sid, self.call_sid, self.account_sid, from_, to, custom_parameters,
                           self.sample_rate, self._next())

    def _next_media(self, pcm_bytes: int) -> tuple[int, int, int]:
        """(sequence_number, chunk, timestamp_ms) of the next media message of ``pcm_bytes`` bytes."""
        self.chunk += 1
        self.audio_bytes += pcm_bytes
        return self._next(), self.chunk, self.audio_bytes * 1000 // (self.sample_rate * 2)

    def media(self, pcm: bytes) -> str:
        return build_media(self.stream_sid, *self._next_media(len(pcm)), pcm)

    def media_b64(self, payload_b64: str, pcm_bytes: int) -> str:
        """:meth:`media` for audio already in base64 (:func:`b64_payloads`) of ``pcm_bytes`` PCM bytes."""
        if self._media_prefix is None:
            self._media_prefix = media_prefix(self.stream_sid)
        return build_media_b64(self._media_prefix, *self._next_media(pcm_bytes), payload_b64)

    def dtmf(self, digit: str, duration_ms: int = 250) -> str:
        return build_dtmf(self.stream_sid, self._next(), digit, duration_ms)

    def mark(self, name: str) -> str:
        return build_mark(self.stream_sid, self._next(), name)

    def stop(self, reason: str = "stopped") -> str:
        return build_stop(self.stream_sid, self._next(), self.call_sid, self.account_sid, reason)
