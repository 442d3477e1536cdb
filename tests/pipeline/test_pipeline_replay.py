"""The replay buffer over real sockets: after a provider reconnect the new connection is sent exactly the
audio no final acknowledged, bounded by ``replay_limit_s``, byte for byte, across the ring's wrap-around.

What each provider connection received is read from the emulator: its byte count, and which audio it was
from the LSB watermark the caller writes into every sample (rtaa_cli/watermark.py: packet n = samples
96 n .. 96 n + 95 of the call), decoded by the emulator per connection.
"""
from __future__ import annotations

import asyncio

from helpers.pipeline import Caller, Feed, frames_of, pipeline, run, speech_like, until

from rtaa_cli.emulator import EmulatorConfig
from rtaa_cli.pipeline.config import WorkerConfig
from rtaa_cli.watermark import PACKET_BITS, Marker, call_hex

LIMIT = 16000  # replay_limit_s=1.0 at 8 kHz: not a multiple of the 576-byte frame, so replays wrap
PACKET_BYTES = PACKET_BITS * 2


def test_a_reconnect_replays_exactly_the_unacknowledged_audio_held_by_the_bounded_ring() -> None:
    """The first provider connection is dropped (TCP reset) 1.5 s in (3 s of audio at 2x real time) with its results
    held back 60 s, so no final acknowledges anything: the ring then holds only the newest 1 s. The second
    connection must receive exactly stream bytes [oldest held, end): the whole ring, then the live frames, each
    byte once and in order (one contiguous watermark run from the first whole packet after the trim point)."""
    pcm = speech_like(4)  # 4.8 s of audio
    frames = Marker("CA-ring").mark_frames(frames_of(pcm))

    async def main() -> tuple[dict, object, list[dict]]:
        emu_cfg = EmulatorConfig(drop_after_s=1.5, result_latency_ms=60_000, seed=3)
        async with pipeline(emu_cfg, worker=WorkerConfig(replay_limit_s=1.0)) as (server, emu):
            feed = await Feed.open(server, "CA-ring")
            c = await Caller.open(server, "CA-ring")
            await c.start()
            await until(lambda: emu.stats()["totals"]["open"] == 1, 10, "the first provider stream")
            emu.set_faults(drop_after_s=None)  # only the first connection is cut
            sending = asyncio.get_running_loop().create_task(c.paced(frames, 0.018))
            await until(lambda: emu.stats()["totals"]["dropped"] == 1, 10, "the first connection's drop")
            emu.set_faults(result_latency_ms=0)  # the second connection's results come at once
            await sending
            await c.stop()
            await feed.wait_ended(15)
            await c.ws.close()
            return emu.stats(), server.metrics, feed.messages

    stats, metrics, messages = run(main(), 60)
    conns = sorted((c for c in stats["connections"] if c["interaction"] == "CA-ring"), key=lambda c: c["id"])
    assert len(conns) == 2 and stats["interactions"]["CA-ring"]["duplicates"] == 0, conns
    first, second = conns
    assert first["close_code"] in (None, 1006) and first["results_sent"] == 0, first  # nothing acknowledged
    # The audio the ring had given up when the second connection opened is a gap, once, on the feed.
    # (A finalize_timeout gap may follow when the second connection's first results were still held back.)
    gaps = [m for m in messages if m["type"] == "gap" and m["cause"] == "replay_trim"]
    assert [g["audio_start_ms"] for g in gaps] == [0.0], gaps
    held_from = round(gaps[0]["audio_end_ms"] * 16)  # stream position of the oldest byte the ring held
    assert held_from > 0 and held_from % 2 == 0  # the outage outlasted the 1 s ring: its bound was hit
    assert metrics.value("rtaa_replay_buffer_trimmed_bytes_total") >= held_from
    assert metrics.value("rtaa_provider_replayed_bytes_total") >= LIMIT  # the replay was the full ring
    # exactly the unacknowledged audio the ring held, then the rest of the call: no byte lost or repeated
    assert second["audio_bytes"] == len(pcm) - held_from, (second["audio_bytes"], len(pcm), held_from)
    mark = second["watermark"]
    assert mark is not None and mark["call"] == call_hex("CA-ring"), mark
    first_packet = -(-held_from // PACKET_BYTES)  # the first packet whole after the trim point
    assert mark["runs"] == [[first_packet, len(pcm) // PACKET_BYTES]], (mark, held_from)
    assert mark["missing"] == 0 and mark["repeated"] == 0
    old = first["watermark"]
    assert old["runs"][0][0] == 0 and old["missing"] == 0 and old["repeated"] == 0, old
    print(f"ring held from {held_from} B, second connection {second['audio_bytes']} B = {len(pcm)} - {held_from}, "
          f"watermark run {mark['runs']}")
