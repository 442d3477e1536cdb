"""Deepgram live STT through deepgram-sdk 7.16 ``AsyncDeepgramClient`` (the real service, or any
Deepgram-compatible URL such as rtaa's emulator). The SDK has no KeepAlive loop and no reconnect
layer; both live in the worker, which owns the interaction."""
from __future__ import annotations

import asyncio
import contextlib
import time
import warnings
from collections import deque
from typing import Any, AsyncIterator

import orjson
from websockets.exceptions import ConnectionClosed

from rtaa_cli.internals import sdk_websocket, send_binary_nowait, write_backlog
from rtaa_cli.pipeline.providers.base import Provider, ProviderConnection, ProviderError
from rtaa_cli.protocols import deepgram as dg

with warnings.catch_warnings():
    # The SDK's async client imports websockets.legacy (DeprecationWarning); harmless, but it would turn
    # into an error under -W error before the first call.
    warnings.simplefilter("ignore", DeprecationWarning)
    from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
    from deepgram.core.api_error import ApiError
    import deepgram.listen.v1.socket_client  # noqa: F401  (pre-import under the filter)
    import deepgram.listen.v1.client  # noqa: F401

_PERMANENT_STATUSES = frozenset({400, 401, 402, 403, 404})
HEALTH_WINDOW_S = 30.0  # /health reports failed provider opens this recent (no success since)
_HIGH_WATER = 64 * 1024  # transport backlog above which a send may block: take the queued path


def _environment(url: str) -> DeepgramClientEnvironment:
    """``ws://host:port`` -> the SDK's four base URLs (live URL = production + "/v1/listen")."""
    ws = url.rstrip("/")
    if ws.endswith("/v1/listen"):
        ws = ws[: -len("/v1/listen")]
    http = "http" + ws[2:] if ws.startswith("ws") else ws
    return DeepgramClientEnvironment(base=http, production=ws, agent=ws, agent_rest=http)


class DeepgramConnection(ProviderConnection):
    __slots__ = ("_stack", "_sock", "_ws", "close_code", "close_reason", "unparsable")

    def __init__(self, stack: contextlib.AsyncExitStack, sock: Any) -> None:
        self._stack = stack
        self._sock = sock
        self._ws = sdk_websocket(sock)  # the SDK's socket: results are read from it raw (see results())
        self.close_code = None
        self.close_reason = ""
        self.unparsable = 0  # messages that are not valid JSON or not a well-formed Results

    async def send_audio(self, pcm: bytes) -> None:
        # What the SDK's send_media does (one binary message), written now when nothing can block; else
        # websockets' send(), which waits for the buffer or raises ConnectionClosed.
        if not send_binary_nowait(self._ws, pcm):
            await self._ws.send(pcm)

    def writable(self) -> bool:
        backlog = write_backlog(self._ws)
        return backlog is not None and backlog < _HIGH_WATER

    # The control messages (protocols/deepgram.py ControlType) are the SDK's to write.
    async def keep_alive(self) -> None:
        await self._sock.send_keep_alive()

    async def finalize(self) -> None:
        await self._sock.send_finalize()

    async def close_stream(self) -> None:
        await self._sock.send_close_stream()

    async def results(self) -> AsyncIterator[dg.Result]:
        # Raw frames + orjson rather than the SDK's ``async for msg in sock``: the SDK does the same
        # json.loads and then builds pydantic models for every message, which profiled at ~10 % of the
        # pipeline's CPU at 100 calls; the wire schema is read by rtaa_cli.protocols.deepgram instead.
        try:
            async for raw in self._ws:
                if isinstance(raw, bytes):
                    continue  # Deepgram sends text only
                try:
                    msg = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    self.unparsable += 1
                    continue
                if type(msg) is not dict or msg.get("type") != dg.MessageType.RESULTS:
                    continue  # Metadata, UtteranceEnd, SpeechStarted, unknown types
                result = dg.parse_results(msg)
                if result is None:
                    self.unparsable += 1
                else:
                    yield result
        except ConnectionClosed:
            pass  # close code read below: the worker decides (reconnect unless 1000)
        finally:
            self.close_code = self._ws.close_code
            self.close_reason = self._ws.close_reason or ""

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._stack.aclose()


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
        self.last_error: str | None = None  # a short kind, never exception text (it is shown on /health)
        self._failures: deque[float] = deque(maxlen=64)  # monotonic times of recent failed opens

    async def open(self, interaction_id: str, sample_rate: int) -> ProviderConnection:
        stack = contextlib.AsyncExitStack()
        cm = self._client.listen.v1.connect(**self._params, sample_rate=str(sample_rate), tag=interaction_id)
        try:
            async with asyncio.timeout(self._open_timeout_s):
                sock = await stack.enter_async_context(cm)
        except ApiError as exc:
            await stack.aclose()
            status = exc.status_code
            self._failed(f"handshake HTTP {status}")
            raise ProviderError(f"deepgram refused the stream: HTTP {status}", status=status,
                                permanent=status in _PERMANENT_STATUSES) from None
        except (OSError, TimeoutError, ConnectionClosed) as exc:
            await stack.aclose()
            self._failed("timeout" if isinstance(exc, TimeoutError) else "unreachable")
            raise ProviderError(f"deepgram unreachable: {type(exc).__name__}: {exc}") from None
        self.last_error = None
        self._failures.clear()
        return DeepgramConnection(stack, sock)

    def _failed(self, kind: str) -> None:
        self.last_error = kind
        self._failures.append(time.monotonic())

    def health(self) -> list[str]:
        """Degraded while opens failed within the last HEALTH_WINDOW_S and none succeeded since."""
        recent = sum(1 for t in self._failures if time.monotonic() - t <= HEALTH_WINDOW_S)
        if not recent or self.last_error is None:
            return []
        return [f"provider deepgram: {recent} failed connection attempt(s) in the last {HEALTH_WINDOW_S:.0f} s "
                f"({self.last_error})"]
