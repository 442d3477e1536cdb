"""Sans-I/O messages of Deepgram's live streaming API, ``/v1/listen`` (see docs/deepgram-protocol.md).

One place for the message types and field names: the emulator builds the server -> client messages
with the ``build_*`` functions (what goes *into* them, the words, uuids and fidelity effects, is the
emulator's: :mod:`rtaa_cli.emulator.messages`), the pipeline's Deepgram provider reads ``Results`` with
:func:`parse_results`, and the emulator reads the client's control messages with :func:`parse_control`
(the provider sends them through deepgram-sdk, which writes the same ``{"type": ...}`` objects).

Builders return the UTF-8 JSON of one text frame (orjson); parsers take a decoded object or a text frame
and never raise on a malformed message (a provider that sends garbage must not take a call down).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson


class MessageType(StrEnum):
    """``type`` of the server -> client messages."""

    RESULTS = "Results"
    METADATA = "Metadata"
    UTTERANCE_END = "UtteranceEnd"
    SPEECH_STARTED = "SpeechStarted"
    ERROR = "Error"
    CONFIGURE_SUCCESS = "ConfigureSuccess"
    CONFIGURE_FAILURE = "ConfigureFailure"


class ControlType(StrEnum):
    """``type`` of the client -> server text messages (audio goes as binary messages)."""

    KEEP_ALIVE = "KeepAlive"
    FINALIZE = "Finalize"
    CLOSE_STREAM = "CloseStream"
    CONFIGURE = "Configure"


# Close reasons (the service's texts): 1011 after ~10 s without audio or a text message; 1008 when the
# audio cannot be decoded (docs/deepgram-protocol.md §4).
# Assumption [??]: no source confirmed the current DATA-0000 code/text; 1008 as the current docs reportedly say.
NET0001 = ("Deepgram did not receive audio data or a text message within the timeout window. "
           "See https://dpgr.am/net0001")
DATA0000 = "DATA-0000: The payload cannot be decoded as audio. See https://dpgr.am/data0000"


# ------------------------------------------------------------------------------- parsed models


@dataclass(slots=True)
class Word:
    word: str  # ``punctuated_word`` when present, else ``word``
    start: float  # seconds since the connection's first audio byte
    end: float
    confidence: float = 0.0


@dataclass(slots=True)
class Result:
    """One ``Results`` message as the pipeline reads it (its first alternative); times are seconds since
    the connection's first audio byte. Every provider of the pipeline yields these."""

    is_final: bool
    text: str
    start: float
    end: float
    speech_final: bool = False
    from_finalize: bool = False
    confidence: float = 0.0
    words: list[Word] = field(default_factory=list)


# ------------------------------------------------------------------------------------ builders


def build_word(word: str, start: float, end: float, confidence: float, *, punctuated_word: str | None = None,
               speaker: int | None = None, language: str | None = None) -> dict[str, Any]:
    """One entry of an alternative's ``words``."""
    obj: dict[str, Any] = {"word": word, "start": start, "end": end, "confidence": confidence}
    if punctuated_word is not None:
        obj["punctuated_word"] = punctuated_word
    if speaker is not None:
        obj["speaker"] = speaker
    if language is not None:
        obj["language"] = language
    return obj


def build_alternative(transcript: str, confidence: float, words: list[dict[str, Any]], *,
                      languages: list[str] | None = None,
                      languages_hinted: list[str] | None = None) -> dict[str, Any]:
    """One entry of ``channel.alternatives``."""
    alt: dict[str, Any] = {"transcript": transcript, "confidence": confidence}
    if languages is not None:
        alt["languages"] = languages
    if languages_hinted is not None:
        alt["languages_hinted"] = languages_hinted
    alt["words"] = words
    return alt


def build_results(*, channel: int, channels: int, start: float, duration: float, is_final: bool,
                  speech_final: bool, from_finalize: bool, alternatives: list[dict[str, Any]],
                  metadata: dict[str, Any], search: list[dict[str, Any]] | None = None,
                  entities: list[dict[str, Any]] | None = None) -> bytes:
    body: dict[str, Any] = {"alternatives": alternatives}
    if search is not None:
        body["search"] = search
    msg: dict[str, Any] = {
        "type": MessageType.RESULTS,
        "channel_index": [channel, channels],
        "duration": duration,
        "start": start,
        "is_final": is_final,
        "speech_final": speech_final,
        "channel": body,
        "metadata": metadata,
        "from_finalize": from_finalize,
    }
    if entities is not None:
        msg["entities"] = entities
    return orjson.dumps(msg)


