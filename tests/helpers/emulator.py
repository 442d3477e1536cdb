"""Shared by the emulator's tests: the fixture call's audio, SDK environments, streaming through the SDK."""
from __future__ import annotations

import asyncio
import warnings

import numpy as np
import orjson
import pytest
import soundfile as sf
from websockets.exceptions import InvalidStatus

from helpers.paths import CALL_WAV as CALL
from helpers.paths import FIXTURES  # noqa: F401 - re-exported for the emulator's tests

with warnings.catch_warnings():  # the SDK imports websockets.legacy (DeprecationWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    from deepgram import AsyncDeepgramClient, DeepgramClient
    from deepgram.environment import DeepgramClientEnvironment
    from deepgram.listen.v1.types import ListenV1Results

RATE = 8000
FRAME_BYTES = 576  # 36 ms of 8 kHz linear16
BOUND = 20.0  # safety net for waits; never reached when things work
SDK_PARAMS = {"model": "nova-3", "encoding": "linear16", "sample_rate": 8000}


def env_for(handle) -> DeepgramClientEnvironment:
    return DeepgramClientEnvironment(base=handle.http_url, production=handle.url, agent=handle.url,
                                     agent_rest=handle.http_url)


def call_audio(seconds: float | None = None) -> bytes:
    if not CALL.exists():  # speech-like fallback: tone bursts with silences
        t = np.arange(RATE) / RATE
        burst = (np.sin(2 * np.pi * 220 * t) * 6000).astype(np.int16)
        x = np.concatenate([np.concatenate([burst, np.zeros(RATE // 2, np.int16)]) for _ in range(8)])
    else:
        x, rate = sf.read(CALL, dtype="int16")
        assert rate == RATE
    if seconds is not None:
        x = x[: int(seconds * RATE)]
    return x.tobytes()


def sdk_stream(emu, audio: bytes, chunk: int = FRAME_BYTES * 10, request_options=None, bound: float = BOUND,
               **params) -> list:
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

    return asyncio.run(asyncio.wait_for(run(), bound))


def finals(messages: list) -> list:
    return [m for m in messages if isinstance(m, ListenV1Results) and m.is_final]


def refused(emu, **params):
    """The sync SDK surfaces the handshake's status and body (websockets' InvalidStatus, docs/deepgram-protocol.md §5)."""
    client = DeepgramClient(api_key="k", environment=env_for(emu))
    with pytest.raises(InvalidStatus) as info:
        with client.listen.v1.connect(**{**SDK_PARAMS, **params}):
            pass
    response = info.value.response
    return response.status_code, orjson.loads(response.body), response.headers["dg-error"]
