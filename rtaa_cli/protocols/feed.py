"""Sans-I/O schema of rtaa's transcript feed (see docs/transcript-feed.md): one JSON object per message.

The pipeline builds its messages with the ``*_message`` functions (times are passed in: no clock here;
the fan-out adds ``sent_at`` when it writes one out); every reader turns a decoded message into the
normalised :class:`FeedEvent` with :func:`parse`. :mod:`rtaa_cli.feeds.parse` extends that to the other
schemas a target may publish (Deepgram's own ``Results``, anything through a field mapping).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """``type`` of rtaa's feed messages."""

    TRANSCRIPT = "transcript"
    CALL_STARTED = "call_started"
    CALL_ENDED = "call_ended"
    GAP = "gap"


class GapCause(StrEnum):
    """``cause`` of a ``gap`` message (and of ``rtaa_audio_gaps_total``): why no final will cover it."""

    REPLAY_TRIM = "replay_trim"  # a provider outage outlasted the replay buffer: its oldest audio was never resent
    FINALIZE_TIMEOUT = "finalize_timeout"  # the finals did not come within the finalize timeout after the stop
    PROVIDER_UNAVAILABLE = "provider_unavailable"  # the call ended while its provider was given up on


OTHER = "other"  # a FeedEvent's kind for a message understood but not a result (a newer rtaa type, a keep-alive)
SENT_AT = "sent_at"  # wall time the fan-out wrote the message, added to every message


# ------------------------------------------------------------------------------------ builders


def transcript_message(*, interaction_id: str, stream_sid: str, seq: int, is_final: bool, speech_final: bool,
                       from_finalize: bool, text: str, confidence: float, words: Sequence[Mapping[str, Any]],
                       audio_start_ms: float, audio_end_ms: float, provider: str, provider_connection: int,
                       received_at: float) -> dict[str, Any]:
    """``words``: ``{"word", "start", "end", "confidence"}`` each, times in stream audio seconds."""
    return {
        "type": Kind.TRANSCRIPT,
        "interaction_id": interaction_id,
        "stream_sid": stream_sid,
        "seq": seq,
        "is_final": is_final,
        "speech_final": speech_final,
        "from_finalize": from_finalize,
        "text": text,
        "confidence": confidence,
        "words": words,
        "audio_start_ms": audio_start_ms,
        "audio_end_ms": audio_end_ms,
        "provider": provider,
        "provider_connection": provider_connection,
        "received_at": received_at,
    }


def word(text: str, start: float, end: float, confidence: float) -> dict[str, Any]:
    """One entry of a transcript's ``words`` (``start``/``end`` in stream audio seconds)."""
    return {"word": text, "start": start, "end": end, "confidence": confidence}


def call_started_message(interaction_id: str, stream_sid: str, at: float) -> dict[str, Any]:
    return {"type": Kind.CALL_STARTED, "interaction_id": interaction_id, "stream_sid": stream_sid, "at": at}


def call_ended_message(interaction_id: str, reason: str, at: float) -> dict[str, Any]:
    return {"type": Kind.CALL_ENDED, "interaction_id": interaction_id, "reason": reason, "at": at}


def gap_message(interaction_id: str, stream_sid: str, cause: GapCause, audio_start_ms: float,
                audio_end_ms: float, lost_ms: float, at: float) -> dict[str, Any]:
    return {"type": Kind.GAP, "interaction_id": interaction_id, "stream_sid": stream_sid, "cause": cause,
            "audio_start_ms": audio_start_ms, "audio_end_ms": audio_end_ms, "lost_ms": lost_ms, "at": at}


# -------------------------------------------------------------------------------------- reader


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """A feed message, normalised (for any schema a reader understands). ``call_id`` None: the message
    names no call (a per-call feed)."""

    kind: str  # a Kind, or OTHER
    call_id: str | None = None
    text: str = ""
    is_final: bool = False
    audio_start_ms: float | None = None
    audio_end_ms: float | None = None
    seq: int | None = None
    speech_final: bool = False
    from_finalize: bool = False
    provider_connection: int | None = None
    raw: Mapping[str, Any] | None = None


def number(value: Any) -> float | None:
    """A JSON number as a float (None for anything else, booleans included)."""
    return float(value) if type(value) in (int, float) else None


_KINDS = frozenset(Kind)


def parse(msg: Mapping[str, Any]) -> FeedEvent | None:
    """One decoded message of rtaa's schema -> its event; None when it is not one (no ``interaction_id``,
    or a ``type`` that is not a :class:`Kind`). Wrong field types read as absent."""
    kind = msg.get("type")
    if type(kind) is not str or kind not in _KINDS or "interaction_id" not in msg:
        return None
    call = msg.get("interaction_id")
    call_id = None if call is None else str(call)
    if kind == Kind.TRANSCRIPT:
        seq, conn, text = msg.get("seq"), msg.get("provider_connection"), msg.get("text")
        return FeedEvent(
            Kind.TRANSCRIPT, call_id, text=text if type(text) is str else "", is_final=msg.get("is_final") is True,
            audio_start_ms=number(msg.get("audio_start_ms")), audio_end_ms=number(msg.get("audio_end_ms")),
            seq=seq if type(seq) is int else None, speech_final=msg.get("speech_final") is True,
            from_finalize=msg.get("from_finalize") is True, provider_connection=conn if type(conn) is int else None,
            raw=msg)
    if kind == Kind.GAP:
        return FeedEvent(Kind.GAP, call_id, audio_start_ms=number(msg.get("audio_start_ms")),
                         audio_end_ms=number(msg.get("audio_end_ms")), raw=msg)
    return FeedEvent(Kind(kind), call_id, raw=msg)
