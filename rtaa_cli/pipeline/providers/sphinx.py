"""Provider ``sphinx``: pocketsphinx in-process, offline, real words, for a few calls.

Reuses the emulator's sans-I/O pieces (one place per concept): the energy :class:`Segmenter` decides
endpoints and the :class:`SphinxTranscriber` turns each final window into words. Each connection is driven
from one executor thread; the decoding itself runs in a worker process (rtaa_cli/emulator/sphinx_process.py:
pocketsphinx holds the GIL for up to a second per call, which in-process would stall every call's frames).
Finals only (no interims), each from one whole-utterance decode of its window (batch CMN; see
:class:`SphinxTranscriber`). Windows are forced final after 15 s of continuous speech, as in the emulator's
sphinx engine (the segmenter's 5 s default cuts words apart: on fixtures/audio/call.wav, segmenter plus
transcriber alone score WER 0.39 instead of 0.32).
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

import numpy as np

from rtaa_cli.emulator.segmenter import Segmenter
from rtaa_cli.emulator.sphinx_process import RemoteSphinxTranscriber
from rtaa_cli.pipeline.providers.base import Provider, ProviderConnection
from rtaa_cli.protocols.deepgram import Result, Word

_QUEUE = 1024  # pending decode jobs (frames) per connection; beyond -> the connection closes 1011
MAX_WINDOW_MS = 15000  # continuous speech is forced final after this long (an HMM decoder needs whole words)


class SphinxConnection(ProviderConnection):
    def __init__(self, sample_rate: int, endpointing_ms: int) -> None:
        self.rate = sample_rate
        self.close_code = None
        self.close_reason = ""
        self._segmenter = Segmenter(sample_rate, endpointing_ms=endpointing_ms, interim=False, vad_events=False,
                                    max_window_ms=MAX_WINDOW_MS)
        self._transcriber: RemoteSphinxTranscriber | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rtaa-sphinx")
        self._executor_open = True
        self._jobs: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(_QUEUE)
        self._results: asyncio.Queue[Result | None] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _init(self) -> None:
        self._transcriber = await asyncio.get_running_loop().run_in_executor(
            self._executor, RemoteSphinxTranscriber, self.rate)

    def _decode(self, kind: str, pcm: bytes) -> list[Result]:
        assert self._transcriber is not None
        if kind == "audio":
            samples = np.frombuffer(pcm, dtype=np.int16)
            self._transcriber.feed(samples)
            events = self._segmenter.feed(samples)
        else:
            events = self._segmenter.flush(from_finalize=True)
        out = []
        for ev in events:
            if ev.kind != "final":
                continue
            words = [Word(w, s, e, c) for (w, s, e, c) in self._transcriber.words(ev.window, True)]
            out.append(Result(
                is_final=True, text=" ".join(w.word for w in words), start=ev.window.start / self.rate,
                end=ev.window.end / self.rate, speech_final=ev.speech_final, from_finalize=ev.from_finalize,
                confidence=min((w.confidence for w in words), default=0.0), words=words))
        return out

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._init()
            while True:
                kind, pcm = await self._jobs.get()
                for result in await loop.run_in_executor(self._executor, self._decode, kind, pcm):
                    self._results.put_nowait(result)
                if kind == "close":
                    self.close_code = 1000
                    return
        except asyncio.CancelledError:
            self.close_code = self.close_code or 1001
            raise
        except Exception as exc:  # noqa: BLE001 - surfaces as a 1011 close, like a remote provider
            self.close_code, self.close_reason = 1011, f"sphinx failed: {exc}"
        finally:
            self._results.put_nowait(None)

    def _put(self, job: tuple[str, bytes]) -> None:
        if self._task.done():
            raise ConnectionError("sphinx connection closed")
        try:
            self._jobs.put_nowait(job)
        except asyncio.QueueFull:
            self.close_code, self.close_reason = 1011, "sphinx cannot keep up"
            self._task.cancel()
            raise ConnectionError(self.close_reason) from None

    async def send_audio(self, pcm: bytes) -> None:
        self._put(("audio", pcm))

    async def keep_alive(self) -> None:
        pass  # nothing times out in-process

    async def finalize(self) -> None:
        self._put(("finalize", b""))

    async def close_stream(self) -> None:
        self._put(("close", b""))

    async def results(self) -> AsyncIterator[Result]:
        while True:
            item = await self._results.get()
            if item is None:
                return
            yield item

    async def aclose(self) -> None:
        if not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self._executor_open:
            self._executor_open = False
            if self._transcriber is not None:
                self._executor.submit(self._transcriber.close)
            self._executor.shutdown(wait=False)


class SphinxProvider(Provider):
    name = "sphinx"

    def __init__(self, endpointing_ms: int = 300) -> None:
        self.endpointing_ms = endpointing_ms

    async def open(self, interaction_id: str, sample_rate: int) -> ProviderConnection:
        return SphinxConnection(sample_rate, self.endpointing_ms)
