"""Real processes for the scale-out tests: ``rtaa fake-deepgram``, ``rtaa serve --role ingest`` and any number
of ``rtaa serve --role worker`` on one Redis (no helpers in-process: every part is its own OS process)."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from typing import Any

import orjson

from helpers.pipeline import http_get

CLI = [sys.executable, "-c", "from rtaa_cli.cli import main; main()"]
ENV = {**os.environ, "NO_PROXY": "*", "DEEPGRAM_API_KEY": "test-key"}


class Proc:
    """One child process that prints a JSON line on start; its stderr is kept (bounded) for failure messages."""

    def __init__(self, args: list[str], what: str) -> None:
        self.what = what
        self.proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        self.stderr: list[bytes] = []
        self._reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._reader.start()
        self.info: dict[str, Any] = {}

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            del self.stderr[:-5000]  # bounded; tests read the warnings (log level warning) as evidence

    async def ready(self, timeout_s: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout_s)
        except TimeoutError:
            raise AssertionError(f"{self.what} did not start: {self.tail()}") from None
        if not line:
            raise AssertionError(f"{self.what} exited (rc {self.proc.poll()}): {self.tail()}")
        self.info = orjson.loads(line)
        return self.info

    def tail(self) -> str:
        return b"".join(self.stderr[-20:]).decode(errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        """The process's JSON log lines of one event, in order (what it said it did, and why)."""
        if self.proc.poll() is not None:
            self._reader.join(5)  # an exited process's last lines are read to its end first
        out = []
        for line in list(self.stderr):
            if b'"' + name.encode() + b'"' in line:
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if entry.get("event") == name:
                    out.append(entry)
        return out

    def lines(self, needle: str) -> list[str]:
        """Log lines that mention ``needle`` (a call's id): for failure messages."""
        return [line.decode(errors="replace")[:400] for line in list(self.stderr) if needle.encode() in line]

    def metric(self, name: str) -> float:
        total = 0.0
        for line in http_get(self.info["metrics"])[1].decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)


def emulator() -> Proc:
    return Proc(["fake-deepgram", "--port", "0", "--json", "--quiet", "--no-live", "--seed", "7"], "fake-deepgram")


def ingest(bus: str, prefix: str, *extra: str) -> Proc:
    return Proc(["serve", "--bus", bus, "--bus-prefix", prefix, "--role", "ingest", "--port", "0", "--json",
                 "--log-level", "warning", *extra], "ingest")


def worker(bus: str, prefix: str, emu_url: str, *extra: str) -> Proc:
    return Proc(["serve", "--bus", bus, "--bus-prefix", prefix, "--role", "worker", "--json", "--log-level", "warning",
                 "--provider", "deepgram", "--deepgram-url", emu_url, *extra], "worker")
