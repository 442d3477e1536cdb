"""Newest stream wins across ingest processes (docs/scale-out.md "Several ingests for one call"): two ingests
and one worker, each a whole in-process ``rtaa serve`` on one Redis prefix, the emulator as provider through
deepgram-sdk. A call streams through ingest A, then a newer stream of the same call arrives at ingest B (Exotel
reconnecting through a load balancer): A's caller is closed as superseded, the one provider stream continues,
what A wrote after B's start never reaches the provider, and B's feed has every final exactly once."""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator

import orjson
import redis

from helpers.redisdb import call_keys, delete, new_prefix, redis_url
from rtaa_cli.emulator import Emulator, EmulatorConfig
from rtaa_cli.pipeline import bus as busmod
from rtaa_cli.pipeline.config import BusConfig, IngestConfig, PipelineConfig, ProviderConfig
from rtaa_cli.pipeline.entrylog import AUDIO, START, EntryLog
from rtaa_cli.pipeline.metrics import PipelineMetrics
from rtaa_cli.pipeline.ingest_rules import STREAMING, SUPERSEDED, SUPERSEDED_REASON, IngestRules, Stream
from rtaa_cli.pipeline.providers.deepgram import DeepgramProvider
from rtaa_cli.pipeline.redisbus import RedisBus, RedisPublisher
from rtaa_cli.pipeline.server import PipelineServer
from rtaa_cli.protocols.closecodes import Close
from helpers.ingest import Call, StartEv
from helpers.pipeline import FRAME, Caller, Feed, assert_tiles, frames_of, run, speech_like, until

IID = "CA-xingest"


class Deployment:
    def __init__(self, a: PipelineServer, b: PipelineServer, w: PipelineServer, emu: Emulator, prefix: str) -> None:
        self.a, self.b, self.w, self.emu, self.prefix = a, b, w, emu, prefix

    def bus(self, server: PipelineServer) -> RedisBus:
        assert isinstance(server.bus, RedisBus)
        return server.bus

    def provider_bytes(self) -> int:
        """Audio the provider received for the call, over all its connections (tagged with the call's id)."""
        return sum(c["audio_bytes"] for c in self.emu.stats()["connections"] if c["interaction"] == IID)

    def superseded_entries(self) -> float:
        return self.w.metrics.registry.get_sample_value("rtaa_bus_superseded_entries_total") or 0.0

    async def a_half_at_provider(self, frames: int) -> None:
        await until(lambda: self.provider_bytes() == frames * FRAME, 20, "ingest A's audio at the provider")


@contextlib.asynccontextmanager
async def deployment(grace_s: float = 5.0) -> AsyncIterator[Deployment]:
    """Ingest A, ingest B and a worker on one fresh key prefix; nothing of it is left in Redis afterwards."""
    prefix = new_prefix()
    try:
        async with Emulator(EmulatorConfig(seed=7)) as emu:
            def cfg(role: str) -> PipelineConfig:
                return PipelineConfig(provider=ProviderConfig(name="deepgram", deepgram_url=emu.url),
                                      ingest=IngestConfig(reconnect_grace_s=grace_s),
                                      bus=BusConfig(url=redis_url(), prefix=prefix, role=role))
            w = PipelineServer(cfg("worker"), DeepgramProvider("test-key", emu.url))
            a, b = PipelineServer(cfg("ingest")), PipelineServer(cfg("ingest"))
            async with w, a, b:
                yield Deployment(a, b, w, emu, prefix)
    finally:
        delete(prefix)


async def finish(d: Deployment, feed: Feed, total_frames: int) -> None:
    """The call as B's feed shows it: one call_started, every final once (tiling all the audio that counts),
    call_ended last; one provider connection; and no key of the call left in Redis."""
    await feed.wait_ended(30)
    msgs = feed.messages
    assert [m["type"] for m in msgs].count("call_started") == 1 and msgs[-1]["type"] == "call_ended", \
        [m["type"] for m in msgs]
    assert msgs[-1]["reason"] == "stopped", msgs[-1]  # B's stop ended it, nothing of A's
    seqs = [m["seq"] for m in feed.transcripts()]
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # every result once, in order
    assert_tiles(feed.transcripts(final=True), total_frames * 36.0)
    inter = d.emu.stats()["interactions"][IID]
    assert (inter["connections"], inter["max_open"], inter["duplicates"]) == (1, 1, 0), inter
    assert d.provider_bytes() == total_frames * FRAME
    await until(lambda: call_keys(d.prefix) == [], 10, f"the call's keys deleted: {call_keys(d.prefix)}")


