"""One behavioural suite, run over both buses (``bus`` is parametrised: memory, redis). Each test drives a
whole ``rtaa serve`` pipeline (real sockets, the real emulator through deepgram-sdk, real Redis) and checks
what a user sees: the feed's schema and order, finals tiling the audio, one provider stream per call, and
for the Redis bus that nothing of a call is left in Redis once it ended."""
from __future__ import annotations

import asyncio
from typing import Iterator

import pytest

from helpers.redisdb import call_keys, delete, new_prefix, redis_url
from rtaa_cli.pipeline.config import BusConfig, IngestConfig
from helpers.pipeline import Caller, Feed, assert_tiles, frames_of, pipeline, run, speech_like, until

TRANSCRIPT_KEYS = {"type", "interaction_id", "stream_sid", "seq", "is_final", "speech_final", "from_finalize", "text",
                   "confidence", "words", "audio_start_ms", "audio_end_ms", "provider", "provider_connection",
                   "received_at", "sent_at"}


@pytest.fixture(params=["memory", "redis"])
def bus(request) -> Iterator[BusConfig]:
    if request.param == "memory":
        yield BusConfig()
        return
    prefix = new_prefix()
    try:
        yield BusConfig(url=redis_url(), prefix=prefix)
        assert call_keys(prefix) == [], "a call's keys were left in Redis after it ended"
    finally:
        delete(prefix)


def check_feed(feed: Feed, iid: str, total_ms: float) -> None:
    msgs = feed.messages
    assert msgs[0]["type"] == "call_started" and msgs[-1]["type"] == "call_ended", [m["type"] for m in msgs]
    assert set(msgs[0]) == {"type", "interaction_id", "stream_sid", "at", "sent_at"}, msgs[0]
    assert set(msgs[-1]) == {"type", "interaction_id", "reason", "at", "sent_at"}, msgs[-1]
    transcripts = feed.transcripts()
    assert all(m["interaction_id"] == iid for m in msgs)
    for m in transcripts:
        assert set(m) == TRANSCRIPT_KEYS, sorted(set(m) ^ TRANSCRIPT_KEYS)
    seqs = [m["seq"] for m in transcripts]
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # every result, in order, once
    assert_tiles(feed.transcripts(final=True), total_ms)


def test_a_call_gets_its_finals_in_order(bus: BusConfig) -> None:
    async def main() -> None:
        async with pipeline(bus=bus) as (server, emu):
            feed = await Feed.open(server, "CA-one")
            firehose = await Feed.open(server)
            caller = await Caller.open(server, "CA-one")
            await caller.start()
            frames = frames_of(speech_like(4))
            await caller.paced(frames, 0.004)
            await caller.stop()
            await feed.wait_ended(20)
            check_feed(feed, "CA-one", len(frames) * 36.0)
            await until(lambda: any(m["type"] == "call_ended" for m in firehose.messages), 5, "firehose call_ended")
            assert [m["seq"] for m in firehose.transcripts()] == [m["seq"] for m in feed.transcripts()]
            assert emu.stats()["interactions"]["CA-one"]["max_open"] == 1
            await until(lambda: not server.bus.channels and not server.worker.interactions, 5, "call state freed")
            await firehose.close()
    run(main(), 60)


def test_concurrent_calls_keep_their_own_order(bus: BusConfig) -> None:
    async def one(server, iid: str, bursts: int) -> tuple[Feed, float]:
        feed = await Feed.open(server, iid)
        caller = await Caller.open(server, iid)
        await caller.start()
        frames = frames_of(speech_like(bursts))
        await caller.paced(frames, 0.01)
        await caller.stop()
        await feed.wait_ended(30)
        return feed, len(frames) * 36.0

    async def main() -> None:
        async with pipeline(bus=bus) as (server, emu):
            calls = {f"CA-c{i}": 2 + i % 3 for i in range(6)}
            results = await asyncio.gather(*(one(server, iid, b) for iid, b in calls.items()))
            for iid, (feed, total_ms) in zip(calls, results):
                check_feed(feed, iid, total_ms)
            stats = emu.stats()["interactions"]
            assert {iid: stats[iid]["max_open"] for iid in calls} == {iid: 1 for iid in calls}
    run(main(), 90)


def test_a_dropped_stream_resumed_in_grace_is_one_call(bus: BusConfig) -> None:
    async def main() -> None:
        async with pipeline(bus=bus, ingest=IngestConfig(reconnect_grace_s=5.0)) as (server, emu):
            feed = await Feed.open(server, "CA-drop")
            frames = frames_of(speech_like(4))
            half = len(frames) // 2
            first = await Caller.open(server, "CA-drop", "ST-a")
            await first.start()
            await first.paced(frames[:half], 0.004)
            await first.ws.close()  # no stop: the call waits for a resume
            second = await Caller.open(server, "CA-drop", "ST-b")
            await second.start()
            await second.paced(frames[half:], 0.004)
            await second.stop()
            await feed.wait_ended(20)
            check_feed(feed, "CA-drop", len(frames) * 36.0)
            assert [m["type"] for m in feed.messages].count("call_started") == 1
            assert emu.stats()["interactions"]["CA-drop"]["connections"] == 1
    run(main(), 60)
