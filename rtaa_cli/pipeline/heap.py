"""Give glibc's free heap back to the kernel after calls end (``malloc_trim``), at most once per interval.

Why: glibc keeps memory that calls freed in its heap and arenas instead of returning it, so the process's
RSS grows over hours of back-to-back calls with no live object behind it (the 30-minute ``memory`` soak,
BENCHMARKS.md). ``malloc_trim(0)`` returns the free pages. It runs in a worker thread (ctypes releases the
GIL), so the event loop keeps serving frames while it walks the heap; a no-op where glibc is not the
allocator (musl, macOS).
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
from typing import Callable


def _load() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


malloc_trim = _load()


class HeapTrimmer:
    """``call_ended()`` after each call; trims now if the last trim is ``interval_s`` old, else once later."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last = -float("inf")
        self._pending: asyncio.TimerHandle | None = None
        self._running: asyncio.Future[int] | None = None
        self.trims = 0  # started (for the tests and /metrics readers)

    @property
    def enabled(self) -> bool:
        return malloc_trim is not None and self.interval_s > 0

    def call_ended(self) -> None:
        if not self.enabled or self._pending is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._last + self.interval_s - self._clock()
        if wait <= 0:
            self._trim()
        else:  # calls ending meanwhile share this one trim
            self._pending = loop.call_later(wait, self._trim)

    def _trim(self) -> None:
        self._pending = None
        if malloc_trim is None:
            return
        if self._running is not None and not self._running.done():
            return  # the previous one is still walking the heap
        self._last = self._clock()
        self.trims += 1
        self._running = asyncio.get_running_loop().run_in_executor(None, malloc_trim, 0)

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