def test_a_newer_stream_at_another_ingest_supersedes_the_first() -> None:
    async def main() -> None:
        async with deployment() as d:
            frames = frames_of(speech_like(6))
            half = len(frames) // 2
            feed = await Feed.open(d.b, IID)
            first = await Caller.open(d.a, IID, "ST-a")
            await first.start()
            await first.paced(frames[:half], 0.004)
            await d.a_half_at_provider(half)
            second = await Caller.open(d.b, IID, "ST-b")
            await second.start()
            assert await first.closed(10) == (Close.GOING_AWAY, SUPERSEDED_REASON)
            assert IID not in d.bus(d.a).channels  # A publishes nothing more of the call
            assert d.a.metrics.registry.get_sample_value("rtaa_ingest_streams_superseded_total") == 1
            # Frames A had taken in before it read the notice go out behind B's START: written here by a
            # publisher of A's process (A's origin), exactly as A's own would have; none may reach the provider.
            late = RedisPublisher(d.bus(d.a), IID)
            for f in frames_of(speech_like(1)):
                await late.publish((busmod.AUDIO, f, time.perf_counter()))
            n_late = len(frames_of(speech_like(1)))
            await until(lambda: d.superseded_entries() == n_late, 10, "the worker skipping A's late frames")
            await second.paced(frames[half:], 0.036)
            await second.stop()
            await finish(d, feed, len(frames))
            assert d.superseded_entries() == n_late
            await feed.close()
    run(main(), 90)


def test_a_call_in_its_resume_grace_continues_at_another_ingest() -> None:
    """The load balancer's case: A's caller drops without stop (A waits for a resume), Exotel reconnects
    to B. A lets go of the call at once, so its grace running out ends nothing (1 s here; B streams 3.6 s)."""
    async def main() -> None:
        async with deployment(grace_s=1.0) as d:
            frames = frames_of(speech_like(6))
            half = len(frames) // 2
            feed = await Feed.open(d.b, IID)
            first = await Caller.open(d.a, IID, "ST-a")
            await first.start()
            await first.paced(frames[:half], 0.004)
            await d.a_half_at_provider(half)
            await first.ws.close()  # no stop: the call waits for a resume
            await until(lambda: IID in d.a.ingest.rules.grace, 5, "A's resume grace")
            second = await Caller.open(d.b, IID, "ST-b")
            await second.start()
            await until(lambda: IID not in d.bus(d.a).channels, 10, "A letting go of the call")
            assert d.a.ingest.rules.grace == {} and d.a.ingest._grace == {}
            await second.paced(frames[half:], 0.036)
            await second.stop()
            await finish(d, feed, len(frames))
            await feed.close()
    run(main(), 90)


def test_a_stale_notice_does_not_supersede_a_newer_stream() -> None:
    """A -> B -> A again: B's caller is superseded in turn; the first notice (A superseded by B), delivered
    again after A's newer START, names an older START than A's and changes nothing."""
    async def main() -> None:
        async with deployment() as d:
            frames = frames_of(speech_like(6))
            third = len(frames) // 3
            feed = await Feed.open(d.b, IID)
            first = await Caller.open(d.a, IID, "ST-a")
            await first.start()
            await first.paced(frames[:third], 0.004)
            await d.a_half_at_provider(third)
            second = await Caller.open(d.b, IID, "ST-b")
            await second.start()
            assert await first.closed(10) == (Close.GOING_AWAY, SUPERSEDED_REASON)
            await second.paced(frames[third:2 * third], 0.004)
            await d.a_half_at_provider(2 * third)
            again = await Caller.open(d.a, IID, "ST-c")
            await again.start()
            assert await second.closed(10) == (Close.GOING_AWAY, SUPERSEDED_REASON)
            r = redis.Redis.from_url(redis_url())
            feed_key = f"{d.prefix}:feed"
            notices = [orjson.loads(f[b"m"]) for _, f in r.xrange(feed_key)
                       if orjson.loads(f[b"m"])["type"] == "_superseded"]
            assert [(n["origin"], n["by"]) for n in notices] == [(d.bus(d.a).origin, d.bus(d.b).origin),
                                                               (d.bus(d.b).origin, d.bus(d.a).origin)], notices
            stale = r.xadd(feed_key, {"m": orjson.dumps(notices[0])}).decode()
            await until(lambda: d.bus(d.a)._feed_last >= stale, 10, "A reading the stale notice")
            assert IID in d.bus(d.a).channels and d.a.ingest.current[IID].state is STREAMING
            await again.paced(frames[2 * third:], 0.036)
            await again.stop()
            await finish(d, feed, len(frames))
            await feed.close()
    run(main(), 90)


