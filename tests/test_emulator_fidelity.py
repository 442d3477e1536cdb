"""Issue 12: every parameter a client sends has its effect (or a refusal), seen through the real deepgram-sdk."""
from __future__ import annotations

import asyncio
import warnings

import pytest
from test_emulator_server import BOUND, FRAME_BYTES, call_audio, env_for

from rtaa_cli.emulator import EmulatorConfig, start_in_thread

with warnings.catch_warnings():  # the SDK imports websockets.legacy (DeprecationWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    from deepgram import AsyncDeepgramClient
    from deepgram.listen.v1.types import ListenV1Metadata, ListenV1Results

SDK_PARAMS = {"model": "nova-3", "encoding": "linear16", "sample_rate": 8000}


@pytest.fixture
def emu_factory(monkeypatch):
    # The SDK's sync client honours HTTP(S)_PROXY: keep loopback traffic direct (DEEPGRAM.md §5).
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    handles = []

    def start(**kw):
        handles.append(start_in_thread(EmulatorConfig(**kw)))
        return handles[-1]

    yield start
    for handle in handles:
        handle.stop()


def sdk_stream(emu, audio: bytes, chunk: int = FRAME_BYTES * 10, request_options=None, **params) -> list:
    """Stream ``audio`` with the async SDK as fast as it goes, in ``chunk``-byte frames; CloseStream; drain."""

    async def run() -> list:
        client = AsyncDeepgramClient(api_key="k", environment=env_for(emu))
        out = []
        async with client.listen.v1.connect(**{**SDK_PARAMS, **params}, request_options=request_options) as conn:
            for off in range(0, len(audio), chunk):
                await conn.send_media(audio[off:off + chunk])
            await conn.send_close_stream()
            async for message in conn:
                out.append(message)
        return out

    return asyncio.run(asyncio.wait_for(run(), BOUND))


def finals(messages: list) -> list:
    return [m for m in messages if isinstance(m, ListenV1Results) and m.is_final]


def _shape(m: ListenV1Results) -> tuple:
    alt = m.channel.alternatives[0]
    return (m.start, m.duration, m.speech_final, alt.transcript, alt.confidence,
            [(w.word, w.start, w.end, w.confidence) for w in alt.words])


# ------------------------------------------------------------------------------- 1. odd-length frames

def test_1001_byte_chunks_transcribe_like_576_byte_chunks(emu_factory):
    """Deepgram treats the binary frames as one byte stream: a client cutting audio by byte count (odd
    lengths, samples split across frames) must not be closed with 1008, and gets the same results."""
    emu = emu_factory(text_mark=False)  # the text mark names the connection: unmarked, streams compare equal
    audio = call_audio()
    params = {"interim_results": True, "punctuate": True, "endpointing": 300}
    by_sample = sdk_stream(emu, audio, chunk=FRAME_BYTES, **params)
    by_byte = sdk_stream(emu, audio, chunk=1001, **params)
    assert isinstance(by_byte[-1], ListenV1Metadata) and by_byte[-1].duration == by_sample[-1].duration
    assert len(finals(by_sample)) >= 5 and [_shape(m) for m in finals(by_byte)] == [_shape(m) for m in finals(by_sample)]
    emu.wait_quiet()
    totals = emu.stats()["totals"]
    assert totals["closes_1000"] == 2 and totals["closes_1008"] == 0 and totals["audio_bytes"] == 2 * len(audio)
