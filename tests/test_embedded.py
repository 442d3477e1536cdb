"""The embedded pipeline runs in a child process (rtaa_cli/embedded.py): it listens on loopback, stops on
SIGTERM, on the parent's stdin closing and on cancellation, and reports its own user errors in one line."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import orjson
import pytest
import websockets

from rtaa_cli.embedded import EmbeddedTarget, embedded_pipeline
from rtaa_cli.errors import RtaaError

BOUND_S = 60.0  # safety net: starting the child takes ~1-3 s on a loaded machine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True  # (the contexts reap their child before returning, so no zombie answers here)


def test_child_listens_on_loopback_and_stops_cleanly_on_exit() -> None:
    async def main() -> tuple[EmbeddedTarget, int]:
        async with embedded_pipeline("fake", 8000) as target:
            assert target.url.startswith("ws://127.0.0.1:") and target.url.endswith("/v1/ingest")
            assert target.pid is not None and target.pid != os.getpid() and _alive(target.pid)
            async with websockets.connect(target.url) as ws:  # the ingest answers: a real listening socket
                await ws.send(orjson.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}).decode())
            return target, target.pid

    target, pid = asyncio.run(asyncio.wait_for(main(), BOUND_S))
    assert target.exit_code == 0, list(target.log)  # SIGTERM -> graceful stop, exit 0
    assert not _alive(pid)


def test_cancelling_the_replay_stops_the_child() -> None:
    """What Ctrl-C does: asyncio.run cancels the main task inside the context."""
    started = {}

    async def main() -> None:
        async with embedded_pipeline("fake", 8000) as target:
            started["pid"] = target.pid
            asyncio.current_task().cancel()
            await asyncio.Event().wait()  # the cancellation lands here

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
    assert "pid" in started and not _alive(started["pid"])


def test_child_reports_its_user_error_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)

    async def main() -> None:
        async with embedded_pipeline("deepgram", 8000):
            pytest.fail("provider deepgram cannot start without a key")

    with pytest.raises(RtaaError, match="DEEPGRAM_API_KEY") as info:
        asyncio.run(asyncio.wait_for(main(), BOUND_S))
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


def test_unknown_provider_fails_before_starting_a_process() -> None:
    with pytest.raises(RtaaError, match="unknown provider"):
        asyncio.run(embedded_pipeline("nope", 8000).__aenter__())


def test_child_stops_when_its_parent_goes_away() -> None:
    """The parent never writes to the child's stdin: EOF there means the parent died (even by SIGKILL)."""
    child = subprocess.Popen([sys.executable, "-m", "rtaa_cli.embedded", "fake", "8000"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        info = orjson.loads(child.stdout.readline())
        assert info["pid"] == child.pid and info["ingest"].startswith("ws://127.0.0.1:")
        child.stdin.close()  # what the kernel does when the parent dies
        assert child.wait(timeout=BOUND_S) == 0, child.stderr.read()
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        child.stdout.close()
        child.stderr.close()


def test_child_rejects_bad_arguments_with_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "rtaa_cli.embedded", "fake"], capture_output=True, text=True,
                          timeout=BOUND_S, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: usage:"), proc.stderr
