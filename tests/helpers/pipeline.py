"""Shared helpers for the pipeline tests (no tests here): the real emulator + the real deepgram-sdk path,
speech-like audio generated in Python, and small raw Exotel callers."""
from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.error
import urllib.request
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import numpy as np
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from rtaa_cli.emulator import Emulator, EmulatorConfig
from rtaa_cli.protocols.exotel import StreamEncoder
from rtaa_cli.pipeline.config import IngestConfig, PipelineConfig, ProviderConfig, WorkerConfig
from rtaa_cli.pipeline.providers.deepgram import DeepgramProvider
from rtaa_cli.pipeline.server import PipelineServer

T = TypeVar("T")
RATE = 8000
FRAME = 576  # 36 ms at 8 kHz


def run(coro: Awaitable[T], timeout_s: float = 60.0) -> T:
    """Run one test's coroutine; the timeout is a safety net that fails loudly, never a pass."""
    async def bounded() -> T:
        try:
            async with asyncio.timeout(timeout_s):
                return await coro
        except TimeoutError:
            raise AssertionError(f"test did not finish within {timeout_s} s (hang)") from None
    return asyncio.run(bounded())


def speech_like(bursts: int, on_s: float = 0.8, off_s: float = 0.4, rate: int = RATE) -> bytes:
    """Bursts of a modulated tone at about -15 dBFS separated by silence: the emulator's segmenter sees
    one utterance per burst (its 300 ms endpointing fires in each gap)."""
    t_on = np.arange(int(on_s * rate)) / rate
    burst = (0.25 * 32767 * np.sin(2 * np.pi * 220 * t_on) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t_on)))
    gap = np.zeros(int(off_s * rate))
    one = np.concatenate([burst, gap]).astype(np.int16)
    pcm = np.tile(one, bursts).tobytes()
    return pcm[: len(pcm) - len(pcm) % FRAME]


def frames_of(pcm: bytes, size: int = FRAME) -> list[bytes]:
    return [pcm[i:i + size] for i in range(0, len(pcm), size)]


@contextlib.asynccontextmanager
async def pipeline(emu_cfg: EmulatorConfig | None = None, *, worker: WorkerConfig | None = None,
                   ingest: IngestConfig | None = None, **cfg: Any) -> AsyncIterator[tuple[PipelineServer, Emulator]]:
    """The emulator on its own port, and ``rtaa serve`` reaching it through deepgram-sdk."""
    async with Emulator(emu_cfg or EmulatorConfig(seed=7)) as emu:
        pcfg = PipelineConfig(provider=ProviderConfig(name="deepgram", deepgram_url=emu.url),
                              worker=worker or WorkerConfig(), ingest=ingest or IngestConfig(), **cfg)
        server = PipelineServer(pcfg, DeepgramProvider("test-key", emu.url))
        async with server:
            yield server, emu


class Feed:
    """A transcript feed subscriber collecting messages until ``call_ended`` (or close)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.ended = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, server: PipelineServer, interaction_id: str | None = None) -> "Feed":
        url = server.transcripts_url + (f"/{interaction_id}" if interaction_id else "")
        return cls(await connect(url, proxy=None))

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = orjson.loads(raw)
                self.messages.append(msg)
                if msg["type"] == "call_ended":
                    self.ended.set()
        except ConnectionClosed:
            pass
        finally:
            self.ended.set()

    async def wait_ended(self, timeout_s: float = 15.0) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self.ended.wait()
        except TimeoutError:
            raise AssertionError(f"no call_ended on the feed within {timeout_s} s") from None

    def transcripts(self, final: bool | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "transcript" and (final is None or m["is_final"] is final)]

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self._task, return_exceptions=True)


class Caller:
    """A raw Exotel caller: exact control over every message (for bad input and timing tests)."""

    def __init__(self, ws: ClientConnection, call_sid: str, stream_sid: str, rate: int = RATE) -> None:
        self.ws = ws
        self.enc = StreamEncoder(stream_sid, call_sid, sample_rate=rate)

    @classmethod
    async def open(cls, server: PipelineServer, call_sid: str, stream_sid: str | None = None,
                   rate: int = RATE, **kw: Any) -> "Caller":
        ws = await connect(server.ingest_url, proxy=None, compression=None, **kw)
        return cls(ws, call_sid, stream_sid or f"ST-{call_sid}", rate)

    async def start(self) -> None:
        await self.ws.send(self.enc.connected())
        await self.ws.send(self.enc.start())

    async def media(self, pcm: bytes) -> None:
        await self.ws.send(self.enc.media(pcm))

    async def stop(self) -> None:
        await self.ws.send(self.enc.stop())

    async def paced(self, frames: list[bytes], frame_s: float = 0.036) -> None:
        t0 = time.perf_counter()
        for i, f in enumerate(frames):
            delay = t0 + i * frame_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing a real-time source, not synchronisation
            await self.media(f)

    async def closed(self, timeout_s: float = 10.0) -> tuple[int | None, str]:
        """Wait for the server to close this connection; returns (code, reason)."""
        try:
            async with asyncio.timeout(timeout_s):
                async for _ in self.ws:
                    pass
        except ConnectionClosed:
            pass
        except TimeoutError:
            raise AssertionError(f"server did not close the caller within {timeout_s} s") from None
        rcvd = self.ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")


async def until(predicate: Callable[[], bool], timeout_s: float, what: str, step_s: float = 0.005) -> float:
    """Bounded wait for a condition we cannot await directly (the emulator's counters); returns the wait."""
    t0 = time.perf_counter()
    while not predicate():
        if time.perf_counter() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(step_s)
    return time.perf_counter() - t0


def http_get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url), timeout=5) as resp:  # noqa: S310 - loopback
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def assert_tiles(finals: list[dict[str, Any]], total_ms: float, tail_ms: float = 450.0) -> None:
    """Finals cover [0, total_ms) exactly once: each starts where the previous ended (no gap, no repeat)."""
    assert finals, "no final transcripts"
    assert abs(finals[0]["audio_start_ms"]) <= 1.0, finals[0]
    for prev, cur in zip(finals, finals[1:]):
        assert abs(cur["audio_start_ms"] - prev["audio_end_ms"]) <= 1.0, (prev, cur)
    assert 0 <= total_ms - finals[-1]["audio_end_ms"] <= tail_ms, (finals[-1], total_ms)  # trailing silence
    seqs = [f["seq"] for f in finals]
    assert seqs == sorted(set(seqs)), seqs
