"""What a provider outage costs the calls in flight: the Deepgram emulator is stopped mid-call and restarted
on the same port after each outage length; every call streams speech-like audio in real time throughout.

Per outage: calls that survived (ended by their stop) or were closed 1011 (and when, after the loss), how
long after the provider came back the calls had their stream again, and the `gap` messages on the feeds
(audio no final covers: cause and ms lost per call). rtaa serve in-process with its defaults unless given
(``--reconnect-window-s``, ``--replay-limit-s``), real sockets, the real deepgram-sdk path.

    python bench/bench_outage.py                           # outages 4 10 14 20 s, 10 calls each
    python bench/bench_outage.py --outages 15 --calls 20 --reconnect-window-s 15
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

import numpy as np
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rtaa_cli.emulator import Emulator, EmulatorConfig  # noqa: E402
from rtaa_cli.protocols.exotel import StreamEncoder  # noqa: E402
from rtaa_cli.pipeline.config import PipelineConfig, ProviderConfig, WorkerConfig  # noqa: E402
from rtaa_cli.pipeline.providers.deepgram import DeepgramProvider  # noqa: E402
from rtaa_cli.pipeline.server import PipelineServer  # noqa: E402

RATE, FRAME, FRAME_S = 8000, 576, 0.036  # 36 ms frames at 8 kHz


def speech_like(seconds: float) -> bytes:
    """0.8 s tone bursts (about -15 dBFS) and 0.4 s of silence: one utterance per burst for the segmenter."""
    t = np.arange(int(0.8 * RATE)) / RATE
    burst = 0.25 * 32767 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    one = np.concatenate([burst, np.zeros(int(0.4 * RATE))]).astype(np.int16)
    pcm = np.tile(one, int(seconds / 1.2) + 1).tobytes()[: int(seconds * RATE) * 2]
    return pcm[: len(pcm) - len(pcm) % FRAME]


async def call(server: PipelineServer, sid: str, pcm: bytes, out: dict) -> None:
    feed = await connect(f"{server.transcripts_url}/{sid}", proxy=None)
    ws = await connect(server.ingest_url, proxy=None, compression=None)
    enc = StreamEncoder(f"ST-{sid}", sid, sample_rate=RATE)
    gaps: list[dict] = []
    out[sid] = {"gaps": gaps, "closed": None, "closed_at": None}

    async def read_feed() -> None:
        try:
            async for raw in feed:
                msg = orjson.loads(raw)
                if msg["type"] == "gap":
                    gaps.append(msg)
                elif msg["type"] == "call_ended":
                    out[sid]["ended"] = msg["reason"]
        except ConnectionClosed:
            pass

    reader = asyncio.get_running_loop().create_task(read_feed())
    try:
        await ws.send(enc.connected())
        await ws.send(enc.start())
        t0 = time.perf_counter()
        for i in range(0, len(pcm), FRAME):
            await asyncio.sleep(max(0.0, t0 + (i // FRAME) * FRAME_S - time.perf_counter()))  # real-time pacing
            await ws.send(enc.media(pcm[i:i + FRAME]))
        await ws.send(enc.stop())
    except ConnectionClosed:
        out[sid]["closed_at"] = time.perf_counter()  # the next frame after the server's close
    try:
        await asyncio.wait_for(reader, 30)  # the feed's gap messages and call_ended, also after a 1011
    except TimeoutError:
        out[sid]["ended"] = None
    finally:
        rcvd = ws.protocol.close_rcvd
        if rcvd is not None and rcvd.code != 1000:
            out[sid]["closed"] = (rcvd.code, rcvd.reason)
        await ws.close()
        await feed.close()
        reader.cancel()


async def one_outage(outage_s: float, calls: int, down_after_s: float, worker: WorkerConfig) -> dict:
    first = Emulator(EmulatorConfig(seed=7))
    await first.__aenter__()
    port = first.port
    second: Emulator | None = None
    cfg = PipelineConfig(provider=ProviderConfig(name="deepgram", deepgram_url=first.url), worker=worker)
    pcm = speech_like(down_after_s + outage_s + 5.0)
    out: dict = {}
    try:
        async with PipelineServer(cfg, DeepgramProvider("bench", first.url)) as server:
            tasks = [asyncio.get_running_loop().create_task(call(server, f"out-{k}", pcm, out)) for k in range(calls)]
            await asyncio.sleep(down_after_s)
            t_down = time.perf_counter()
            await first.__aexit__(None, None, None)
            await asyncio.sleep(max(0.0, t_down + outage_s - time.perf_counter()))
            second = Emulator(EmulatorConfig(port=port, seed=7))
            await second.__aenter__()
            t_up = time.perf_counter()
            reopened: list[float] = []
            while len(reopened) < calls and time.perf_counter() - t_up < 10:
                opened = second.stats()["totals"]["connections"]
                reopened += [time.perf_counter() - t_up] * (opened - len(reopened))
                await asyncio.sleep(0.01)
            await asyncio.gather(*tasks)
            metrics = server.metrics
            dup = metrics.value("rtaa_provider_duplicate_connections_total")
    finally:
        if second is not None:
            await second.__aexit__(None, None, None)
    failed = [r for r in out.values() if r["closed"]]
    closed_at = [r["closed_at"] - t_down for r in failed if r["closed_at"] is not None]
    lost = [sum(g["lost_ms"] for g in r["gaps"]) for r in out.values()]
    causes = sorted({g["cause"] for r in out.values() for g in r["gaps"]})
    return {
        "outage_s": outage_s, "calls": calls, "survived": calls - len(failed),
        "closed": sorted({f"{r['closed'][0]} {r['closed'][1]}" for r in failed}),
        "closed_after_loss_s": {"min": round(min(closed_at), 2), "max": round(max(closed_at), 2)} if closed_at else None,
        "reopened_after_return_s": {"median": round(statistics.median(reopened), 3), "max": round(max(reopened), 3)}
        if reopened else None,
        "calls_ended_on_feed": sum(1 for r in out.values() if r.get("ended")),
        "calls_with_gaps": sum(1 for r in out.values() if r["gaps"]), "gap_causes": causes,
        "lost_ms_per_call": {"min": round(min(lost)), "median": round(statistics.median(lost)), "max": round(max(lost))},
        "duplicate_connections": dup,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outages", type=float, nargs="+", default=[4.0, 10.0, 14.0, 20.0], help="seconds down")
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--down-after-s", type=float, default=3.0, help="when in each call the provider goes away")
    ap.add_argument("--reconnect-window-s", type=float, default=WorkerConfig.reconnect_window_s)
    ap.add_argument("--replay-limit-s", type=float, default=WorkerConfig.replay_limit_s)
    a = ap.parse_args()
    worker = WorkerConfig(reconnect_window_s=a.reconnect_window_s, replay_limit_s=a.replay_limit_s)
    print(f"# reconnect window {worker.reconnect_window_s:g} s, replay buffer {worker.replay_limit_s:g} s, "
          f"{a.calls} calls, provider down {a.down_after_s:g} s into each call")
    for outage in a.outages:
        print(orjson.dumps(asyncio.run(one_outage(outage, a.calls, a.down_after_s, worker))).decode(), flush=True)


if __name__ == "__main__":
    main()
