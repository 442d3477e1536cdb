"""Sans-I/O transcript-feed parser: one feed message -> one normalised :class:`FeedEvent`.

Every feed tap (WebSocket, SSE/HTTP, Redis, webhook) hands its messages here, so every caller
understands the same schemas the same way:

* rtaa's own schema (:mod:`rtaa_cli.protocols.feed`: ``transcript``, ``call_started``, ``call_ended``,
  ``gap``: audio the pipeline says no final will cover);
* Deepgram's live ``Results`` message forwarded as is (``channel.alternatives[0].transcript``,
  ``is_final``, ``start``/``duration`` in seconds);
* any other JSON schema through a :class:`FieldMapping` (dotted paths, ``--feed-map``).

A message that cannot be understood raises :class:`FeedError` with a reason a user can act on;
the recorder counts it (``feed_unrecognised``) instead of silently dropping it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import orjson

from rtaa_cli.protocols import deepgram as dg
from rtaa_cli.protocols import feed
from rtaa_cli.protocols.feed import FeedEvent, Kind

MAPPING_KEYS = ("call_id", "text", "is_final", "audio_start_ms", "audio_end_ms", "audio_start_s",
                "audio_end_s", "seq", "ended")
_MISSING = object()


class FeedError(ValueError):
    """A feed message rtaa could not understand; ``reason`` says why (one line)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Test:
    path: tuple[str, ...]
    equals: str | None  # None: the value must be JSON true


@dataclass(frozen=True)
class FieldMapping:
    """Where a foreign schema keeps each field, as dotted paths (list indices are numbers).

    Spec (CLI ``--feed-map``, or a TOML table): ``text=payload.text, is_final=type==final,
    call_id=meta.call, audio_end_ms=end_ms``. ``is_final`` and ``ended`` are a path whose value is
    JSON ``true``, or ``PATH==VALUE`` (compared as text). ``audio_*_s`` give seconds instead of ms.
    ``text`` is required: a message without a string at that path is not understood.
    """

    text: tuple[str, ...]
    call_id: tuple[str, ...] | None = None
    is_final: _Test | None = None
    ended: _Test | None = None
    audio_start: tuple[tuple[str, ...], float] | None = None  # (path, ms per unit)
    audio_end: tuple[tuple[str, ...], float] | None = None
    seq: tuple[str, ...] | None = None
    spec: str = ""

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any]) -> FieldMapping:
        """From ``"k=path,k=path"`` or a mapping; ValueError with the offending item otherwise."""
        if isinstance(spec, str):
            items: dict[str, str] = {}
            for item in (s.strip() for s in spec.split(",")):
                if not item:
                    continue
                key, found, path = item.partition("=")
                if not found:
                    raise ValueError(f"feed mapping {item!r}: expected FIELD=PATH, e.g. text=payload.text")
                items[key.strip()] = path.strip()
        else:
            items = {str(k): str(v) for k, v in spec.items()}
        unknown = sorted(set(items) - set(MAPPING_KEYS))
        if unknown:
            raise ValueError(f"feed mapping: unknown field(s) {', '.join(unknown)} (use {', '.join(MAPPING_KEYS)})")
        if not items.get("text"):
            raise ValueError("feed mapping: text=PATH is required (where the transcript text is)")
        for key, path in items.items():
            if not path or path.startswith(".") or path.endswith(".") or ".." in path:
                raise ValueError(f"feed mapping {key}={path!r}: not a dotted path")

        def test(key: str) -> _Test | None:
            if key not in items:
                return None
            path, found, value = items[key].partition("==")
            return _Test(_split(path), value if found else None)

        def offset(key: str) -> tuple[tuple[str, ...], float] | None:
            if f"{key}_ms" in items:
                return _split(items[f"{key}_ms"]), 1.0
            if f"{key}_s" in items:
                return _split(items[f"{key}_s"]), 1000.0
            return None

        return cls(text=_split(items["text"]), call_id=_split(items["call_id"]) if "call_id" in items else None,
                   is_final=test("is_final"), ended=test("ended"), audio_start=offset("audio_start"),
                   audio_end=offset("audio_end"), seq=_split(items["seq"]) if "seq" in items else None,
                   spec=",".join(f"{k}={v}" for k, v in items.items()))

    def event(self, msg: Mapping[str, Any]) -> FeedEvent:
        call = _get(msg, self.call_id) if self.call_id else None
        call_id = None if call is _MISSING or call is None else str(call)
        if self.ended is not None and _check(msg, self.ended):
            return FeedEvent(Kind.CALL_ENDED, call_id, raw=msg)
        text = _get(msg, self.text)
        if not isinstance(text, str):
            what = "missing" if text is _MISSING else f"a {type(text).__name__}, not text"
            raise FeedError(f"field mapping text={'.'.join(self.text)}: {what} (keys: {_keys(msg)})")
        seq = _get(msg, self.seq) if self.seq else None
        return FeedEvent(
            Kind.TRANSCRIPT, call_id, text=text,
            is_final=True if self.is_final is None else _check(msg, self.is_final),
            audio_start_ms=_scaled(msg, self.audio_start), audio_end_ms=_scaled(msg, self.audio_end),
            seq=seq if type(seq) is int else None, raw=msg)


