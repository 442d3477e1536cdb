"""The sphinx engine: real words from pocketsphinx on fixtures/audio/call.wav, without blocking the event loop."""
from __future__ import annotations

import asyncio
import re
import time

import orjson
import pytest
import soundfile as sf
import websockets

from rtaa_cli.emulator import Emulator, EmulatorConfig
from helpers.paths import FIXTURES

BOUND = 120.0  # safety net: decoding the 27 s call takes ~10-20 s on a loaded 2-core machine


@pytest.mark.skipif(not (FIXTURES / "call.wav").exists(), reason="fixtures/audio/call.wav missing")
def test_sphinx_engine_transcribes_real_words_and_keeps_the_loop_free():
    audio, rate = sf.read(FIXTURES / "call.wav", dtype="int16")
    truth = set(re.findall(r"[a-z']+", (FIXTURES / "call.txt").read_text().lower()))
    chunk = rate * 5 * 2  # 5 s per frame: each one is a long decode, which must not stall the loop

    async def run():
        async with Emulator(EmulatorConfig(engine="sphinx")) as emu:
            ws = await websockets.connect(
                f"{emu.url}/v1/listen?model=nova-3&encoding=linear16&sample_rate={rate}&interim_results=true"
                "&endpointing=300", additional_headers={"Authorization": "Token k"})
            data = audio.tobytes()
            for off in range(0, len(data), chunk):
                await ws.send(data[off:off + chunk])
            await ws.send('{"type":"CloseStream"}')
            messages = []
            worst_stats_s = 0.0
            reader = asyncio.ensure_future(ws.recv())
            while True:
                # While the stream decodes, the loop must answer other work promptly (here: /stats).
                t0 = time.monotonic()
                emu.stats()
                await asyncio.sleep(0)
                worst_stats_s = max(worst_stats_s, time.monotonic() - t0)
                done, _ = await asyncio.wait({reader}, timeout=0.05)
                if not done:
                    continue
                try:
                    messages.append(orjson.loads(reader.result()))
                except websockets.ConnectionClosedOK:
                    break
                reader = asyncio.ensure_future(ws.recv())
            return messages, ws.close_code, worst_stats_s

    messages, close_code, worst_stats_s = asyncio.run(asyncio.wait_for(run(), BOUND))
    assert close_code == 1000 and messages[-1]["type"] == "Metadata"
    results = [m for m in messages if m["type"] == "Results"]
    finals = [m for m in results if m["is_final"]]
    assert any(not m["is_final"] and m["channel"]["alternatives"][0]["words"] for m in results)  # interim hypotheses
    words = [w for m in finals for w in m["channel"]["alternatives"][0]["words"]]
    for m in finals:
        for w in m["channel"]["alternatives"][0]["words"]:
            assert m["start"] - 0.05 <= w["start"] < w["end"] <= m["start"] + m["duration"] + 0.1
    recognised = {w["word"] for w in words} & truth
    assert len(recognised) >= 20, f"only {sorted(recognised)} of the real words"
    precision = sum(w["word"] in truth for w in words) / len(words)
    assert precision >= 0.5, f"precision {precision:.2f}: {[w['word'] for w in words]}"
    assert worst_stats_s < 0.5, f"event loop stalled {worst_stats_s:.2f} s during decoding"
