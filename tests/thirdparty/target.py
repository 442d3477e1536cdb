"""A third-party pipeline for rtaa to test black-box (issue 11): asyncio + websockets + redis, no rtaa code.

Accepts Exotel streams, forwards each call's audio to a Deepgram URL on one connection per call
WITHOUT ``tag``/``extra`` (like the pipeline in the issue), optionally re-chunked, and writes every
Results with text to the Redis stream ``PREFIX<call_sid>`` in its own schema
``{seq, type: partial|final, text, confidence, timestamp_ms}`` (no audio offsets).

    python tests/thirdparty/target.py --deepgram ws://127.0.0.1:8765 --redis redis://127.0.0.1:6379/0 \
        --prefix transcripts: [--rechunk-ms 72]

Prints one JSON line ``{"target": "ws://127.0.0.1:PORT/exotel"}`` once it listens; runs until stdin closes
(or forever with --forever).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time

import redis.asyncio as aredis
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

LISTEN = "model=nova-3&encoding=linear16&sample_rate=8000&channels=1&interim_results=true&endpointing=300"


class Call:
    def __init__(self, args: argparse.Namespace, pub: aredis.Redis, call_sid: str) -> None:
        self.args, self.pub, self.key = args, pub, f"{args.prefix}{call_sid}"
        self.buf = b""
        self.seq = 0
        self.chunk = args.rechunk_ms * 16  # bytes of 8 kHz s16le per chunk (0: forward frames as they come)

    async def open(self) -> None:
        self.dg = await connect(f"{self.args.deepgram}/v1/listen?{LISTEN}",
                                additional_headers={"Authorization": "Token thirdparty"}, proxy=None)
        self.reader = asyncio.ensure_future(self.read())

    async def audio(self, pcm: bytes) -> None:
        if not self.chunk:
            await self.dg.send(pcm)
            return
        self.buf += pcm
        while len(self.buf) >= self.chunk:
            piece, self.buf = self.buf[:self.chunk], self.buf[self.chunk:]
            await self.dg.send(piece)

    async def stop(self) -> None:
        if self.buf:
            await self.dg.send(self.buf)
        await self.dg.send(json.dumps({"type": "CloseStream"}))
        try:
            await asyncio.wait_for(self.reader, 10.0)  # the provider closes after its last results
        except asyncio.TimeoutError:
            self.reader.cancel()
        await self.dg.close()

    async def read(self) -> None:
        try:
            async for raw in self.dg:
                msg = json.loads(raw)
                if msg.get("type") != "Results":
                    continue
                alt = msg["channel"]["alternatives"][0]
                if not alt["transcript"].strip():
                    continue
                self.seq += 1
                await self.pub.xadd(self.key, {
                    "seq": self.seq, "type": "final" if msg.get("is_final") else "partial", "text": alt["transcript"],
                    "confidence": alt.get("confidence", 0.0), "timestamp_ms": int(time.time() * 1000)})
        except ConnectionClosed:
            pass


async def main(args: argparse.Namespace) -> None:
    pub = aredis.Redis.from_url(args.redis)

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
            if call is not None:
                await call.dg.close()

    async with serve(handle, "127.0.0.1", args.port, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(json.dumps({"target": f"ws://127.0.0.1:{port}/exotel"}), flush=True)
        if args.forever:
            await asyncio.Future()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await pub.aclose()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--deepgram", required=True, help="Deepgram base URL, e.g. ws://127.0.0.1:8765")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--prefix", default="transcripts:", help="Redis stream key prefix (the call SID follows)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--rechunk-ms", type=int, default=0, help="Re-chunk audio to this many ms (e.g. 72)")
    p.add_argument("--forever", action="store_true", help="Run until killed (default: until stdin closes)")
    asyncio.run(main(p.parse_args()))
