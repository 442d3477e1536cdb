"""What the worker needs from a speech provider: open one streaming connection per interaction, send
audio / KeepAlive / Finalize / CloseStream, and receive results until the connection closes. Every provider
speaks in Deepgram's terms (:class:`rtaa_cli.protocols.deepgram.Result`: interim/final, speech_final,
from_finalize), whatever its engine."""
from __future__ import annotations

import abc
from typing import AsyncIterator

from rtaa_cli.protocols.deepgram import Result


class ProviderError(Exception):
    """Opening or using a provider connection failed. ``permanent``: retrying cannot help (401, 400)."""

    def __init__(self, message: str, *, permanent: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status


class ProviderConnection(abc.ABC):
    """One streaming connection. ``results()`` ends when the connection closes; ``close_code`` then
    says how (1000: clean, after CloseStream; anything else: the worker reconnects)."""

    close_code: int | None = None
    close_reason: str = ""
    unparsable: int = 0  # provider messages that could not be read (counted and logged by the worker)

    @abc.abstractmethod
    async def send_audio(self, pcm: bytes) -> None: ...

    def writable(self) -> bool:
        """True when ``send_audio`` will not block (no transport backlog): the bus may send inline."""
        return True

    @abc.abstractmethod
    async def keep_alive(self) -> None: ...

    @abc.abstractmethod
    async def finalize(self) -> None: ...

    @abc.abstractmethod
    async def close_stream(self) -> None:
        """Ask for the final results of all audio sent; the provider closes (1000) after them."""

    @abc.abstractmethod
    def results(self) -> AsyncIterator[Result]: ...

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Drop the connection now (idempotent)."""


class Provider(abc.ABC):
    name: str = "provider"

    @abc.abstractmethod
    async def open(self, interaction_id: str, sample_rate: int) -> ProviderConnection:
        """Open a streaming connection for ``interaction_id`` (raises ProviderError)."""

    async def start(self) -> None:
        """Start whatever the provider needs for its whole life (e.g. the in-process emulator)."""

    async def stop(self) -> None: ...

    def health(self) -> list[str]:
        """Reasons this provider is unhealthy right now (empty: healthy)."""
        return []
