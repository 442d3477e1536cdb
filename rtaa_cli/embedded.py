"""The seam between ``rtaa replay`` (no ``--url``) and the in-process pipeline (``rtaa serve``).

``embedded_pipeline(provider, sample_rate)`` starts the local pipeline on loopback ephemeral ports
and yields where to send the call and where to read its transcripts; leaving the context stops it.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

from rtaa_cli.errors import RtaaError


@dataclass
class EmbeddedTarget:
    url: str  # Exotel ingest WebSocket URL
    transcripts_url: str | None  # transcript feed (docs/transcript-feed.md), or None


@asynccontextmanager
async def embedded_pipeline(provider: str, sample_rate: int) -> AsyncIterator[EmbeddedTarget]:
    # Body owned by the pipeline (task C): `rtaa serve` in-process on an ephemeral loopback port.
    from rtaa_cli.pipeline.config import IngestConfig, PipelineConfig, ProviderConfig, WorkerConfig
    from rtaa_cli.pipeline.providers import PROVIDERS, make_provider
    from rtaa_cli.pipeline.server import PipelineServer

    if provider not in PROVIDERS:
        raise RtaaError(f"unknown provider {provider!r} (choose one of: {', '.join(PROVIDERS)})")
    cfg = PipelineConfig(
        host="127.0.0.1", port=0,
        # fake = the emulator with pocketsphinx, so a newcomer sees the call's real words (DESIGN.md).
        provider=ProviderConfig(name=provider, fake_engine="sphinx"),
        # pocketsphinx finals can trail real time by a few seconds on a busy machine.
        worker=WorkerConfig(finalize_timeout_s=20.0 if provider != "deepgram" else 10.0),
        # One local caller, possibly replaying faster than real time: no per-connection rate limit.
        ingest=IngestConfig(max_messages_per_s=1e9, rate_burst=1e9, sample_rates=(sample_rate,)),
    )
    server = PipelineServer(cfg, make_provider(cfg.provider))  # deepgram without a key -> RtaaError here
    await server.start()
    try:
        yield EmbeddedTarget(url=server.ingest_url, transcripts_url=server.base_url)
    finally:
        await server.stop()
