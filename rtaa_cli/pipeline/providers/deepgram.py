"""Deepgram live STT through deepgram-sdk 7.16 ``AsyncDeepgramClient`` (the real service, or any
Deepgram-compatible URL such as rtaa's emulator). The SDK has no KeepAlive loop and no reconnect
layer; both live in the worker, which owns the interaction."""
from __future__ import annotations

import asyncio
import contextlib
import warnings
from typing import Any, AsyncIterator

from websockets.exceptions import ConnectionClosed

from rtaa_cli.pipeline.providers.base import Provider, ProviderConnection, ProviderError, ProviderResult, Word

with warnings.catch_warnings():
    # The SDK's async client imports websockets.legacy (DeprecationWarning); harmless, but it would turn
    # into an error under -W error before the first call.
    warnings.simplefilter("ignore", DeprecationWarning)
    from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
    from deepgram.core.api_error import ApiError
    import deepgram.listen.v1.socket_client  # noqa: F401  (pre-import under the filter)
    import deepgram.listen.v1.client  # noqa: F401

_PERMANENT_STATUSES = frozenset({400, 401, 402, 403, 404})
_HIGH_WATER = 64 * 1024  # transport backlog above which a send may block: take the queued path


def _environment(url: str) -> DeepgramClientEnvironment:
    """``ws://host:port`` -> the SDK's four base URLs (live URL = production + "/v1/listen")."""
    ws = url.rstrip("/")
    if ws.endswith("/v1/listen"):
        ws = ws[: -len("/v1/listen")]
    http = "http" + ws[2:] if ws.startswith("ws") else ws
    return DeepgramClientEnvironment(base=http, production=ws, agent=ws, agent_rest=http)


class DeepgramConnection(ProviderConnection):
    __slots__ = ("_stack", "_sock", "_ws", "close_code", "close_reason")

    def __init__(self, stack: contextlib.AsyncExitStack, sock: Any) -> None:
        self._stack = stack
        self._sock = sock
        self._ws = sock._websocket  # close code/reason only; all traffic goes through the SDK
        self.close_code = None
        self.close_reason = ""

    async def send_audio(self, pcm: bytes) -> None:
        await self._sock.send_media(pcm)

    def writable(self) -> bool:
        transport = self._ws.transport
        return transport is not None and not transport.is_closing() and transport.get_write_buffer_size() < _HIGH_WATER

    async def keep_alive(self) -> None:
        await self._sock.send_keep_alive()

    async def finalize(self) -> None:
        await self._sock.send_finalize()

    async def close_stream(self) -> None:
        await self._sock.send_close_stream()

    async def results(self) -> AsyncIterator[ProviderResult]:
        try:
            async for msg in self._sock:
                if getattr(msg, "type", None) != "Results":
                    continue  # Metadata, UtteranceEnd, SpeechStarted, unknown types (None)
                result = _to_result(msg)
                if result is not None:
                    yield result
        except ConnectionClosed:
            pass  # close code read below: the worker decides (reconnect unless 1000)
        finally:
            self.close_code = self._ws.close_code
            self.close_reason = self._ws.close_reason or ""

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._stack.aclose()


def _to_result(msg: Any) -> ProviderResult | None:
    channel = msg.channel
    alts = getattr(channel, "alternatives", None) if channel is not None else None
    if not alts:
        return None
    alt = alts[0]
    words = [Word(w.punctuated_word or w.word, float(w.start), float(w.end), float(w.confidence or 0.0))
             for w in (alt.words or ())]
    start = float(msg.start or 0.0)
    return ProviderResult(
        is_final=bool(msg.is_final),
        text=alt.transcript or "",
        start=start,
        end=start + float(msg.duration or 0.0),
        speech_final=bool(msg.speech_final),
        from_finalize=bool(getattr(msg, "from_finalize", False)),
        confidence=float(alt.confidence or 0.0),
        words=words,
    )


class DeepgramProvider(Provider):
    name = "deepgram"

    def __init__(self, api_key: str | None, url: str | None = None, *, model: str = "nova-3",
                 language: str = "en", endpointing_ms: int = 300, utterance_end_ms: int | None = 1000,
                 open_timeout_s: float = 10.0) -> None:
        kwargs: dict[str, Any] = {"api_key": api_key or "rtaa-local"}
        if url:
            kwargs["environment"] = _environment(url)
        self._client = AsyncDeepgramClient(**kwargs)
        self._params: dict[str, Any] = {
            "model": model, "language": language, "encoding": "linear16", "channels": "1",
            "interim_results": "true", "punctuate": "true", "smart_format": "true",
            "endpointing": str(endpointing_ms),
        }
        if utterance_end_ms:
            self._params["utterance_end_ms"] = str(utterance_end_ms)
        self._open_timeout_s = open_timeout_s
        self.last_error: str | None = None

    async def open(self, interaction_id: str, sample_rate: int) -> ProviderConnection:
        stack = contextlib.AsyncExitStack()
        cm = self._client.listen.v1.connect(**self._params, sample_rate=str(sample_rate), tag=interaction_id)
        try:
            async with asyncio.timeout(self._open_timeout_s):
                sock = await stack.enter_async_context(cm)
        except ApiError as exc:
            await stack.aclose()
            status = exc.status_code
            self.last_error = f"handshake HTTP {status}"
            raise ProviderError(f"deepgram refused the stream: HTTP {status}", status=status,
                                permanent=status in _PERMANENT_STATUSES) from None
        except (OSError, TimeoutError, ConnectionClosed) as exc:
            await stack.aclose()
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise ProviderError(f"deepgram unreachable: {self.last_error}") from None
        self.last_error = None
        return DeepgramConnection(stack, sock)

    def health(self) -> list[str]:
        return [f"provider deepgram: {self.last_error}"] if self.last_error else []
