"""One short reason for a failed WebSocket connection or transport, shared by every caller (replay's and
smoke's asyncio caller, the soak's gevent caller) so the same failure reads the same everywhere and the
soak's failure kinds group it (``connect: HTTP 404``)."""
from __future__ import annotations

import asyncio

from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI


def ws_error_reason(exc: BaseException) -> str:
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, InvalidURI):
        return "not a ws:// or wss:// URL"
    if isinstance(exc, ConnectionClosed):
        rcvd = exc.rcvd
        return f"closed {rcvd.code} {rcvd.reason}".rstrip() if rcvd else "connection lost (no close frame)"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:160]
