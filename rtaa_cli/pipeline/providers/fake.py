"""Provider ``fake``: rtaa's Deepgram emulator started in-process, reached through the real Deepgram path
(deepgram-sdk over a loopback WebSocket). The whole pipeline, offline, with nothing mocked."""
from __future__ import annotations

from rtaa_cli.emulator import Emulator, EmulatorConfig
from rtaa_cli.pipeline.config import ProviderConfig
from rtaa_cli.pipeline.providers.base import Provider, ProviderConnection
from rtaa_cli.pipeline.providers.deepgram import DeepgramProvider


class FakeProvider(Provider):
    name = "fake"  # the real Deepgram path, against the in-process emulator

    def __init__(self, cfg: ProviderConfig, emulator_config: EmulatorConfig | None = None) -> None:
        self._cfg = cfg
        self._emu_cfg = emulator_config or EmulatorConfig(engine=cfg.fake_engine)
        self.emulator: Emulator | None = None
        self._dg: DeepgramProvider | None = None

    async def start(self) -> None:
        self.emulator = Emulator(self._emu_cfg)
        await self.emulator.__aenter__()
        cfg = self._cfg
        self._dg = DeepgramProvider("rtaa-local", self.emulator.url, model=cfg.model, language=cfg.language,
                                    endpointing_ms=cfg.endpointing_ms, utterance_end_ms=cfg.utterance_end_ms,
                                    open_timeout_s=cfg.open_timeout_s)

    async def stop(self) -> None:
        if self.emulator is not None:
            await self.emulator.__aexit__(None, None, None)
            self.emulator = None

    async def open(self, interaction_id: str, sample_rate: int) -> ProviderConnection:
        assert self._dg is not None, "FakeProvider.start() was not awaited"
        return await self._dg.open(interaction_id, sample_rate)

    def health(self) -> list[str]:
        return self._dg.health() if self._dg is not None else ["provider fake: emulator not started"]
