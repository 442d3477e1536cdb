"""docs/incidents.md 001/002: continuous forwarding (no time-based buffer), KeepAlive through holds (no 1011), end of
stream (finals always, never a hang), audio after end reported, provider 1011 mid-call (reconnect, no gap,
no repeat). Real emulator, real deepgram-sdk, real sockets."""
from __future__ import annotations

import asyncio
import time

from rtaa_cli.emulator import Emulator, EmulatorConfig
from rtaa_cli.pipeline.config import WorkerConfig
from rtaa_cli.pipeline.metrics import PipelineMetrics
from rtaa_cli.pipeline.providers.deepgram import DeepgramProvider
from rtaa_cli.pipeline.worker import CallEnded, Interaction
from helpers.pipeline import (RATE, Caller, Feed, assert_tiles, frames_of, pipeline, run, speech_like,
                                   until)


def _interaction_bytes(emu, iid: str) -> int:
    return sum(c["audio_bytes"] for c in emu.stats()["connections"] if c["interaction"] == iid)


def test_every_frame_reaches_the_provider_as_it_arrives() -> None:
    """Lockstep: send one frame, wait until the emulator holds it, send the next. A forwarder that
    batches (incident 001's 500 ms buffer, or "send once 200 ms accumulated") stalls here for >= 500 ms
    or forever; forwarding as it arrives takes milliseconds. The bound is generous for a loaded box."""
    async def main() -> list[float]:
        async with pipeline() as (server, emu):
            c = await Caller.open(server, "CA-lockstep")
            await c.start()
            await until(lambda: emu.stats()["totals"]["open"] == 1, 10, "the provider stream to open")
            waits = []
            sent = 0
            for frame in frames_of(speech_like(2))[:40]:
                await c.media(frame)
                sent += len(frame)
                waits.append(await until(lambda: _interaction_bytes(emu, "CA-lockstep") >= sent, 2.0,
                                         f"frame ending at byte {sent} to reach the provider"))
            assert _interaction_bytes(emu, "CA-lockstep") == sent  # exactly once, nothing more
            await c.stop()
            await c.ws.close()
            return waits

    waits = run(main(), 60)
    assert max(waits) < 0.3, f"a frame took {max(waits) * 1000:.0f} ms to reach the provider"


def test_hold_with_keepalive_gives_no_1011_and_without_it_the_test_sees_one() -> None:
    """Scaled-down 15 s hold: provider idle limit 1 s, hold 3 s. KeepAlive every 0.3 s -> no 1011, one
    connection. Same call with KeepAlive effectively off -> the emulator closes 1011 (the check works),
    and the worker reconnects (counted, not a duplicate)."""
    async def call(keepalive_s: float) -> tuple[dict, PipelineMetrics, list]:
        emu_cfg = EmulatorConfig(idle_timeout_s=1.0, seed=5)
        async with pipeline(emu_cfg, worker=WorkerConfig(keepalive_interval_s=keepalive_s)) as (server, emu):
            feed = await Feed.open(server, "CA-hold")
            c = await Caller.open(server, "CA-hold")
            await c.start()
            frames = frames_of(speech_like(2))
            await c.paced(frames[:20], 0.005)
            # The hold: no media for 3 s (the caller is silent; this is the scenario, not a sync).
            await asyncio.sleep(3.0)
            await c.paced(frames[20:], 0.005)
            await c.stop()
            await feed.wait_ended()
            await c.ws.close()
            return emu.stats(), server.metrics, feed.transcripts(final=True)

    stats, metrics, finals = run(call(0.3), 60)
    assert stats["totals"]["closes_1011"] == 0
    assert stats["interactions"]["CA-hold"]["connections"] == 1
    assert stats["totals"]["keepalives"] >= 5
    assert metrics.value("rtaa_provider_reconnects_total") == 0
    assert finals

    stats, metrics, _ = run(call(100.0), 60)
    assert stats["totals"]["closes_1011"] >= 1
    assert stats["totals"]["duplicates"] == 0
    assert metrics.value("rtaa_provider_reconnects_total") >= 1
    assert metrics.value("rtaa_provider_closes_total", code="1011") >= 1