def test_rules_let_go_of_a_call_superseded_elsewhere() -> None:
    calls: dict[str, Call] = {}
    rules = IngestRules(IngestConfig(reconnect_grace_s=5.0), calls)  # type: ignore[arg-type]
    s = Stream("anonymous", rules.message_bucket(0.0))
    rules.start(s, StartEv(IID), 0.0)  # type: ignore[arg-type]
    calls[IID] = Call()
    assert rules.superseded_elsewhere(IID) is s and s.state is SUPERSEDED
    assert rules.disconnected(s, 1.0) is None  # no resume grace, no END: the call is fed elsewhere
    assert rules.superseded_elsewhere(IID) is None
    dropped = Stream("anonymous", rules.message_bucket(0.0))
    rules.start(dropped, StartEv("CA-other"), 0.0)  # type: ignore[arg-type]
    assert rules.disconnected(dropped, 1.0) is not None and "CA-other" in rules.grace
    assert rules.superseded_elsewhere("CA-other") is None and rules.grace == {}


def test_entry_log_checkpoints_the_origin_where_a_successor_resumes() -> None:
    """Only entries of the ingest of the latest START count; the checkpoint carries the origin in effect at
    its resume point, so a successor re-reading from there counts the same entries."""
    log = EntryLog()
    log.add("1-0", START, 0, 1, b"A")
    log.add("2-0", AUDIO, 100, 2, b"A")
    log.add("3-0", START, 0, 1, b"B")
    assert not log.counts(AUDIO, b"A") and log.counts(AUDIO, b"B") and log.counts(START, b"A")
    log.skip("4-0")  # A's late frame
    log.add("5-0", AUDIO, 100, 2, b"B")
    assert log.last_id == "5-0" and log.position == 200
    ck = log.acked(50)  # A's entry half covered: resume in it, under A
    assert (ck.first, ck.skip, ck.origin) == ("2-0", 50, b"A")
    ck = log.acked(100)  # A's audio covered: resume at B's START (re-read, it names B itself)
    assert (ck.first, ck.origin) == ("3-0", b"A")
    ck = log.acked(150)
    assert (ck.first, ck.skip, ck.origin) == ("5-0", 50, b"B")
    ck = log.acked(200)
    assert (ck.after, ck.first, ck.origin) == ("5-0", "", b"B")
    assert EntryLog(origin=b"B").counts(AUDIO, b"A") is False and EntryLog().counts(AUDIO, b"A")


def test_publisher_decides_a_notice_against_its_latest_start() -> None:
    """Sans Redis: a notice supersedes this ingest's call only if its START (entry ``at``) is newer than this
    ingest's latest START of the call, and waits for the answer of a START still in flight."""
    async def main() -> None:
        bus = RedisBus("redis://unused", new_prefix(), PipelineMetrics())
        told: list[str] = []
        bus.superseded_elsewhere = told.append
        pub = bus.open(IID)
        pub.start_id = (5, 0)
        pub.superseded((4, 0))  # older than this ingest's latest START: stale
        assert told == [] and bus.channels == {IID: pub}
        pub.starts_in_flight = 1
        pub.superseded((9, 0))  # a START in flight: decided once it is answered
        assert told == []
        pub._sent_start(b"10-0")  # it came after the notice's START: nothing superseded
        assert told == [] and not pub.closed and pub.superseded_at is None
        pub.starts_in_flight = 1
        pub.superseded((12, 0))
        pub._sent_start(b"11-0")  # it came before: superseded now
        assert told == [IID] and pub.closed and bus.channels == {}
    asyncio.run(main())
