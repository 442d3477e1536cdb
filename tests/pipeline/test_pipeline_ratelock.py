"""A start that never sends audio must not fix the call's sample rate (issue 10 item 2): the rate is fixed
by the call's first audio frame, so a silent 16 kHz start of a call_sid cannot make the real 8 kHz stream
of that call be refused 1007; once audio flowed, a start at another rate still is."""
from __future__ import annotations

from rtaa_cli.pipeline.ingest import SUPERSEDED_REASON
from helpers.pipeline import RATE, Caller, Feed, assert_tiles, frames_of, pipeline, run, speech_like


def test_a_silent_start_does_not_lock_the_sample_rate_but_audio_does() -> None:
    async def main():
        async with pipeline() as (server, emu):
            feed = await Feed.open(server, "CA-squat")
            squat = await Caller.open(server, "CA-squat", "ST-silent", rate=16000)
            await squat.start()  # never sends audio
            pcm = speech_like(3)
            frames = frames_of(pcm)
            real = await Caller.open(server, "CA-squat", "ST-real")
            await real.start()
            squat_close = await squat.closed()
            await real.paced(frames, 0.003)
            late = await Caller.open(server, "CA-squat", "ST-late", rate=16000)
            await late.start()  # audio at 8 kHz already flowed: this one is refused
            late_close = await late.closed()
            await real.stop()
            await feed.wait_ended(15)
            await real.ws.close()
            return squat_close, late_close, feed, emu.stats(), len(pcm) / (RATE * 2 / 1000), server

    squat_close, late_close, feed, stats, total_ms, server = run(main(), 60)
    assert squat_close == (1001, SUPERSEDED_REASON)
    assert late_close[0] == 1007 and "differs from this call's 8000" in late_close[1]
    assert_tiles(feed.transcripts(final=True), total_ms)  # every frame, timed at 8 kHz (at 16 kHz: half)
    types = [m["type"] for m in feed.messages]
    assert types.count("call_started") == 1 and types.count("call_ended") == 1
    assert server.metrics.value("rtaa_calls_total") == 1
    assert server.metrics.value("rtaa_calls_active") == 0