def _split(path: str) -> tuple[str, ...]:
    return tuple(path.strip().split("."))


def _get(msg: Any, path: tuple[str, ...] | None) -> Any:
    value = msg
    for part in path or ():
        if isinstance(value, Mapping):
            value = value.get(part, _MISSING)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def _check(msg: Mapping[str, Any], test: _Test) -> bool:
    value = _get(msg, test.path)
    if test.equals is None:
        return value is True
    if value is _MISSING or value is None:
        return False
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return text == test.equals


def _scaled(msg: Mapping[str, Any], where: tuple[tuple[str, ...], float] | None) -> float | None:
    if where is None:
        return None
    value = _get(msg, where[0])
    return float(value) * where[1] if type(value) in (int, float) else None


def _keys(msg: Mapping[str, Any]) -> str:
    keys = sorted(map(str, msg))
    return ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "") if keys else "none"


def decode(raw: str | bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    """A feed message's JSON object (taps that already decoded pass the mapping through)."""
    if isinstance(raw, Mapping):
        return raw
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise FeedError("not JSON") from None
    if type(msg) is not dict:
        raise FeedError(f"a JSON {type(msg).__name__}, not an object")
    return msg


def parse_message(raw: str | bytes | Mapping[str, Any], mapping: FieldMapping | None = None) -> FeedEvent:
    """Normalise one feed message (see the module docstring); FeedError when not understood."""
    msg = decode(raw)
    if mapping is not None:
        return mapping.event(msg)
    event = feed.parse(msg)
    if event is not None:
        return event
    kind = msg.get("type")
    if kind == dg.MessageType.RESULTS and isinstance(msg.get("channel"), Mapping):
        return _deepgram_event(msg)
    if kind in _DEEPGRAM_OTHER:
        return FeedEvent(feed.OTHER, raw=msg)
    if "interaction_id" in msg and isinstance(kind, str):
        return FeedEvent(feed.OTHER, str(msg["interaction_id"]), raw=msg)  # a newer rtaa message type
    shown = f"type {kind!r}" if kind is not None else "no 'type'"
    raise FeedError(f"unknown schema ({shown}; keys: {_keys(msg)}): give a field mapping, e.g. "
                    "--feed-map 'text=text,is_final=type==final'")


# Deepgram's messages that carry no transcript (a target forwarding its provider's stream as is)
_DEEPGRAM_OTHER = (dg.MessageType.METADATA, dg.MessageType.SPEECH_STARTED, dg.MessageType.UTTERANCE_END,
                   dg.ControlType.KEEP_ALIVE)


def _deepgram_event(msg: Mapping[str, Any]) -> FeedEvent:
    text = _get(msg, ("channel", "alternatives", "0", "transcript"))
    start, duration = feed.number(msg.get("start")), feed.number(msg.get("duration"))
    end_ms = None if start is None or duration is None else (start + duration) * 1000.0
    return FeedEvent(
        Kind.TRANSCRIPT, None, text=text if type(text) is str else "", is_final=msg.get("is_final") is True,
        audio_start_ms=None if start is None else start * 1000.0, audio_end_ms=end_ms,
        speech_final=msg.get("speech_final") is True, from_finalize=msg.get("from_finalize") is True, raw=msg)
