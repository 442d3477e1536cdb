"""Issue 10 item 8, the grace-timer path: a caller that drops (no ``stop``) while its call's bus channel is
full. Real ingest, real deepgram-sdk, the real emulator with a stalled handshake."""
from __future__ import annotations

from rtaa_cli.emulator import EmulatorConfig
from rtaa_cli.pipeline.config import IngestConfig
from helpers.pipeline import FRAME, Caller, Feed, frames_of, pipeline, run, speech_like, until


def test_a_drop_on_a_full_channel_still_ends_the_call_when_the_grace_runs_out() -> None:
    """The provider handshake stalls, the channel fills, the caller vanishes without ``stop``. The END the
    resume-grace timer publishes hit BusOverloaded and was dropped: the call stayed active forever on
    KeepAlive. Now it ends ("stream dropped"), its provider stream closes 1000, the gauge returns to 0."""
    depth = 8

    async def main() -> None:
        emu_cfg = EmulatorConfig(handshake_delay_ms=(1500.0, 1500.0), seed=5)
        async with pipeline(emu_cfg, bus_queue_frames=depth, bus_publish_timeout_s=0.2,
                            ingest=IngestConfig(reconnect_grace_s=0.1)) as (server, emu):
            feed = await Feed.open(server, "drop-1")
            c = await Caller.open(server, "drop-1")
            await c.start()
            frames = frames_of(speech_like(1))
            await until(lambda: "drop-1" in server.bus.channels, 5, "the call's channel")
            channel = server.bus.channels["drop-1"]
            sent = 0
            while channel.queue.qsize() < depth:  # the consumer is stuck on the first frame's handshake
                await c.media(frames[sent])
                sent += 1
                await until(lambda: channel.queue.qsize() >= sent - 1, 5, "frame queued")
            await c.ws.close()  # gone without stop: the grace timer (0.1 s) publishes END into a full channel
            await feed.wait_ended(10)
            assert [m["reason"] for m in feed.messages if m["type"] == "call_ended"] == ["stream dropped"]
            await until(lambda: server.metrics.value("rtaa_calls_active") == 0, 5, "calls_active back to 0")
            await until(lambda: emu.stats()["totals"]["close_codes"].get("1000") == 1, 5, "provider stream closed")
            assert emu.stats()["totals"]["open"] == 0
            assert emu.stats()["totals"]["audio_bytes"] == sent * FRAME  # every queued frame went out, once
            await feed.close()

    run(main(), 30)
