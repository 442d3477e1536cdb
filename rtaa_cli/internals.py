"""Every place rtaa reaches past a library's documented API, in one module, with a version guard.

Each is a measured hot-path shortcut (see the callers' docstrings for the figures):

| function | library internal it relies on | used by |
|---|---|---|
| :func:`apply_mask` | ``websockets.speedups.apply_mask`` (C masking) | emulator fast path, soak frame writer |
| :func:`parser_idle`, :func:`frame_limit` | ``Protocol.current_size``, ``.reader.buffer``, ``.debug``, ``.max_message_size``, ``.max_fragment_size`` | :mod:`rtaa_cli.emulator.connection` |
| :func:`fail_now`, :func:`write_text_nowait`, :func:`acknowledge_pong`, :func:`set_connection_exc`, :func:`connection_gone` | asyncio ``Connection.send_data()``, ``.paused``, ``.send_in_progress``, ``.acknowledge_pings()``, ``.set_connection_exc()``, ``.connection_lost_waiter``; ``Protocol.fail()``, ``.send_text()`` | :mod:`rtaa_cli.emulator.connection` |
| ``INLINE_HOOKS`` | asyncio ``Connection.process_event`` (overridden) | :class:`rtaa_cli.emulator.connection.InlineConnection` |
| :func:`text_frame`, :func:`write_nowait`, :func:`flush_tail`, :func:`raw_socket` | sync ``Connection.protocol_mutex``, ``.socket`` (raw RFC 6455 frames written to it) | :mod:`rtaa_cli.soak` |
| :func:`limit_read_size` | asyncio selector transport's ``max_size`` (read size) | emulator, pipeline server |
| :func:`sdk_websocket`, :func:`write_backlog` | deepgram-sdk's ``AsyncV1SocketClient._websocket`` and its ``transport`` | :mod:`rtaa_cli.pipeline.providers.deepgram` |
| :func:`send_binary_nowait` | legacy ``WebSocketCommonProtocol`` (the SDK's): ``.state``, ``._paused``, ``._fragmented_message_waiter``, ``.transfer_data_task``, ``.extensions``, ``.write_frame_sync()``, ``.transport`` | :mod:`rtaa_cli.pipeline.providers.deepgram` (audio sends) |

Importing this module checks the installed versions against ``SUPPORTED`` and probes the attributes
it can without a connection; a mismatch raises :class:`UnsupportedLibrary` naming the supported
versions, instead of a wrong result or an ``AttributeError`` deep inside a call. tests/test_internals.py
holds the contract: every function against real connections on 127.0.0.1, so an upgrade that breaks
one fails there loudly. To support a new version: run that file against it, then add it here.
"""
from __future__ import annotations

import os
import socket
from importlib.metadata import PackageNotFoundError, version
from typing import Any

# distribution -> the release series whose internals tests/test_internals.py was run against
SUPPORTED: dict[str, tuple[str, ...]] = {"websockets": ("17.4",), "deepgram-sdk": ("7.16",)}


class UnsupportedLibrary(RuntimeError):
    """An installed library is not a version whose internals rtaa was checked against."""


def check_version(dist: str, installed: str | None = None) -> str:
    """The installed version of ``dist``; raises :class:`UnsupportedLibrary` unless it is in a supported
    series (``17.4`` accepts ``17.4`` and ``17.4.x``)."""
    series = SUPPORTED[dist]
    if installed is None:
        try:
            installed = version(dist)
        except PackageNotFoundError:
            raise UnsupportedLibrary(f"{dist} is not installed; rtaa needs {dist} {_names(series)}") from None
    if not any(installed == s or installed.startswith(s + ".") for s in series):
        raise UnsupportedLibrary(
            f"{dist} {installed} is installed, but rtaa reaches into {dist}'s internals (rtaa_cli/internals.py) "
            f"checked only with {dist} {_names(series)}: install a supported version (pyproject.toml pins one), "
            f"or run tests/test_internals.py against {installed} and add it to SUPPORTED")
    return installed


def _names(series: tuple[str, ...]) -> str:
    return " or ".join(f"{s}.x" for s in series)


def _probe(owner: Any, names: tuple[str, ...], what: str) -> None:
    missing = [n for n in names if not hasattr(owner, n)]
    if missing:
        raise UnsupportedLibrary(f"{what} has no {', '.join(missing)} any more (rtaa_cli/internals.py relies on it); "
                                 f"supported: websockets {_names(SUPPORTED['websockets'])}")


