"""A recording Exotel ingest + transcript feed on 127.0.0.1 for the replay/caller tests.

It runs its own asyncio loop in a thread so that both in-process callers (``asyncio.run``) and
the real CLI in a subprocess can talk to it. Everything is recorded with ``time.monotonic()``
receive times. Behaviours are switches: close with a code after N media frames, send messages
to the caller, publish a fake transcript feed (per call and firehose) with ``call_ended``.
"""
from __future__ import annotations

import asyncio
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import orjson
import websockets
from websockets.asyncio.server import ServerConnection, serve

from rtaa_cli.protocols.exotel import Media, Start, Stop, parse_event

BOUND_S = 20.0  # safety net for waits in tests; a hang fails with a message instead


@dataclass
class Connection:
    path: str
    headers: dict[str, str]
    messages: list[tuple[float, str | bytes]] = field(default_factory=list)  # (monotonic, frame)
    events: list[Any] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def times_of(self, kind: type) -> list[float]:
        return [t for (t, _), e in zip(self.messages, self.events) if isinstance(e, kind)]


class RecordingServer:
    def __init__(self, *, close_after_media: int | None = None, close_code: int = 1011,
                 close_reason: str = "internal error", close_on_stop: bool = False,
                 to_caller: list[str] | None = None, transcript_every: int = 0,
                 send_call_ended: bool = True, other_interaction: bool = False) -> None:
        self.close_after_media = close_after_media
        self.close_code = close_code
        self.close_reason = close_reason
        self.close_on_stop = close_on_stop
        self.to_caller = to_caller or []
        self.transcript_every = transcript_every
        self.send_call_ended = send_call_ended
        self.other_interaction = other_interaction
        self.connections: list[Connection] = []
        self.feed_subscribers: dict[str, list[ServerConnection]] = {}
        self.feed_sent: list[dict[str, Any]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._finished = threading.Condition()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="recording-exotel-server", daemon=True)

    # lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> RecordingServer:
        self._thread.start()
        assert self._ready.wait(BOUND_S), "test server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)  # type: ignore[union-attr]
        self._thread.join(BOUND_S)
        assert not self._thread.is_alive(), "test server did not stop"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        # max_queue=None: after this server closes mid-stream it stops consuming; an unbounded queue
        # lets the closing handshake complete instead of stalling on a full queue (test-only).
        async with serve(self._handler, "127.0.0.1", 0, compression=None, max_queue=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def url(self, path: str = "/exotel", userinfo: str = "") -> str:
        return f"ws://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}{path}"

    def wait_for_connections(self, n: int) -> list[Connection]:
        """The first ``n`` Exotel connections, once the server has seen each of them end."""
        def finished() -> bool:
            return sum(c.closed.is_set() for c in self.connections) >= n

        with self._finished:
            assert self._finished.wait_for(finished, BOUND_S), (
                f"expected {n} finished connections, have {len(self.connections)}")
        return [c for c in self.connections if c.closed.is_set()][:n]

    # handlers ----------------------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        path = ws.request.path
        if path.startswith("/v1/transcripts"):
            await self._feed(ws, path)
            return
        conn = Connection(path, {k.lower(): v for k, v in ws.request.headers.raw_items()})
        self.connections.append(conn)
        media = 0
        call_sid = ""
        bytes_per_ms = 16.0
        try:
            for text in self.to_caller:
                await ws.send(text)
            async for frame in ws:
                conn.messages.append((time.monotonic(), frame))
                event = parse_event(frame)
                conn.events.append(event)
                if isinstance(event, Start):
                    call_sid = event.call_sid
                    bytes_per_ms = event.sample_rate * 2 / 1000
                elif isinstance(event, Media):
                    media += 1
                    if self.transcript_every and media % self.transcript_every == 0:
                        audio_ms = sum(len(e.payload) for e in conn.of(Media)) / bytes_per_ms
                        await self._publish(call_sid, final=media % (2 * self.transcript_every) == 0,
                                            audio_end_ms=audio_ms)
                    if self.close_after_media is not None and media >= self.close_after_media:
                        await ws.close(self.close_code, self.close_reason)
                        break
                elif isinstance(event, Stop):
                    if self.transcript_every:
                        audio_ms = sum(len(e.payload) for e in conn.of(Media)) / bytes_per_ms
                        await self._publish(call_sid, final=True, audio_end_ms=audio_ms, from_finalize=True)
                        if self.send_call_ended:
                            await self._send_feed(call_sid, {"type": "call_ended", "interaction_id": call_sid,
                                                             "reason": "stopped", "at": time.time()})
                    if self.close_on_stop:
                        await ws.close(1000, "bye")
                        break
        except websockets.ConnectionClosed:
            pass
        finally:
            with self._finished:
                conn.closed.set()
                self._finished.notify_all()

    async def _feed(self, ws: ServerConnection, path: str) -> None:
        key = urllib.parse.unquote(path.rsplit("/", 1)[-1]) if path.count("/") >= 3 else "*"
        self.feed_subscribers.setdefault(key, []).append(ws)
        try:
            await ws.wait_closed()
        finally:
            self.feed_subscribers[key].remove(ws)

    async def _publish(self, call_sid: str, *, final: bool, audio_end_ms: float, from_finalize: bool = False) -> None:
        seq = sum(1 for m in self.feed_sent if m.get("interaction_id") == call_sid and m["type"] == "transcript") + 1
        msg = {"type": "transcript", "interaction_id": call_sid, "stream_sid": "x", "seq": seq,
               "is_final": final, "speech_final": final, "from_finalize": from_finalize,
               "text": f"words up to {audio_end_ms:.0f}", "audio_start_ms": max(0.0, audio_end_ms - 500),
               "audio_end_ms": audio_end_ms, "provider": "test", "provider_connection": 1,
               "received_at": time.time(), "sent_at": time.time()}
        await self._send_feed(call_sid, msg)
        if self.other_interaction:  # firehose noise that the caller must ignore
            await self._send_feed(call_sid, {**msg, "interaction_id": "someone-else", "text": "not mine"})

    async def _send_feed(self, call_sid: str, msg: dict[str, Any]) -> None:
        self.feed_sent.append(msg)
        data = orjson.dumps(msg).decode()
        for key in (call_sid, "*"):
            for sub in list(self.feed_subscribers.get(key, [])):
                try:
                    await sub.send(data)
                except websockets.ConnectionClosed:
                    pass
