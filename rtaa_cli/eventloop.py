"""Which asyncio event loop a long-running command runs on: ``--loop auto|uvloop|asyncio``.

uvloop (libuv under asyncio's API) is a dependency on the platforms it has wheels for. Measured
(BENCHMARKS.md, "Event loop"): it makes ``rtaa fake-deepgram`` ~10 % cheaper per stream, so the
emulator's default is ``auto`` (uvloop where it imports, the standard loop elsewhere); it makes ``rtaa
serve`` no cheaper (its hot path already bypasses most of the loop: rtaa_cli/internals.py), so serve's
default is ``asyncio``. ``uvloop`` fails in one line where it is not installed instead of silently
running on the other loop.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar, cast

from rtaa_cli.errors import RtaaError

LoopName = Literal["auto", "uvloop", "asyncio"]
LOOPS: tuple[LoopName, ...] = ("auto", "uvloop", "asyncio")
T = TypeVar("T")


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return cast(Callable[[], asyncio.AbstractEventLoop], uvloop.new_event_loop)


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for ``asyncio.Runner``; None = the standard loop. Raises RtaaError on a bad or missing loop."""
    if name not in LOOPS:
        raise RtaaError(f"--loop must be auto, uvloop or asyncio, not {name!r}")
    if name == "asyncio":
        return None
    factory = _uvloop_factory()
    if factory is None and name == "uvloop":
        raise RtaaError("--loop uvloop: uvloop is not installed here (pip install uvloop); --loop auto falls back")
    return factory


def run(main: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """``asyncio.run`` on the chosen loop."""
    try:
        factory = loop_factory(loop)
    except RtaaError:
        main.close()  # never awaited: say nothing about it
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def running_loop_name() -> str:
    """'uvloop' or 'asyncio': what this process actually runs on (for /health and the start line)."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.split(".")[0] == "uvloop" else "asyncio"


__all__ = ["LOOPS", "LoopName", "loop_factory", "run", "running_loop_name"]
