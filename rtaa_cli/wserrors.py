"""One short reason for a failed WebSocket connection or transport, shared by every caller (replay's and
smoke's asyncio caller, the soak's gevent caller) so the same failure reads the same everywhere and the
soak's failure kinds group it (``connect: HTTP 404``)."""
from __future__ import annotations

import asyncio

from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

from rtaa_cli.feeds.url import redact_url


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


def describe_connect_error(url: str, exc: BaseException) -> str:
    """One readable line for a failed WebSocket handshake: the URL (credentials redacted) and the reason."""
    reason = ws_error_reason(exc)
    if isinstance(exc, InvalidStatus):
        reason = f"server rejected the WebSocket handshake with {reason}"
    elif isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        reason = "timed out opening the WebSocket"
    elif isinstance(exc, OSError) and not isinstance(exc, ConnectionRefusedError):
        reason = f"cannot connect ({reason})"
    elif not isinstance(exc, (InvalidURI, ConnectionRefusedError)):
        reason = f"cannot open the WebSocket ({type(exc).__name__}: {reason})"
    return f"{redact_url(url)}: {reason}"
