"""docs/incidents.md 000/001: duplicate provider connections from a check-then-create race. Exactly one provider
connection per interaction, by the emulator's /stats, under bursts; and the same test run against the
naive variant (built here, :class:`NaiveInteraction`: production code has no broken mode) finds the
duplicates (so it can fail).

Set RTAA_BREAK_SINGLE_FLIGHT=1 to run the strict tests against the naive variant (they must fail)."""
from __future__ import annotations

import asyncio
import os
import time

import pytest

from rtaa_cli.emulator import Emulator, EmulatorConfig
from rtaa_cli.pipeline.config import WorkerConfig
from rtaa_cli.pipeline.metrics import PipelineMetrics
from rtaa_cli.pipeline.providers.base import ProviderError
from rtaa_cli.pipeline.providers.deepgram import DeepgramProvider
from rtaa_cli.pipeline import worker as workermod
from rtaa_cli.pipeline.worker import Interaction
from rtaa_cli.pipeline.worker_rules import Action, CallRules, Link, Replay
from helpers.pipeline import FRAME, Caller, pipeline, run, speech_like, until

BROKEN = os.environ.get("RTAA_BREAK_SINGLE_FLIGHT") == "1"
SLOW_HANDSHAKE = EmulatorConfig(handshake_delay_ms=(150.0, 300.0), seed=3)


class NaiveRules(CallRules):
    """The check-then-create bug of docs/incidents.md (001): every need that finds no open stream opens one
    (check, then create), so frames arriving during a handshake open duplicates."""

    def need(self, now: float) -> Action:
        if self.link is Link.OPEN:
            return Action.SEND
        if self.link is Link.FAILED:
            return Action.FAIL
        self._begin(now)
        return Action.OPEN

    frame = need

    def connected(self) -> Replay:
        self.link = Link.CONNECTING  # another opening may have moved on meanwhile
        return super().connected()

    def ready(self, sent: int, now: float) -> int:
        self.link = Link.REPLAYING
        return super().ready(sent, now)


class NaiveInteraction(Interaction):
    rules_cls = NaiveRules


@pytest.fixture
def interaction_cls(monkeypatch: pytest.MonkeyPatch) -> type[Interaction]:
    """The worker's class, or the naive one under RTAA_BREAK_SINGLE_FLIGHT=1 (also inside the pipeline)."""
    cls = NaiveInteraction if BROKEN else Interaction
    monkeypatch.setattr(workermod, "Interaction", cls)
    return cls


async def _burst(calls: int, frames_per_call: int,
                 cls: type[Interaction] = Interaction) -> tuple[dict, PipelineMetrics, int]:
    """``calls`` interactions start in the same instant, each with ``frames_per_call`` frames at once."""
    async with Emulator(SLOW_HANDSHAKE) as emu:
        provider = DeepgramProvider("test-key", emu.url)
        metrics = PipelineMetrics()
        out: list[dict] = []
        calls_ = [cls(f"burst-{i}", 8000, provider, WorkerConfig(), metrics, out.append) for i in range(calls)]
        frame = b"\x01\x00" * (FRAME // 2)
        now = time.perf_counter()
        await asyncio.gather(*(c.push_audio(frame, now) for c in calls_ for _ in range(frames_per_call)))
        await asyncio.gather(*(c.end("stopped") for c in calls_))
        stats = emu.stats()
        return stats, metrics, sum(c.connections_opened for c in calls_)


def test_fifty_frames_and_hundred_calls_at_once_open_one_connection_each(interaction_cls: type[Interaction]) -> None:
    stats, metrics, opened = run(_burst(calls=100, frames_per_call=50, cls=interaction_cls), 90)
    interactions = {k: v for k, v in stats["interactions"].items() if k.startswith("burst-")}
    assert len(interactions) == 100
    assert stats["totals"]["duplicates"] == 0, f"duplicate provider connections: {stats['totals']['duplicates']}"
    assert all(v["connections"] == 1 and v["max_open"] == 1 for v in interactions.values()), \
        {k: v for k, v in interactions.items() if v["connections"] != 1}
    assert opened == 100
    assert metrics.value("rtaa_provider_duplicate_opens_prevented_total") == 100 * 49
    assert metrics.value("rtaa_provider_duplicate_connections_total") == 0  # the pipeline's own count agrees
    # Every frame reached the provider exactly once, and every stream was closed cleanly (CloseStream).
    assert stats["totals"]["audio_bytes"] == 100 * 50 * FRAME
    assert stats["totals"]["close_codes"] == {"1000": 100}


def test_the_race_test_detects_the_naive_check_then_create() -> None:
    """The broken variant (no single-flight) under the same burst: the emulator sees duplicates."""
    stats, metrics, opened = run(_burst(calls=10, frames_per_call=50, cls=NaiveInteraction), 60)
    assert stats["totals"]["duplicates"] > 0
    # /metrics reports them too, so a remote soak without the emulator's /stats still sees them
    assert metrics.value("rtaa_provider_duplicate_connections_total") > 0
    assert opened > 10


def test_failed_opening_reaches_every_waiter_and_nothing_hangs() -> None:
    async def main() -> tuple[list, PipelineMetrics]:
        async with Emulator(EmulatorConfig(api_key="right-key", handshake_delay_ms=(100.0, 150.0))) as emu:
            provider = DeepgramProvider("wrong-key", emu.url)  # HTTP 401: permanent, no retry
            metrics = PipelineMetrics()
            call = Interaction("refused", 8000, provider, WorkerConfig(), metrics, lambda m: None)
            frame = b"\x00\x00" * (FRAME // 2)
            results = await asyncio.gather(*(call.push_audio(frame, time.perf_counter()) for _ in range(50)),
                                           return_exceptions=True)
            await call.end("stopped")
            assert emu.stats()["totals"]["rejected_401"] == 1
            return results, metrics

    results, metrics = run(main(), 30)
    assert all(isinstance(r, ProviderError) and r.status == 401 for r in results), results
    assert metrics.value("rtaa_provider_open_failures_total", provider="deepgram") == 1
    assert metrics.value("rtaa_provider_duplicate_opens_prevented_total") == 49


def test_hundred_callers_starting_together_through_the_ingest(interaction_cls: type[Interaction]) -> None:
    """End to end: the eager open on ``start`` and the first frames race for the provider stream."""
    async def main() -> dict:
        async with pipeline(SLOW_HANDSHAKE) as (server, emu):
            pcm = speech_like(1, on_s=0.3, off_s=0.06)
            callers = await asyncio.gather(*(Caller.open(server, f"CA{i:03d}") for i in range(100)))

            async def call(c: Caller) -> None:
                await c.start()
                for k in range(0, len(pcm), FRAME):  # frames back to back, no pacing
                    await c.media(pcm[k:k + FRAME])
                await c.stop()

            await asyncio.gather(*(call(c) for c in callers))
            await until(lambda: emu.stats()["totals"]["close_streams"] >= 100 and emu.stats()["totals"]["open"] == 0,
                        30, "all provider streams to close")
            for c in callers:
                await c.ws.close()
            return emu.stats()

    stats = run(main(), 90)
    inter = {k: v for k, v in stats["interactions"].items() if k.startswith("CA")}
    assert len(inter) == 100
    assert stats["totals"]["duplicates"] == 0
    assert all(v["connections"] == 1 for v in inter.values())
