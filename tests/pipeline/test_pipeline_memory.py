"""Calls leave nothing behind: after hundreds of calls (normal, and dropped + resumed with a new stream),
the pipeline holds no per-call state and its Python heap has not grown with the number of calls.

The complement of the `memory` soak scenario (the target's RSS over 30 minutes): this one is exact and
fast. Python-level growth is measured with tracemalloc between two points where no call is live, after a
warm-up that fills every bounded cache (the emulator's per-call records, urllib's URL cache). Tracing
starts before the warm-up, so an entry evicted from a full cache counts as freed.
"""
from __future__ import annotations

import asyncio
import gc
import tracemalloc

from helpers.pipeline import Caller, frames_of, pipeline, run, speech_like, until

from rtaa_cli.emulator import Emulator, EmulatorConfig
from rtaa_cli.pipeline.server import PipelineServer

CALLS_PER_BATCH = 20
WARMUP_BATCHES = 4  # 80 calls: past urllib.parse's 128-entry URL cache (two URLs per call in this process)
MEASURED_BATCHES = 3  # 60 calls
# A leaked Interaction, timeline, task or socket per call costs kilobytes; 60 calls of that are far above
# this. What may legitimately differ between two idle points is a few allocator-level objects.
MAX_GROWTH_BYTES = 40_000
IGNORED_FILES = ("*/tracemalloc.py", "*/linecache.py", "<frozen importlib._bootstrap*>", "*/urllib/parse.py")


async def _call(server: PipelineServer, call_sid: str, frames: list[bytes], drop: bool) -> None:
    c = await Caller.open(server, call_sid)
    await c.start()
    if drop:  # TCP drop without a close frame, then the same call resumes on a new stream
        for f in frames[:20]:
            await c.media(f)
        c.ws.transport.abort()
        c = await Caller.open(server, call_sid, stream_sid=f"ST2-{call_sid}")
        await c.start()
        frames = frames[20:]
    for f in frames:
        await c.media(f)
    await c.stop()
    await c.ws.close()


async def _batch(server: PipelineServer, n: int, frames: list[bytes]) -> None:
    await asyncio.gather(*(_call(server, f"MEM-{n}-{i}", frames, drop=i % 4 == 0) for i in range(CALLS_PER_BATCH)))
    await until(lambda: not server.bus.channels and not server.worker.interactions, 20, "every call to end")


def _assert_no_call_state(server: PipelineServer) -> None:
    ingest, hub = server.ingest, server.hub
    assert not server.bus.channels and not server.worker.interactions
    assert not ingest.current and not ingest.connections and not ingest._grace
    assert not hub._by_call and not hub._firehose
    assert server.metrics.value("rtaa_calls_active") == 0


async def _play_to_idle(server: PipelineServer, emu: Emulator, first: int, batches: int,
                        frames: list[bytes]) -> tracemalloc.Snapshot:
    """Play ``batches`` batches, check that no call state is left, and snapshot the idle heap once the
    emulator (in this process too) has closed its side of every stream: on a busy host its closes can
    lag the pipeline's, and its live sessions are not the pipeline's leak."""
    for n in range(first, first + batches):
        await _batch(server, n, frames)
    _assert_no_call_state(server)
    await until(lambda: emu.stats()["totals"]["open"] == 0, 20, "the emulator to close every stream")
    gc.collect()
    return tracemalloc.take_snapshot()


def _traced(snapshot: tracemalloc.Snapshot) -> int:
    filtered = snapshot.filter_traces([tracemalloc.Filter(False, pattern) for pattern in IGNORED_FILES])
    return sum(stat.size for stat in filtered.statistics("filename"))


def test_hundreds_of_calls_leave_no_state_and_no_heap_growth() -> None:
    frames = frames_of(speech_like(2))

    async def scenario() -> tuple[int, list[str]]:
        tracemalloc.start(6)
        try:
            async with pipeline(EmulatorConfig(seed=3, max_closed_records=20, max_interactions=20)) as (server, emu):
                before = await _play_to_idle(server, emu, 0, WARMUP_BATCHES, frames)
                after = await _play_to_idle(server, emu, WARMUP_BATCHES, MEASURED_BATCHES, frames)
                total = (WARMUP_BATCHES + MEASURED_BATCHES) * CALLS_PER_BATCH
                assert server.metrics.value("rtaa_calls_total") == total
        finally:
            tracemalloc.stop()
        growth = _traced(after) - _traced(before)
        top = ["\n".join([str(s)] + s.traceback.format()[-12:]) for s in after.compare_to(before, "traceback")[:5]]
        return growth, top

    growth, top = run(scenario(), timeout_s=120)
    calls = MEASURED_BATCHES * CALLS_PER_BATCH
    assert growth < MAX_GROWTH_BYTES, f"heap grew {growth} B over {calls} calls; largest:\n" + "\n".join(top)
