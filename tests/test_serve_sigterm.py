"""SIGTERM of a real `rtaa serve` subprocess: callers get 1001, in-flight finals are flushed to the feed
(call_ended after them), the process exits 0."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from rtaa_cli.exotel import StreamEncoder
from test_pipeline_support import frames_of, http_get, run, speech_like

SERVE = [sys.executable, "-c", "from rtaa_cli.cli import main; main()", "serve", "--port", "0", "--json",
         "--provider", "fake", "--log-level", "warning"]


def test_sigterm_closes_callers_1001_flushes_finals_and_exits_0(tmp_path) -> None:
    jsonl = tmp_path / "feed.jsonl"
    proc = subprocess.Popen(SERVE + ["--jsonl", str(jsonl)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "NO_PROXY": "*"})
    try:
        async def main() -> tuple[tuple, list, int, float]:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
            info = orjson.loads(line)
            feed = await connect(info["transcripts"] + "/CA-term", proxy=None)
            ws = await connect(info["ingest"], proxy=None)
            enc = StreamEncoder("ST-term", "CA-term")
            await ws.send(enc.connected())
            await ws.send(enc.start())
            frames = frames_of(speech_like(3, off_s=0.0))  # speech up to the end: only the flush finalises it
            for f in frames:
                await ws.send(enc.media(f))
            # SIGTERM once the server holds every frame (its own /metrics says so): they are "in flight".
            metrics_url = info["metrics"]

            def frames_in() -> float:
                for line in http_get(metrics_url)[1].decode().splitlines():
                    if line.startswith("rtaa_frames_in_total "):
                        return float(line.split()[1])
                return 0.0

            async def all_in() -> bool:
                return await asyncio.to_thread(frames_in) >= len(frames)

            for _ in range(200):
                if await all_in():
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the server never received every frame")
            messages: list = []

            async def read_feed() -> None:
                try:
                    async for raw in feed:
                        messages.append(orjson.loads(raw))
                except ConnectionClosed:
                    pass

            reader = asyncio.ensure_future(read_feed())
            proc.send_signal(signal.SIGTERM)
            try:
                async for _ in ws:
                    pass
            except ConnectionClosed:
                pass
            caller_close = (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason)
            await asyncio.wait_for(reader, 20)
            code = await asyncio.wait_for(asyncio.to_thread(proc.wait), 20)
            return caller_close, messages, code, len(frames) * 36.0

        caller_close, messages, code, total_ms = run(main(), 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode()
    assert caller_close == (1001, "server shutting down")
    assert code == 0, err
    kinds = [m["type"] for m in messages]
    assert kinds[-1] == "call_ended", kinds
    assert messages[-1]["reason"] == "shutdown"
    finals = [m for m in messages if m["type"] == "transcript" and m["is_final"]]
    assert finals and finals[-1]["audio_end_ms"] >= total_ms - 40, finals  # the flush covered all the audio
    # The JSONL sink holds the same messages, flushed before exit.
    lines = [orjson.loads(line) for line in jsonl.read_bytes().splitlines()]
    assert [m["type"] for m in lines] == kinds and kinds[0] == "call_started"