check_version("websockets")
check_version("deepgram-sdk")

from websockets.asyncio.server import ServerConnection  # noqa: E402  (after the guard: a clear error first)
from websockets.protocol import State  # noqa: E402
from websockets.server import ServerProtocol  # noqa: E402

try:  # websockets' C extension (always built for CPython wheels); the pure-Python one is the fallback
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

# asyncio Connection methods InlineConnection overrides or calls (they are not documented API)
INLINE_HOOKS = ("process_event", "send_data", "acknowledge_pings", "set_connection_exc", "data_received",
                "connection_made", "connection_lost")
_probe(ServerConnection, INLINE_HOOKS, "websockets.asyncio.server.ServerConnection")
_probe(ServerProtocol(), ("current_size", "reader", "debug", "max_message_size", "max_fragment_size", "send_text",
                          "fail"), "websockets.server.ServerProtocol")

__all__ = ["SUPPORTED", "UnsupportedLibrary", "check_version", "apply_mask", "INLINE_HOOKS", "parser_idle",
           "frame_limit", "fail_now", "write_text_nowait", "acknowledge_pong", "set_connection_exc", "connection_gone",
           "text_frame", "binary_frame", "write_nowait", "flush_tail", "raw_socket", "limit_read_size", "READ_SIZE", "sdk_websocket",
           "write_backlog", "send_binary_nowait"]


# ----------------------------------------------------------------- websockets, asyncio server side
def parser_idle(protocol: Any) -> bool:
    """websockets' frame parser is between frames (no partial frame buffered, no fragmented message,
    open, no debug logging): a whole frame may be handled without it and its state stays the same."""
    return (protocol.current_size is None and protocol.state is State.OPEN and not protocol.reader.buffer
            and not protocol.debug)


def frame_limit(protocol: Any) -> int:
    """The largest frame the parser accepts (``max_size``); unbounded as 2**62."""
    limits = [x for x in (protocol.max_message_size, protocol.max_fragment_size) if x is not None]
    return min(limits) if limits else 1 << 62


def fail_now(conn: Any, code: int, reason: str) -> None:
    """Fail the connection as websockets does on a protocol error: close frame now, then EOF."""
    conn.protocol.fail(code, reason)
    conn.send_data()


def write_text_nowait(conn: Any, data: bytes) -> bool:
    """Send UTF-8 ``data`` as a text message without awaiting, if the transport takes it at once (open,
    not paused, no send under way). False: use ``await conn.send()``."""
    if conn.paused or conn.protocol.state is not State.OPEN or conn.send_in_progress is not None:
        return False
    conn.protocol.send_text(data)
    conn.send_data()
    return True


def acknowledge_pong(conn: Any, data: bytes) -> None:
    """A pong arrived (``process_event`` is overridden, so websockets' own handling does not run)."""
    conn.acknowledge_pings(data)


def set_connection_exc(conn: Any, exc: BaseException) -> None:
    """Record why the connection fails (raised from the handler's next receive, as websockets does)."""
    conn.set_connection_exc(exc)


def connection_gone(conn: Any) -> bool:
    """The TCP connection is closed (websockets' ``connection_lost`` ran)."""
    return bool(conn.connection_lost_waiter.done())


# ---------------------------------------------------------------- asyncio transport
READ_SIZE = 64 * 1024  # bytes per socket read


def limit_read_size(transport: Any) -> None:
    """Read at most ``READ_SIZE`` per ``recv`` (asyncio's default 256 KiB read is above glibc's mmap
    threshold: an mmap/munmap per small frame). Event loops without the attribute (uvloop) ignore it."""
    try:
        transport.max_size = READ_SIZE
    except AttributeError:  # pragma: no cover - another loop's transport
        pass


# ------------------------------------------------------------- websockets, sync client side (soak)
_MASK_POOL_BYTES = 4096  # masking keys drawn from the OS 1024 at a time (one getrandom per 1024 frames)


class _Masks:
    __slots__ = ("pool", "i")

    def __init__(self) -> None:
        self.pool, self.i = b"", _MASK_POOL_BYTES

    def next(self) -> bytes:
        i = self.i
        if i >= _MASK_POOL_BYTES:
            self.pool, i = os.urandom(_MASK_POOL_BYTES), 0
        self.i = i + 4
        return self.pool[i:i + 4]