def test_stop_right_after_speech_still_yields_the_final_and_call_ended_after_it() -> None:
    """No trailing silence: only CloseStream's flush can produce the last final (incident 002's deadlock
    would hang here; dropping finals at hang-up, as Pipecat does, would lose it)."""
    async def main() -> tuple[list, list, float]:
        async with pipeline() as (server, emu):
            feed = await Feed.open(server, "CA-end")
            c = await Caller.open(server, "CA-end")
            await c.start()
            pcm = speech_like(3)
            pcm = pcm[: len(pcm) - int(0.4 * RATE * 2)]  # cut the last gap: ends mid-speech
            await c.paced(frames_of(pcm), 0.002)
            await c.stop()
            await feed.wait_ended(10)
            await c.ws.close()
            return feed.messages, feed.transcripts(final=True), len(pcm) / (RATE * 2 / 1000), server.metrics

    messages, finals, total_ms, metrics = run(main(), 60)
    assert_tiles(finals, total_ms, tail_ms=40.0)
    assert metrics.value("rtaa_end_to_end_latency_seconds_count", final="true") == len(finals)
    assert metrics.value("rtaa_results_out_total", final="true") == len(finals)
    assert messages[-1]["type"] == "call_ended"


def test_end_is_bounded_when_the_provider_never_answers_and_audio_after_end_is_reported() -> None:
    async def main() -> tuple[float, PipelineMetrics, Interaction]:
        # Results 30 s late: CloseStream's finals never come within the 0.5 s bound.
        async with Emulator(EmulatorConfig(result_latency_ms=30000.0)) as emu:
            metrics = PipelineMetrics()
            call = Interaction("CA-slow", RATE, DeepgramProvider("k", emu.url),
                               WorkerConfig(finalize_timeout_s=0.5), metrics, lambda m: None)
            for frame in frames_of(speech_like(1)):
                await call.push_audio(frame, time.perf_counter())
            t0 = time.perf_counter()
            await call.end("stopped")
            took = time.perf_counter() - t0
            try:
                await call.push_audio(b"\x00\x00" * 288, time.perf_counter())
            except CallEnded:
                pass
            else:
                raise AssertionError("audio after end was accepted silently")
            await until(lambda: emu.stats()["totals"]["open"] == 0, 5, "the provider stream to close")
            return took, metrics, call

    took, metrics, call = run(main(), 30)
    assert took < 3.0, f"end() took {took:.1f} s with a 0.5 s bound"
    assert metrics.value("rtaa_finalize_timeouts_total") == 1
    assert metrics.value("rtaa_audio_after_end_total") == 1
    assert call.state == "ended" and call.timeline.end > 0
    assert call.timeline.unfinalized() == (call.timeline.end, b"")  # per-call buffers freed


def test_provider_1011_mid_call_reconnects_and_the_transcript_has_no_gap_or_repeat() -> None:
    async def main() -> tuple[dict, PipelineMetrics, list, float]:
        emu_cfg = EmulatorConfig(close_1011_after_s=1.2, seed=9)
        async with pipeline(emu_cfg) as (server, emu):
            feed = await Feed.open(server, "CA-1011")
            c = await Caller.open(server, "CA-1011")
            await c.start()
            await until(lambda: emu.stats()["totals"]["open"] == 1, 10, "the first provider stream")
            emu.set_faults(close_1011_after_s=None)  # only the first connection is cut
            pcm = speech_like(5)
            await c.paced(frames_of(pcm), 0.018)  # 2x real time, so the cut lands mid-call
            await c.stop()
            await feed.wait_ended(15)
            await c.ws.close()
            return emu.stats(), server.metrics, feed.transcripts(final=True), len(pcm) / (RATE * 2 / 1000)

    stats, metrics, finals, total_ms = run(main(), 60)
    inter = stats["interactions"]["CA-1011"]
    assert inter["connections"] == 2 and inter["max_open"] == 1 and inter["duplicates"] == 0
    assert stats["totals"]["closes_1011"] == 1
    assert metrics.value("rtaa_provider_reconnects_total") == 1
    assert metrics.value("rtaa_provider_replayed_bytes_total") > 0
    assert {f["provider_connection"] for f in finals} == {1, 2}
    assert_tiles(finals, total_ms)  # monotonic stream time, every final once, nothing missing
    texts = [(f["audio_start_ms"], f["text"]) for f in finals]
    assert len(texts) == len(set(texts))
