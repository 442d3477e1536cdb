"""SIGTERM of a real `rtaa serve` subprocess (`--role all`) with calls in flight, over both buses: callers get
1001, every call's in-flight finals are flushed to the feed (call_ended after them), the JSONL sink holds the
same messages, nothing of the calls is left in Redis, and the process exits 0 within its drain bound."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any, Iterator

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from helpers.redisdb import call_keys, delete, new_prefix, redis_url
from rtaa_cli.protocols.exotel import StreamEncoder
from rtaa_cli.pipeline.config import PipelineConfig
from helpers.pipeline import assert_tiles, frames_of, http_get, run, speech_like

SERVE = [sys.executable, "-c", "from rtaa_cli.cli import main; main()", "serve", "--port", "0", "--json",
         "--provider", "fake", "--log-level", "warning"]
CALLS = 3
# What PipelineServer.stop() may take at most: the consumers' drain (shutdown_timeout_s), then the bus's own
# bounded flushes (queued publishes 2 s, worker writes 2 s, feed catch-up 2 s) and the listener's close (5 s).
DRAIN_BOUND_S = PipelineConfig().shutdown_timeout_s + 2 + 2 + 2 + 5


@pytest.fixture(params=["memory", "redis"])
def bus_args(request) -> Iterator[tuple[list[str], str | None]]:
    if request.param == "memory":
        yield [], None
        return
    prefix = new_prefix()
    try:
        yield ["--bus", redis_url(), "--bus-prefix", prefix], prefix
    finally:
        delete(prefix)


def test_sigterm_with_calls_in_flight_flushes_every_call_and_exits_0(bus_args, tmp_path) -> None:
    extra, prefix = bus_args
    jsonl = tmp_path / "feed.jsonl"
    proc = subprocess.Popen(SERVE + extra + ["--jsonl", str(jsonl)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "NO_PROXY": "*"})
    frames = frames_of(speech_like(3, off_s=0.0))  # speech up to the end: only the flush finalises it
    iids = [f"CA-term{i}" for i in range(CALLS)]
    try:
        async def main() -> tuple[list, list[dict[str, Any]], int, float]:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
            info = orjson.loads(line)
            hose = await connect(info["transcripts"], proxy=None)  # the firehose: every call's messages
            messages: list[dict[str, Any]] = []

            async def read_feed() -> None:
                try:
                    async for raw in hose:
                        messages.append(orjson.loads(raw))
                except ConnectionClosed:
                    pass

            reader = asyncio.ensure_future(read_feed())
            callers = []
            for iid in iids:
                ws = await connect(info["ingest"], proxy=None)
                enc = StreamEncoder(f"ST-{iid}", iid)
                await ws.send(enc.connected())
                await ws.send(enc.start())
                for f in frames:
                    await ws.send(enc.media(f))
                callers.append(ws)

            # SIGTERM once the server holds every frame (its own /metrics says so): they are "in flight".
            def frames_in() -> float:
                for row in http_get(info["metrics"])[1].decode().splitlines():
                    if row.startswith("rtaa_frames_in_total "):
                        return float(row.split()[1])
                return 0.0

            for _ in range(400):
                if await asyncio.to_thread(frames_in) >= CALLS * len(frames):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the server never received every frame")
            stopped = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            closes = []
            for ws in callers:
                try:
                    async for _ in ws:
                        pass
                except ConnectionClosed:
                    pass
                closes.append((ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason))
            await asyncio.wait_for(reader, DRAIN_BOUND_S)
            code = await asyncio.wait_for(asyncio.to_thread(proc.wait), DRAIN_BOUND_S)
            return closes, messages, code, time.monotonic() - stopped

        closes, messages, code, took = run(main(), 90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode()
    assert closes == [(1001, "server shutting down")] * CALLS
    assert code == 0, err
    assert took < DRAIN_BOUND_S, (took, err)  # a hang, not a slow host: the drain itself takes about a second
    total_ms = len(frames) * 36.0
    for iid in iids:
        mine = [m for m in messages if m["interaction_id"] == iid]
        kinds = [m["type"] for m in mine]
        assert kinds[0] == "call_started" and kinds.count("call_started") == 1, kinds
        assert kinds[-1] == "call_ended" and mine[-1]["reason"] == "shutdown", kinds
        finals = [m for m in mine if m["type"] == "transcript" and m["is_final"]]
        assert_tiles(finals, total_ms, tail_ms=40.0)  # the flush covered all the audio, no gap, no repeat
    # The JSONL sink holds the same messages, flushed before exit.
    lines = [orjson.loads(row) for row in jsonl.read_bytes().splitlines()]
    assert [(m["interaction_id"], m["type"]) for m in lines] == [(m["interaction_id"], m["type"]) for m in messages]
    if prefix is not None:
        assert call_keys(prefix) == [], "a call's keys were left in Redis after the shutdown"
    print(f"drain of {CALLS} calls: exit {took:.2f} s after SIGTERM")