_masks = _Masks()


def text_frame(payload: bytes) -> bytes:
    """One final, masked RFC 6455 text frame (what websockets' ``Frame(Opcode.TEXT, payload)
    .serialize(mask=True)`` returns, with a different random key), without its per-frame object,
    buffer and ``getrandom`` call: masking keys come from ``os.urandom`` in bulk."""
    return _masked_frame(0x81, payload)


def binary_frame(payload: bytes) -> bytes:
    """:func:`text_frame` for a binary message (opcode 2)."""
    return _masked_frame(0x82, payload)


def _masked_frame(first: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 65536:
        head = bytes((first, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 0xFF)) + n.to_bytes(8, "big")
    mask = _masks.next()
    return head + mask + apply_mask(payload, mask)


def raw_socket(ws: Any) -> socket.socket | None:
    """The plain socket under a sync connection, or None (TLS or another wrapper: its own send path)."""
    sock = ws.socket
    return sock if type(sock) is socket.socket else None


def write_nowait(ws: Any, data: bytes) -> bytes | None:
    """Write ``data`` (whole frames) to a websockets sync connection's socket now, or not at all.

    Returns ``b""`` when all was written, the unsent tail after a partial write, or ``None`` when
    nothing was written (connection not OPEN, websockets holds its send lock, buffer full, not a
    plain socket). Never yields to other greenlets, so the checks hold for the write.
    """
    if ws.state is not State.OPEN or ws.protocol_mutex.locked():
        return None
    sock = raw_socket(ws)
    if sock is None:
        return None
    fd = sock.fileno()
    if fd < 0:
        return None
    try:
        n = os.write(fd, data)  # gevent keeps the fd non-blocking (checked at stream open)
    except BlockingIOError:
        return None
    except OSError:
        return None  # reset / broken pipe: the caller's ws.send reports it
    return data[n:]


def flush_tail(ws: Any, tail: bytes) -> None:
    """Finish a frame :func:`write_nowait` wrote in part, under websockets' send lock (frames never
    interleave). Raises websockets' ``ConnectionClosed`` when the connection is no longer open."""
    if ws.state is not State.OPEN:
        raise ws.protocol.close_exc
    with ws.protocol_mutex:
        ws.socket.sendall(tail)


# ------------------------------------------------------------------------------ deepgram-sdk
def sdk_websocket(sock: Any) -> Any:
    """The websocket under the SDK's live socket client: results are read from it raw (orjson instead
    of the SDK's pydantic models, ~10 % of the pipeline's CPU at 100 calls)."""
    ws = sock._websocket
    if ws is None or not hasattr(ws, "transport"):
        raise UnsupportedLibrary(f"deepgram-sdk's socket client has no usable _websocket ({type(ws).__name__}); "
                                 f"supported: deepgram-sdk {_names(SUPPORTED['deepgram-sdk'])}")
    return ws


def send_binary_nowait(ws: Any, data: bytes) -> bool:
    """Send one binary message on the SDK's (legacy) websocket now, when its ``send()`` would not wait:
    open, writes not paused, no fragmented send in progress. False (nothing written) otherwise; the
    caller then awaits ``ws.send()``, which waits or raises ``ConnectionClosed`` as usual.

    Why: ``send_media`` -> ``send`` -> ``write_frame`` + ``drain`` are four coroutine layers, and each
    frame's ``Frame`` object and ``getrandom`` for its masking key cost ~6 % of the pipeline's CPU at
    200 calls (py-spy, BENCHMARKS.md); the frame is the same bytes websockets writes (keys in bulk)."""
    if (ws.state is not State.OPEN or ws._paused or ws._fragmented_message_waiter is not None
            or ws.transfer_data_task.done()):
        return False
    transport = ws.transport
    if transport is None or transport.is_closing():
        return False
    if ws.extensions:  # e.g. permessage-deflate: let websockets encode the frame
        ws.write_frame_sync(True, 2, data)
    else:
        transport.write(_masked_frame(0x82, data))
    return True


def write_backlog(ws: Any) -> int | None:
    """Bytes queued in the SDK websocket's transport, None when the transport is gone or closing."""
    transport = ws.transport
    if transport is None or transport.is_closing():
        return None
    return int(transport.get_write_buffer_size())
