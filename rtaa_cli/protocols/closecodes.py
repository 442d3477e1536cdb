"""The one RFC 6455 close-code table rtaa uses (ingest, emulator, callers, reports).

Caller's fault: 1003/1007/1008/1009. Ours: 1011. Shutdown: 1001. See docs/exotel-protocol.md#close-codes.
"""
from enum import IntEnum


class Close(IntEnum):
    NORMAL = 1000  # clean end (after stop, after CloseStream)
    GOING_AWAY = 1001  # server shutting down (SIGTERM) or superseded stream
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003  # e.g. binary frame where Exotel sends JSON text, unknown event
    NO_STATUS = 1005
    ABNORMAL = 1006  # no close frame (TCP drop); never sent on the wire
    INVALID_PAYLOAD = 1007  # malformed JSON, bad base64, wrong types, bad audio format
    POLICY_VIOLATION = 1008  # auth, rate limit, media before start, undecodable audio (Deepgram)
    MESSAGE_TOO_BIG = 1009  # frame over the size limit
    INTERNAL_ERROR = 1011  # our fault; Deepgram's idle timeout (NET-0001) also uses it
    TRY_AGAIN_LATER = 1013  # at capacity (max concurrent calls)


# Closes that end a call normally from the caller's point of view.
CLEAN_CLOSES = frozenset({Close.NORMAL, Close.GOING_AWAY})


def describe(code: int | None) -> str:
    """Human name of a close code, e.g. ``1011 INTERNAL_ERROR``."""
    if code is None:
        return "no close frame"
    try:
        return f"{code} {Close(code).name}"
    except ValueError:
        return str(code)
