"""A websockets ``ServerConnection`` that hands each complete message to a callback from ``data_received``.

websockets' asyncio connection queues every message in an assembler and wakes the handler task to read it:
a future, a task switch and an async-generator step per frame, which at hundreds of 36 ms streams costs
more than the emulator's own work. Here the message goes straight from the sans-I/O parser to the stream's
session in the same callback. Everything else stays websockets' own: handshake, ping/pong and keepalive,
close handshake and timeouts, ``max_size`` and protocol errors, flow control for writes.

Fast path: a read that holds exactly one complete, masked, unfragmented binary frame (the 36 ms audio frame
of every stream, nearly every read) is unmasked with websockets' own C ``apply_mask`` and handed over
without running websockets' generator-based parser. It is taken only when that parser is idle between
frames (empty buffer, open, no fragmented message, no debug logging) and the frame passes the checks
the parser would make (FIN, no RSV bits, masked, within ``max_size``), so the parser's state is the
same as if it had read the frame; anything else (control frames, text, several frames in one read, a
frame split across reads) goes through websockets unchanged.

Order is kept: messages that complete before :meth:`InlineConnection.attach` (a client may pipeline frames
right behind its upgrade request) are held, in order, and replayed by ``attach``; at most ``EARLY_LIMIT``
of them, then the connection fails with 1008. A refused handshake drops them with the connection.
Used for every connection of a segmenter-engine server (plain HTTP requests too, which send no frames);
the sphinx engine uses websockets' own ``ServerConnection`` and reads with ``async for``.
"""
from __future__ import annotations

from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import State

# websockets internals (the parser's state, raw sends, the overridden process_event): one guarded module
from rtaa_cli.internals import (acknowledge_pong, apply_mask, connection_gone, fail_now, frame_limit,
                                limit_read_size, parser_idle, set_connection_exc, write_text_nowait)

EARLY_LIMIT = 64  # messages held between the 101 and attach()
MAX_FRAGMENTS = 1024  # fragments of one message (max_size bounds their bytes; this bounds their count)

OnAudio = Callable[[bytes], None]
OnText = Callable[[str], None]


class InlineConnection(ServerConnection):
    _on_audio: OnAudio | None = None
    _on_text: OnText | None = None
    _on_closed: Callable[[], None] | None = None
    _early: list[tuple[bool, bytes]] | None = None
    _fragments: list[bytes] | None = None
    _fragment_text = False

    def attach(self, on_audio: OnAudio, on_text: OnText, on_closed: Callable[[], None]) -> None:
        """Deliver binary messages to ``on_audio`` and text messages to ``on_text`` from now on, and call
        ``on_closed`` as soon as the TCP connection is gone (in ``connection_lost`` itself: bookkeeping that
        waited for the handler task could still show the stream open to a client that already reconnected)."""
        early, self._early = self._early, None
        self._on_audio, self._on_text, self._on_closed = on_audio, on_text, on_closed
        for is_text, data in early or ():
            self._deliver(is_text, data)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._max_frame = frame_limit(self.protocol)  # the fast path leaves larger frames to websockets
        limit_read_size(transport)

    def data_received(self, data: bytes) -> None:
        on_audio = self._on_audio
        if on_audio is not None and data[0] == 0x82:
            if parser_idle(self.protocol):
                done = self._deliver_audio_frames(data, on_audio)
                if done == len(data):
                    return
                data = data[done:]  # the rest (another kind of frame, a partial one) is websockets' job
        super().data_received(data)

    def _deliver_audio_frames(self, data: bytes, on_audio: OnAudio) -> int:
        """Hand over the leading whole masked binary frames of ``data``; returns the bytes consumed.
        0x82 = FIN + binary, no RSV bits; the mask bit must be set; 7- or 16-bit length forms only
        (64 KiB frames and more are left to websockets), within ``max_size``."""
        view = memoryview(data)
        size, pos, limit = len(data), 0, self._max_frame
        while size - pos > 6 and data[pos] == 0x82:
            second = data[pos + 1]
            if not second & 0x80:
                break  # unmasked: websockets fails the connection (1002)
            length, head = second & 0x7F, pos + 2
            if length == 126:
                length, head = int.from_bytes(data[head:head + 2], "big"), head + 2
            elif length == 127:
                break
            end = head + 4 + length
            if end > size or length > limit:
                break
            on_audio(apply_mask(view[head + 4:end], view[head:head + 4]))
            pos = end
        return pos

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        on_closed, self._on_closed = self._on_closed, None
        self._on_audio = self._on_text = None  # drop the references to the stream's state
        if on_closed is not None:
            on_closed()

    def process_event(self, event) -> None:
        if self.request is None:  # the handshake request
            super().process_event(event)
            return
        assert isinstance(event, Frame)
        opcode = event.opcode
        if opcode is Opcode.BINARY or opcode is Opcode.TEXT:
            if event.fin:
                self._deliver(opcode is Opcode.TEXT, event.data)
            else:
                self._fragments, self._fragment_text = [event.data], opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            fragments = self._fragments
            if fragments is None:  # the protocol parser rejects this already; defensive
                return
            fragments.append(event.data)
            if event.fin:
                self._fragments = None
                self._deliver(self._fragment_text, b"".join(fragments))
            elif len(fragments) > MAX_FRAGMENTS:
                self._fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
        elif opcode is Opcode.PONG:
            acknowledge_pong(self, bytes(event.data))
        # PING and CLOSE are answered by the protocol itself.

    def _deliver(self, is_text: bool, data: bytes) -> None:
        on_audio = self._on_audio
        if on_audio is None:
            if self._early is None:
                self._early = []
            if len(self._early) >= EARLY_LIMIT:
                self._fail(CloseCode.POLICY_VIOLATION, "too many messages before the stream was ready")
                return
            self._early.append((is_text, data))
            return
        if not is_text:
            on_audio(data)
            return
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:  # same close as websockets' recv(): 1007
            set_connection_exc(self, exc)
            self._fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
            return
        self._on_text(text)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection like websockets does (close frame, then EOF), bounded by close_timeout."""
        if self.protocol.state is not State.OPEN:
            return
        fail_now(self, code, reason)
        if self.close_timeout is not None:
            self.loop.call_later(self.close_timeout, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not connection_gone(self):
            self.transport.abort()

    def write_text_now(self, data: bytes) -> bool:
        """Send a UTF-8 text message without awaiting, when the socket takes it at once (open, not paused).
        Returns False when the caller must fall back to ``await send()`` (which waits for the buffer)."""
        return write_text_nowait(self, data)
