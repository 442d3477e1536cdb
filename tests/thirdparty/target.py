"""A third-party pipeline for rtaa to test black-box (issue 11): asyncio + websockets + redis, no rtaa code.

Accepts Exotel streams, forwards each call's audio to a Deepgram URL on one connection per call
WITHOUT ``tag``/``extra`` (like the pipeline in the issue), optionally re-chunked, and writes every
Results with text to the Redis stream ``PREFIX<call_sid>`` in its own schema
``{seq, type: partial|final, text, confidence, timestamp_ms}`` (no audio offsets).

    python tests/thirdparty/target.py --deepgram ws://127.0.0.1:8765 --redis redis://127.0.0.1:6379/0 \
        --prefix transcripts: [--rechunk-ms 72]

With ``--sse``, transcripts go instead to a server-sent-event stream per call (and, for JSON polling,
``GET /results/<call_sid>`` answers ``{"results": [{type, seq, text, confidence, timestamp_ms}, ...]}``),
``GET http://127.0.0.1:SSEPORT/events/<call_sid>``: ``event: partial|final`` and ``data: {seq, text,
confidence, timestamp_ms}`` (the type only in the event name), backlog first, then live;
``GET /published`` is the ground truth: ``{call_sid: {events, finals, foreign}}`` published so far
(``foreign``: events of another call's results on this call's stream).

Broken variants (the ground truth stays exact): ``--publish-times N`` publishes every result N times;
``--cross-talk`` publishes each call's results on another open call's stream when there is one
(``--tag`` makes its Deepgram connections attributable, so rtaa can tell whose results they are);
``--reconnect-every-s S`` closes and reopens a call's Deepgram connection every S s, dropping the audio
that arrives while it reconnects and re-sending the last ``--replay-ms`` of audio on the new one;
``--starve-after-s S`` stops forwarding a call's audio after S s (the connection stays open).
Audio-changing variants (not broken, but they destroy rtaa's LSB watermark): ``--resample-hz 16000``
resamples each call's 8 kHz audio before Deepgram (``--resampler soxr``, the default, or ``linear``: a
plain linear interpolator) and asks for ``sample_rate=16000``; ``--gain-db G`` scales it.
``--webhook URL`` also POSTs each result as JSON ``{type, call, seq, text, confidence, timestamp_ms}``.
With ``--sse``, ``/published`` also gives each call's ``audio``: bytes in (from the caller), forwarded
(to Deepgram, replays included), dropped, replayed, and the Deepgram connections it opened.

Prints one JSON line ``{"target": "ws://127.0.0.1:PORT/exotel"[, "sse": "http://..."]}`` once it listens; runs until stdin closes
(or forever with --forever).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
import urllib.request

import numpy as np
import redis.asyncio as aredis
import soxr
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

LISTEN = "model=nova-3&encoding=linear16&sample_rate={rate}&channels=1&interim_results=true&endpointing=300"


OPEN_CALLS: list[str] = []  # call SIDs in the order they started (--cross-talk picks another one)
AUDIO: dict[str, dict[str, int]] = {}  # call SID -> audio ground truth (see the module docstring)


def post_json(url: str, body: dict) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


class SseHub:
    """Each call's published events (kept, so a subscriber gets the backlog) and its live subscribers."""

    def __init__(self) -> None:
        self.events: dict[str, list[bytes]] = {}
        self.items: dict[str, list[dict]] = {}  # the same, for JSON polling: GET /results/<call_sid>
        self.foreign: dict[str, int] = {}
        self.subscribers: dict[str, list[asyncio.Queue]] = {}

    def publish(self, call_sid: str, kind: str, data: dict, source: str | None = None) -> None:
        event = f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
        self.events.setdefault(call_sid, []).append(event)
        self.items.setdefault(call_sid, []).append({"type": kind, **data})
        if source is not None and source != call_sid:
            self.foreign[call_sid] = self.foreign.get(call_sid, 0) + 1
        for q in self.subscribers.get(call_sid, []):
            q.put_nowait(event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = (await reader.readline()).decode("latin-1").split()
            while (await reader.readline()).strip():
                pass  # headers: not needed
            if len(request) >= 2 and request[1] == "/published":  # ground truth for tests: events per call
                counts = {sid: {"events": len(evs), "finals": sum(e.startswith(b"event: final") for e in evs),
                                "foreign": self.foreign.get(sid, 0)} for sid, evs in self.events.items()}
                for sid, audio in AUDIO.items():
                    counts.setdefault(sid, {"events": 0, "finals": 0, "foreign": 0})["audio"] = audio
                body = json.dumps(counts).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))
                return
            if len(request) >= 2 and request[1].startswith("/results/"):  # JSON polling: everything so far
                body = json.dumps({"results": self.items.get(request[1][len("/results/"):], [])}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))
                return
            if len(request) < 2 or request[0] != "GET" or not request[1].startswith("/events/"):
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                return
            call_sid = request[1][len("/events/"):]
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n")
            q: asyncio.Queue = asyncio.Queue()
            self.subscribers.setdefault(call_sid, []).append(q)
            for event in self.events.get(call_sid, []):
                writer.write(event)
            await writer.drain()
            while True:
                writer.write(await q.get())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class AudioTransform:
    """What the target does to the audio before Deepgram: resampling 8 kHz -> ``--resample-hz`` (soxr,
    streaming, or a plain linear interpolator) and a gain; the identity by default."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.rate, self.gain = args.resample_hz, 10.0 ** (args.gain_db / 20.0)
        self.linear = args.resampler == "linear"
        self.stream = soxr.ResampleStream(8000, self.rate, 1, dtype="float32") if self.rate and not self.linear else None
        self.prev: float | None = None  # the linear interpolator's last input sample

    def __call__(self, pcm: bytes, last: bool = False) -> bytes:
        if not self.rate and self.gain == 1.0:
            return pcm
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        if self.stream is not None:
            x = self.stream.resample_chunk(x, last=last)
        elif self.rate and x.size:  # linear: k output samples per input sample, between the previous and this one
            k = self.rate // 8000
            xs = np.concatenate(([x[0] if self.prev is None else self.prev], x))
            self.prev = float(x[-1])
            frac = np.arange(1, k + 1, dtype=np.float32) / k
            x = (xs[:-1, None] * (1 - frac) + xs[1:, None] * frac).ravel()
        return np.clip(np.rint(x * self.gain), -32768, 32767).astype("<i2").tobytes()


class Call:
    def __init__(self, args: argparse.Namespace, pub: aredis.Redis | SseHub, call_sid: str) -> None:
        self.args, self.pub, self.key = args, pub, f"{args.prefix}{call_sid}"
        self.call_sid = call_sid
        self.buf = b""
        self.seq = 0
        self.rate = args.resample_hz or 8000  # what Deepgram gets
        self.chunk = args.rechunk_ms * self.rate // 500  # bytes of s16le per chunk (0: forward frames as they come)
        self.transform = AudioTransform(args)
        self.dg = None  # None while reconnecting (--reconnect-every-s): audio arriving then is dropped
        self.truth = AUDIO.setdefault(call_sid, {"in": 0, "forwarded": 0, "dropped": 0, "replayed": 0,
                                                 "connections": 0})
        self.history = bytearray()  # the last --replay-ms of forwarded audio
        self.started = self.opened_at = time.monotonic()

    async def _connect(self):
        tag = f"&tag={self.call_sid}" if self.args.tag else ""
        dg = await connect(f"{self.args.deepgram}/v1/listen?{LISTEN.format(rate=self.rate)}{tag}",
                           additional_headers={"Authorization": "Token thirdparty"}, proxy=None)
        self.truth["connections"] += 1
        self.opened_at = time.monotonic()
        return dg

    async def open(self) -> None:
        OPEN_CALLS.append(self.call_sid)
        self.dg = await self._connect()
        self.reader = asyncio.ensure_future(self.read(self.dg))

    async def _reconnect(self, old) -> None:
        """BROKEN variant: a new connection every few seconds; what arrives meanwhile is lost."""
        await old.close()
        dg = await self._connect()
        replay = bytes(self.history[-self.args.replay_ms * self.rate // 500:]) if self.args.replay_ms else b""
        if replay:
            await dg.send(replay)
            self.truth["replayed"] += len(replay)
            self.truth["forwarded"] += len(replay)
        self.reader = asyncio.ensure_future(self.read(dg))
        self.dg = dg

    async def _send(self, piece: bytes) -> None:
        await self.dg.send(piece)
        self.truth["forwarded"] += len(piece)
        if self.args.replay_ms:
            self.history += piece
            del self.history[:-self.args.replay_ms * self.rate // 500]

    async def audio(self, pcm: bytes) -> None:
        self.truth["in"] += len(pcm)
        pcm = self.transform(pcm)
        now = time.monotonic()
        if self.dg is None or (self.args.starve_after_s and now - self.started > self.args.starve_after_s):
            self.truth["dropped"] += len(pcm)
            return
        if self.args.reconnect_every_s and now - self.opened_at > self.args.reconnect_every_s:
            old, self.dg = self.dg, None
            self.truth["dropped"] += len(pcm) + len(self.buf)  # the unsent tail is lost too
            self.buf = b""
            asyncio.ensure_future(self._reconnect(old))
            return
        if not self.chunk:
            await self._send(pcm)
            return
        self.buf += pcm
        while len(self.buf) >= self.chunk:
            piece, self.buf = self.buf[:self.chunk], self.buf[self.chunk:]
            await self._send(piece)

    async def stop(self) -> None:
        while self.dg is None:  # a reconnect in flight: let it finish
            await asyncio.sleep(0.01)
        self.buf += self.transform(b"", last=True)
        if self.buf:
            await self._send(self.buf)
        await self.dg.send(json.dumps({"type": "CloseStream"}))
        try:
            await asyncio.wait_for(self.reader, 10.0)  # the provider closes after its last results
        except asyncio.TimeoutError:
            self.reader.cancel()
        await self.dg.close()

    async def read(self, dg) -> None:
        try:
            async for raw in dg:
                msg = json.loads(raw)
                if msg.get("type") != "Results":
                    continue
                alt = msg["channel"]["alternatives"][0]
                if not alt["transcript"].strip():
                    continue
                self.seq += 1
                kind = "final" if msg.get("is_final") else "partial"
                fields = {"seq": self.seq, "text": alt["transcript"], "confidence": alt.get("confidence", 0.0),
                          "timestamp_ms": int(time.time() * 1000)}
                feed = self.call_sid
                if self.args.cross_talk:  # BROKEN: another open call's stream gets this call's results
                    feed = next((c for c in reversed(OPEN_CALLS) if c != self.call_sid), self.call_sid)
                for _ in range(self.args.publish_times):  # BROKEN when > 1: each result published N times
                    if self.args.webhook:  # POSTed to the tester, in order
                        await asyncio.to_thread(post_json, self.args.webhook.replace("{call_sid}", feed),
                                                {"type": kind, "call": feed, **fields})
                    if isinstance(self.pub, SseHub):
                        self.pub.publish(feed, kind, fields, source=self.call_sid)
                    else:
                        await self.pub.xadd(f"{self.args.prefix}{feed}", {"type": kind, **fields})
        except ConnectionClosed:
            pass
        finally:
            if dg is self.dg and self.call_sid in OPEN_CALLS:
                OPEN_CALLS.remove(self.call_sid)


async def main(args: argparse.Namespace) -> None:
    pub = SseHub() if args.sse else aredis.Redis.from_url(args.redis)

    async def handle(ws) -> None:
        call: Call | None = None
        try:
            async for raw in ws:
                msg = json.loads(raw)
                event = msg.get("event")
                if event == "start" and call is None:
                    call = Call(args, pub, msg["start"]["call_sid"])
                    await call.open()
                elif event == "media" and call is not None:
                    await call.audio(base64.b64decode(msg["media"]["payload"]))
                elif event == "stop" and call is not None:
                    await call.stop()
                    call = None
                    await ws.close(1000, "stream stopped")
        except ConnectionClosed:
            pass
        finally:
            if call is not None and call.dg is not None:
                await call.dg.close()

    async with serve(handle, "127.0.0.1", args.port, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        urls = {"target": f"ws://127.0.0.1:{port}/exotel"}
        sse = None
        if isinstance(pub, SseHub):
            sse = await asyncio.start_server(pub.handle, "127.0.0.1", args.sse_port)
            urls["sse"] = f"http://127.0.0.1:{sse.sockets[0].getsockname()[1]}/events/{{call_sid}}"
        print(json.dumps(urls), flush=True)
        if args.forever:
            await asyncio.Future()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        if sse is not None:
            sse.close()
    if not isinstance(pub, SseHub):
        await pub.aclose()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--deepgram", required=True, help="Deepgram base URL, e.g. ws://127.0.0.1:8765")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--prefix", default="transcripts:", help="Redis stream key prefix (the call SID follows)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--rechunk-ms", type=int, default=0, help="Re-chunk audio to this many ms (e.g. 72)")
    p.add_argument("--sse", action="store_true", help="Publish transcripts as SSE per call instead of Redis")
    p.add_argument("--sse-port", type=int, default=0)
    p.add_argument("--publish-times", type=int, default=1, help="Publish every result N times (broken variant)")
    p.add_argument("--cross-talk", action="store_true", help="Publish results on another open call's stream")
    p.add_argument("--tag", action="store_true", help="Tag the Deepgram connections with the call SID")
    p.add_argument("--reconnect-every-s", type=float, default=0.0,
                   help="Reopen each call's Deepgram connection this often, dropping audio meanwhile (broken variant)")
    p.add_argument("--replay-ms", type=int, default=0, help="With --reconnect-every-s: re-send this much audio")
    p.add_argument("--webhook", default="", help="Also POST each result to this URL ({call_sid} is replaced)")
    p.add_argument("--starve-after-s", type=float, default=0.0,
                   help="Stop forwarding a call's audio after this long (broken variant)")
    p.add_argument("--resample-hz", type=int, default=0, help="Resample the 8 kHz audio to this rate for Deepgram")
    p.add_argument("--resampler", choices=("soxr", "linear"), default="soxr")
    p.add_argument("--gain-db", type=float, default=0.0, help="Scale the audio by this gain before Deepgram")
    p.add_argument("--forever", action="store_true", help="Run until killed (default: until stdin closes)")
    asyncio.run(main(p.parse_args()))
