"""Speech providers behind one interface (:mod:`.base`): ``deepgram``, ``sphinx``, ``fake``."""
from __future__ import annotations

import os

from rtaa_cli.errors import RtaaError
from rtaa_cli.pipeline.config import ProviderConfig
from rtaa_cli.pipeline.providers.base import Provider

PROVIDERS = ("deepgram", "sphinx", "fake")


def make_provider(cfg: ProviderConfig) -> Provider:
    if cfg.name == "deepgram":
        from rtaa_cli.pipeline.providers.deepgram import DeepgramProvider

        key = cfg.api_key or os.environ.get("DEEPGRAM_API_KEY")
        if not key and not cfg.deepgram_url:
            raise RtaaError("provider deepgram needs DEEPGRAM_API_KEY in the environment (or --deepgram-url for an emulator)")
        return DeepgramProvider(key, cfg.deepgram_url, model=cfg.model, language=cfg.language,
                                endpointing_ms=cfg.endpointing_ms, utterance_end_ms=cfg.utterance_end_ms,
                                open_timeout_s=cfg.open_timeout_s)
    if cfg.name == "sphinx":
        from rtaa_cli.pipeline.providers.sphinx import SphinxProvider

        return SphinxProvider(endpointing_ms=cfg.endpointing_ms)
    if cfg.name == "fake":
        from rtaa_cli.pipeline.providers.fake import FakeProvider

        return FakeProvider(cfg)
    raise RtaaError(f"unknown provider {cfg.name!r} (choose one of: {', '.join(PROVIDERS)})")