def build_metadata(*, request_id: str, sha256: str, created: str, duration: float, channels: int,
                   model_info: dict[str, dict[str, str]] | None = None) -> bytes:
    """``model_info``: model uuid -> its info; given only when audio was processed (its keys are ``models``)."""
    msg: dict[str, Any] = {"type": MessageType.METADATA, "transaction_key": "deprecated", "request_id": request_id,
                           "sha256": sha256, "created": created, "duration": duration, "channels": channels}
    if model_info is not None:
        msg["models"] = list(model_info)
        msg["model_info"] = model_info
    return orjson.dumps(msg)


def build_utterance_end(channel: int, channels: int, last_word_end: float) -> bytes:
    return orjson.dumps({"type": MessageType.UTTERANCE_END, "channel": [channel, channels],
                         "last_word_end": last_word_end})


def build_speech_started(channel: int, channels: int, timestamp: float) -> bytes:
    return orjson.dumps({"type": MessageType.SPEECH_STARTED, "channel": [channel, channels],
                         "timestamp": round(timestamp, 3)})


def build_schema_error(description: str, original: str) -> bytes:
    """The reply to a text message the server does not understand (the socket stays open)."""
    return orjson.dumps({"type": MessageType.ERROR, "variant": "SchemaError", "description": description,
                         "message": original})


def build_configure_success(request_id: str, keyterms: list[Any] | None) -> bytes:
    msg: dict[str, Any] = {"type": MessageType.CONFIGURE_SUCCESS, "request_id": request_id}
    if keyterms is not None:
        msg["keyterms"] = keyterms
    return orjson.dumps(msg)


def build_configure_failure(request_id: str, code: str, description: str) -> bytes:
    return orjson.dumps({"type": MessageType.CONFIGURE_FAILURE, "request_id": request_id, "code": code,
                         "description": description})


def build_control(kind: ControlType) -> str:
    """A control message without fields (KeepAlive, Finalize, CloseStream)."""
    return '{"type":"%s"}' % kind.value


# ------------------------------------------------------------------------------------- parsers


def _num(value: Any) -> float:
    return float(value) if type(value) in (int, float) else 0.0


def parse_results(msg: dict[str, Any]) -> Result | None:
    """A decoded ``Results`` message -> :class:`Result`; None when it has no usable alternative (no
    alternatives, or a word without text). Missing numbers are 0, missing flags False."""
    channel = msg.get("channel")
    alts = channel.get("alternatives") if type(channel) is dict else None
    if not alts or type(alts) is not list or type(alts[0]) is not dict:
        return None
    alt = alts[0]
    words = []
    for w in alt.get("words") or ():
        if type(w) is not dict:
            return None
        text = w.get("punctuated_word") or w.get("word")
        if type(text) is not str:
            return None
        words.append(Word(text, _num(w.get("start")), _num(w.get("end")), _num(w.get("confidence"))))
    start = _num(msg.get("start"))
    transcript = alt.get("transcript")
    return Result(
        is_final=msg.get("is_final") is True,
        text=transcript if type(transcript) is str else "",
        start=start,
        end=start + _num(msg.get("duration")),
        speech_final=msg.get("speech_final") is True,
        from_finalize=msg.get("from_finalize") is True,
        confidence=_num(alt.get("confidence")),
        words=words,
    )


def parse_control(text: str) -> tuple[ControlType | None, Any]:
    """A client text message -> (its control type, the decoded JSON value). (None, None): not JSON;
    (None, value): JSON, but not an object with a control type the API knows."""
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None, None
    kind = msg.get("type") if type(msg) is dict else None
    try:
        return (ControlType(kind) if type(kind) is str else None), msg
    except ValueError:
        return None, msg


def is_close_stream(message: bytes | str) -> bool:
    """Whether a client message asks the server to finish: CloseStream, or an empty binary message (the
    legacy end-of-stream signal). Cheap for audio and other text (parsed only if it names CloseStream)."""
    if message == b"":
        return True
    if not isinstance(message, str) or '"CloseStream"' not in message.replace(" ", ""):
        return False
    return parse_control(message)[0] is ControlType.CLOSE_STREAM

