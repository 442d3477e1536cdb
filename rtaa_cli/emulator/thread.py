"""Run an :class:`Emulator` on its own event loop in a daemon thread, for sync callers (Locust, CLI)."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from rtaa_cli.emulator.server import Emulator, EmulatorConfig

START_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 10.0


class EmulatorHandle:
    """Thread-safe handle: ``url``, ``http_url``, ``stats()``, ``reset_stats()``, ``set_faults()``, ``stop()``."""

    def __init__(self) -> None:
        self.url = ""
        self.http_url = ""
        self.emulator: Emulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run_in_loop(self, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` on the emulator's loop (its state is only touched from there) and return the result."""
        assert self._loop is not None

        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(CALL_TIMEOUT_S)

    def stats(self) -> dict:
        return self._run_in_loop(lambda: self.emulator.stats())

    def reset_stats(self) -> None:
        self._run_in_loop(lambda: self.emulator.reset_stats())

    def set_faults(self, **changes: object) -> None:
        self._run_in_loop(lambda: self.emulator.set_faults(**changes))

    def wait_quiet(self, timeout: float = CALL_TIMEOUT_S) -> None:
        """Block until no stream is open and every close is in the stats (raises TimeoutError after ``timeout``)."""
        assert self._loop is not None and self.emulator is not None
        future = asyncio.run_coroutine_threadsafe(self.emulator.wait_quiet(), self._loop)
        try:
            future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"emulator still has open streams after {timeout} s") from None

    def stop(self, timeout: float = 15.0) -> None:
        """Close the server (open streams get 1001) and join the thread, at most ``timeout`` seconds."""
        if self._loop is not None and self._stop is not None and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"emulator thread did not stop within {timeout} s")

    def __enter__(self) -> EmulatorHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_in_thread(config: EmulatorConfig | None = None) -> EmulatorHandle:
    """Start an emulator in a daemon thread; returns once it listens (or raises what stopped it)."""
    handle = EmulatorHandle()
    emulator = Emulator(config)  # validates the config in the caller's thread

    async def main() -> None:
        handle._loop = asyncio.get_running_loop()
        handle._stop = asyncio.Event()
        async with emulator as emu:
            handle.emulator, handle.url, handle.http_url = emu, emu.url, emu.http_url
            handle._ready.set()
            await handle._stop.wait()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            handle._error = exc
        finally:
            handle._ready.set()

    handle._thread = threading.Thread(target=run, name="rtaa-fake-deepgram", daemon=True)
    handle._thread.start()
    if not handle._ready.wait(START_TIMEOUT_S):
        raise RuntimeError(f"emulator did not start within {START_TIMEOUT_S} s")
    if handle._error is not None:
        raise handle._error
    return handle
