"""Soak test targets: a small Exotel ingest that talks to the real Deepgram emulator, correct by
default, with switches that re-create the failures of docs/incidents.md one at a time:

* ``race``: provider connection created with check-then-create from concurrently handled frames
  (the connection race of incident 001) -> duplicate provider connections;
* ``hold``: incident 001's buffer bug -- after the first 500 ms, audio is held back until ``stop`` (the
  time trigger never fires while 36 ms frames keep arriving) -> the provider times out (1011) and
  the late transcripts have huge latency;
* ``no_finalize``: on ``stop`` the provider socket is closed without CloseStream -> the call's
  last words are never finalized (delivery);
* ``drop_every``: drops every Nth frame while more than one call is active (audio loss);
* ``bad_1011``: answers the caller's bad input with 1011 (its own fault) instead of 1003/1007/1008.

It speaks Exotel (rtaa_cli.protocols.exotel, the one codec), serves transcript feeds per
docs/transcript-feed.md and /health; runs on its own asyncio loop in a daemon thread so a test can
run ``rtaa soak --target`` against it as a subprocess. Not a pipeline: only what the soak needs.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlencode

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

from rtaa_cli.protocols.exotel import Connected, ExotelProtocolError, Media, Start, Stop, parse_event


@dataclass
class Flaws:
    race: bool = False
    hold: bool = False
    no_finalize: bool = False
    drop_every: int = 0
    bad_1011: bool = False
    untagged: bool = False  # like a third-party pipeline: no tag / extra, the provider cannot attribute
    leak: bool = False  # Finalize on stop but never closes the provider stream (KeepAlive keeps it open)
    no_keepalive: bool = False  # forwards audio correctly but never sends KeepAlive: a hold goes silent
    hangup_after: int = 0  # > 0: after this many media frames the bot hangs up (finalises, closes 1000)


class Call:
    def __init__(self, target: "Target", call_id: str, sample_rate: int) -> None:
        self.t = target
        self.id = call_id
        self.sample_rate = sample_rate
        self.provider: ClientConnection | None = None
        self.opening: asyncio.Future | None = None
        self.all: list[ClientConnection] = []
        self.readers: list[asyncio.Task] = []
        self.offset_bytes = 0  # provider audio sent on earlier connections (timestamps continue)
        self.sent_bytes = 0
        self.frames = 0
        self.held: list[bytes] = []
        self.seq = 0
        self.stream: ServerConnection | None = None
        self.last_audio = time.monotonic()
        self.keepalive = asyncio.ensure_future(self._keepalive())
        self.finalized: asyncio.Event | None = None

    async def _open(self) -> ClientConnection:
        params = {"model": "nova-3", "encoding": "linear16", "sample_rate": self.sample_rate,
                  "interim_results": "true", "endpointing": 300}
        if not self.t.flaws.untagged:
            params["tag"] = self.id
        q = urlencode(params)
        ws = await connect(f"{self.t.emulator_url}/v1/listen?{q}", additional_headers={"Authorization": "Token k"},
                           proxy=None, compression=None)
        self.all.append(ws)
        offset = self.sent_bytes
        self.readers.append(asyncio.ensure_future(self._read(ws, offset)))
        return ws

    async def conn(self) -> ClientConnection:
        if self.t.flaws.race:  # BROKEN: check, await, create -- every concurrent frame opens its own
            if self.provider is None:
                ws = await self._open()
                self.provider = ws
            return self.provider
        if self.provider is not None and self.provider.state.name == "OPEN":
            return self.provider
        if self.opening is None:  # single-flight: concurrent callers await the same opening
            self.opening = asyncio.ensure_future(self._open())
        try:
            self.provider = await self.opening
        finally:
            self.opening = None
        return self.provider

    async def audio(self, pcm: bytes) -> None:
        self.frames += 1
        f = self.t.flaws
        if f.drop_every and len(self.t.calls) > 1 and self.frames % f.drop_every == 0:
            return  # BROKEN: shed load by dropping frames
        if f.hold and self.sent_bytes >= self.sample_rate:  # 500 ms of s16le = sample_rate bytes
            self.held.append(pcm)  # BROKEN: incident 001's buffer never flushes while frames keep coming
            return
        await self._send(pcm)

    async def _send(self, pcm: bytes) -> None:
        ws = await self.conn()
        try:
            await ws.send(pcm)
        except ConnectionClosed:
            self.provider = None
            ws = await self.conn()
            await ws.send(pcm)
        self.sent_bytes += len(pcm)
        self.last_audio = time.monotonic()

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.provider is not None and not (self.t.flaws.hold or self.t.flaws.no_keepalive) and time.monotonic() - self.last_audio > 2.0:
                try:
                    await self.provider.send('{"type":"KeepAlive"}')
                except ConnectionClosed:
                    pass

    async def _read(self, ws: ClientConnection, offset_bytes: int) -> None:
        ms_per_byte = 1000.0 / (self.sample_rate * 2)
        try:
            async for raw in ws:
                msg = orjson.loads(raw)
                if msg.get("type") != "Results":
                    continue
                if self.t.flaws.race and ws is not self.provider:
                    continue  # the racing target only listens to its latest connection
                alt = msg["channel"]["alternatives"][0]
                start_ms = offset_bytes * ms_per_byte + msg["start"] * 1000.0
                self.seq += 1
                if msg.get("from_finalize") and self.finalized is not None:
                    self.finalized.set()
                await self.t.publish(self.id, {
                    "type": "transcript", "interaction_id": self.id, "seq": self.seq,
                    "is_final": bool(msg.get("is_final")), "speech_final": bool(msg.get("speech_final")),
                    "from_finalize": bool(msg.get("from_finalize")), "text": alt.get("transcript", ""),
                    "audio_start_ms": start_ms, "audio_end_ms": start_ms + msg["duration"] * 1000.0,
                    "received_at": time.time(), "sent_at": time.time()})
        except ConnectionClosed:
            pass

    async def stop(self) -> None:
        if self.held:  # incident 001's flush: everything held, at the end (after the provider gave up)
            held, self.held = self.held, []
            for pcm in held:
                await self._send(pcm)
        if self.t.flaws.no_finalize:
            for ws in self.all:
                await ws.close()  # BROKEN: no CloseStream, pending audio is never finalized
        elif self.t.flaws.leak and self.provider is not None:
            self.finalized = asyncio.Event()
            try:
                await self.provider.send('{"type":"Finalize"}')  # the final arrives ...
                await asyncio.wait_for(self.finalized.wait(), 5.0)
            except (ConnectionClosed, asyncio.TimeoutError):
                pass
            self.t.leaked.append(self)  # BROKEN: ... but the stream is never closed (KeepAlive goes on)
            await self.t.publish(self.id, {"type": "call_ended", "interaction_id": self.id, "reason": "stopped",
                                           "at": time.time()})
            self.t.calls.pop(self.id, None)
            return
        else:
            if self.provider is not None:
                try:
                    await self.provider.send('{"type":"CloseStream"}')
                except ConnectionClosed:
                    pass
            await asyncio.wait(self.readers, timeout=5.0)
            for ws in self.all:
                await ws.close()
        self.keepalive.cancel()
        await self.t.publish(self.id, {"type": "call_ended", "interaction_id": self.id, "reason": "stopped",
                                       "at": time.time()})
        self.t.calls.pop(self.id, None)


class Target:
    def __init__(self, emulator_url: str, flaws: Flaws | None = None) -> None:
        self.emulator_url = emulator_url
        self.flaws = flaws or Flaws()
        self.calls: dict[str, Call] = {}
        self.leaked: list[Call] = []  # the leak flaw keeps these (and their provider streams) alive
        self.subscribers: dict[str, set[ServerConnection]] = {}
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    # --- lifecycle
    def __enter__(self) -> "Target":
        self._thread.start()
        assert self._ready.wait(10), "test target did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        assert not self._thread.is_alive(), "test target did not stop"

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0, process_request=self._http, max_size=256 * 1024,
                         compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            self.url = f"127.0.0.1:{port}"
            self._ready.set()
            await self._stop.wait()

    # --- HTTP and routing
    def _http(self, conn: ServerConnection, request) -> Response | None:
        if request.path == "/health":
            body = b'{"ok":true}'
            return Response(200, "OK", Headers({"Content-Type": "application/json",
                                                "Content-Length": str(len(body))}), body)
        if not request.path.startswith("/v1/"):
            return Response(404, "Not Found", Headers({"Content-Length": "0"}), b"")  # like most servers
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        path = ws.request.path
        if path.startswith("/v1/transcripts/"):
            await self._feed(ws, path.rsplit("/", 1)[1])
        elif path.startswith("/v1/ingest"):
            await self._ingest(ws)
        else:
            await ws.close(1008, "no such path")

    async def publish(self, call_id: str, msg: dict) -> None:
        data = orjson.dumps(msg).decode()
        for sub in list(self.subscribers.get(call_id, ())):
            try:
                await sub.send(data)
            except ConnectionClosed:
                pass

    async def _feed(self, ws: ServerConnection, call_id: str) -> None:
        subs = self.subscribers.setdefault(call_id, set())
        subs.add(ws)
        try:
            await ws.wait_closed()
        finally:
            subs.discard(ws)
            if not subs:
                self.subscribers.pop(call_id, None)

    async def _ingest(self, ws: ServerConnection) -> None:
        call: Call | None = None
        stopped = dropped = False
        pending: set[asyncio.Task] = set()
        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    await ws.close(1003, "binary frames are not Exotel messages")
                    return
                try:
                    ev = parse_event(raw)
                except ExotelProtocolError as exc:
                    await ws.close(1011 if self.flaws.bad_1011 else exc.close_code, exc.reason)
                    return
                if stopped or isinstance(ev, Connected):
                    continue
                if isinstance(ev, Start):
                    if ev.sample_rate not in (8000, 16000, 24000):
                        await ws.close(1011 if self.flaws.bad_1011 else 1007, "start.media_format.sample_rate: unsupported")
                        return
                    call = self.calls.get(ev.call_sid)
                    if call is None:
                        call = self.calls[ev.call_sid] = Call(self, ev.call_sid, ev.sample_rate)
                    elif call.stream is not None and call.stream is not ws:
                        await call.stream.close(1001, "superseded by a newer stream for this call")
                    call.stream = ws
                elif isinstance(ev, Media):
                    if call is None:
                        await ws.close(1011 if self.flaws.bad_1011 else 1008, "media before start")
                        return
                    if self.flaws.race:  # frames handled concurrently (event-driven consumer)
                        task = asyncio.ensure_future(call.audio(ev.payload))
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                    else:
                        await call.audio(ev.payload)
                    if self.flaws.hangup_after and call.frames >= self.flaws.hangup_after:
                        stopped = True  # the bot hangs up: the call's results are final, then 1000
                        await call.stop()
                        await ws.close(1000, "bot hung up")
                        return
                elif isinstance(ev, Stop):
                    stopped = True
                    if pending:
                        await asyncio.wait(pending)
                    if call is not None:
                        await call.stop()
                    await ws.close(1000, "call ended")
                    return
        except ConnectionClosed as exc:
            dropped = exc.rcvd is None and exc.sent is None  # TCP drop: the caller may resume the call
        finally:
            # closed for bad input (not dropped, nor superseded by a newer stream): end the call, so its
            # provider stream is not left open (the soak's post-run watch would rightly flag it)
            if call is not None and not stopped and call.stream is ws and not dropped:
                await call.stop()


# ------------------------------------------------------------------ as a process of its own

def readline(proc, timeout: float) -> bytes | str:
    """First stdout line of a child that announces itself, or "" after ``timeout`` (bounded: a
    child that hangs before printing must not hang the test)."""
    import select

    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


def readline_matching(proc, prefix: str, timeout: float) -> str:
    """The first stderr line of ``proc`` containing ``prefix`` (text mode), or "" after ``timeout``.
    Reads line by line (no buffering ahead), so the rest of stderr stays for ``communicate()``."""
    import os
    import select
    import time

    deadline = time.monotonic() + timeout
    fd, line = proc.stderr.fileno(), b""
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        ch = os.read(fd, 1)
        if not ch:
            break
        if ch != b"\n":
            line += ch
            continue
        text = line.decode("utf-8", "replace")
        if prefix in text:
            return text
        line = b""
    return ""


def serve_forever(flaws: Flaws, idle_timeout_s: float, handshake_delay_ms: tuple[float, float]) -> None:
    """Emulator + target in this process; prints one JSON line with their URLs, runs until stdin
    closes (the test's end), so each soak target has its own interpreter (no GIL shared with pytest
    or the other targets: latency measurements stay clean on a busy machine)."""
    import sys

    from rtaa_cli.emulator import EmulatorConfig, start_in_thread

    emu = start_in_thread(EmulatorConfig(idle_timeout_s=idle_timeout_s, handshake_delay_ms=handshake_delay_ms))
    try:
        with Target(emu.url, flaws) as target:
            print(orjson.dumps({"target": target.url, "emulator": emu.url, "emulator_http": emu.http_url}).decode(),
                  flush=True)
            sys.stdin.read()  # returns at EOF: the parent closed our stdin or exited
    finally:
        emu.stop()


if __name__ == "__main__":  # python tests/helpers/soak.py '{"race": true}' IDLE_S
    import sys

    serve_forever(Flaws(**orjson.loads(sys.argv[1])), float(sys.argv[2]), (150.0, 300.0))
